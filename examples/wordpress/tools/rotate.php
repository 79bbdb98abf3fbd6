<?php
/**
 * The WordPress part of rotate-credentials.sh (run with the PHP CLI, from the site dir, on the
 * database of wp-config.php): after it, nobody holding an old password, login cookie, session
 * or application password gets in.
 *
 * - every administrator gets a new random password (the attacker may have made one of them);
 * - every stored session of every user is destroyed (the session_tokens user meta), and every
 *   pending password-reset key is cleared;
 * - every application password of every user is revoked; the site's admin gets a new one;
 * The database user's password is Lifeboat's to rotate (it did so before this runs).
 * The new salts (which make every old login cookie and nonce invalid) are written by the shell
 * script after this succeeded.
 *
 * stdout, one per line (everything else goes to stderr):
 *   rotated: LOGIN                     for each administrator (names only: Lifeboat keeps them)
 *   admin user: LOGIN                  the site's admin (the one setup.sh made, else the first)
 *   admin password: PASSWORD           its new password
 *   password for LOGIN: PASSWORD       every other administrator
 *   application password: PASSWORD    a new one for the site's admin
 */
if (PHP_SAPI !== 'cli') {
    exit(1);
}
require __DIR__ . '/../public/wp-load.php';
global $wpdb;

function out($line)
{
    fwrite(STDOUT, $line . "\n");
}
function note($line)
{
    fwrite(STDERR, "rotate-credentials: $line\n");
}

if (!is_blog_installed()) {
    note('WordPress is not installed in database ' . DB_NAME . '; nothing to rotate');
    exit(1);
}

// Administrators, the site's own admin first.
$primary_login = get_option('lifeboat_admin_login', 'admin');
$admins = get_users(array('role' => 'administrator', 'orderby' => 'ID'));
usort($admins, function ($a, $b) use ($primary_login) {
    return ($b->user_login === $primary_login) - ($a->user_login === $primary_login) ?: $a->ID - $b->ID;
});
if (!$admins) {
    note('WordPress has no administrator; nothing to rotate');
    exit(1);
}

// What the old credentials opened, counted before it goes.
$sessions = 0;
foreach ($wpdb->get_col("SELECT meta_value FROM {$wpdb->usermeta} WHERE meta_key = 'session_tokens'") as $value) {
    $tokens = maybe_unserialize($value);
    $sessions += is_array($tokens) ? count($tokens) : 0;
}
$app_passwords = 0;
$app_password_users = $wpdb->get_col($wpdb->prepare(
    "SELECT DISTINCT user_id FROM {$wpdb->usermeta} WHERE meta_key = %s",
    WP_Application_Passwords::USERMETA_KEY_APPLICATION_PASSWORDS
));
foreach ($app_password_users as $user_id) {
    $revoked = WP_Application_Passwords::delete_all_application_passwords((int) $user_id);
    if (is_wp_error($revoked)) {
        note("revoking the application passwords of user $user_id failed: " . $revoked->get_error_message());
        exit(1);
    }
    $app_passwords += (int) $revoked;
}
WP_Session_Tokens::destroy_all_for_all_users();
$wpdb->query("UPDATE {$wpdb->users} SET user_activation_key = ''");

$lines = array('admin user: ' . $admins[0]->user_login);
foreach ($admins as $i => $admin) {
    $password = wp_generate_password(24, false);
    wp_set_password($password, $admin->ID);   // also ends the user's sessions
    out('rotated: ' . $admin->user_login);
    $lines[] = ($i === 0 ? 'admin password' : 'password for ' . $admin->user_login) . ': ' . $password;
}
foreach ($lines as $line) {
    out($line);
}
$created = WP_Application_Passwords::create_new_application_password(
    $admins[0]->ID,
    array('name' => 'lifeboat rotate ' . gmdate('Y-m-d H:i:s') . ' UTC')
);
if (is_wp_error($created)) {
    note('making a new application password failed: ' . $created->get_error_message());
    exit(1);
}
out('application password: ' . $created[0]);
note(sprintf('%d administrator password(s) replaced, %d session(s) destroyed, %d application password(s) revoked',
    count($admins), $sessions, $app_passwords));

// The database user's password is not this hook's: `lifeboat rewind --rotate-credentials`
// gives the app's user a new one on the restored copy's server before it runs this hook, and
// runs the hook and the new instances with it as LIFEBOAT_MARIADB_PASSWORD (wp-config.php
// reads it): this script already logged in with it above, and the old one is refused.

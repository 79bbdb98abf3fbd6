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
 * - with LIFEBOAT_MARIADB_NEW_PASSWORD (or _FILE) set, the database user's password is changed
 *   to it (each account it logs in as changes its own: no admin rights needed).
 * The new salts (which make every old login cookie and nonce invalid) are written by the shell
 * script after this succeeded.
 *
 * stdout, one per line (everything else goes to stderr):
 *   rotated: LOGIN                     for each administrator (names only: Lifeboat keeps them)
 *   admin user: LOGIN                  the site's admin (the one setup.sh made, else the first)
 *   admin password: PASSWORD           its new password
 *   password for LOGIN: PASSWORD       every other administrator
 *   application password: PASSWORD    a new one for the site's admin
 *   rotated: database user USER        when the database password was changed
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

// The database user's password. TODO(lifeboat): once `lifeboat rewind --rotate-credentials`
// hands the hook a new database password (LIFEBOAT_MARIADB_NEW_PASSWORD or a file named by
// LIFEBOAT_MARIADB_NEW_PASSWORD_FILE) and starts the new instances with it as
// LIFEBOAT_MARIADB_PASSWORD, this sets it; if Lifeboat sets it itself (lifeboat-mariadb's
// rotate_app_password) it passes neither and this does nothing.
$new_db_password = getenv('LIFEBOAT_MARIADB_NEW_PASSWORD');
if (($new_db_password === false || $new_db_password === '') && ($file = getenv('LIFEBOAT_MARIADB_NEW_PASSWORD_FILE'))) {
    $new_db_password = @file_get_contents($file);
    if ($new_db_password === false) {
        note("cannot read LIFEBOAT_MARIADB_NEW_PASSWORD_FILE ($file)");
        exit(1);
    }
    $new_db_password = rtrim($new_db_password, "\r\n");
}
if ($new_db_password !== false && $new_db_password !== '') {
    // The user exists for the socket (localhost) and for 127.0.0.1: log in as each and let it
    // change its own password (SET PASSWORD needs no privileges for one's own account).
    $targets = array();
    if ($socket = getenv('LIFEBOAT_MARIADB_SOCKET')) {
        $targets[] = array('localhost', null, $socket);
    }
    if ($host = getenv('LIFEBOAT_MARIADB_HOST')) {
        $targets[] = array($host, (int) (getenv('LIFEBOAT_MARIADB_PORT') ?: 3306), null);
    }
    mysqli_report(MYSQLI_REPORT_OFF);
    $done = array();
    foreach ($targets as $t) {
        $where = $t[2] ?: "$t[0]:$t[1]";
        $db = mysqli_init();
        // With the old password; an account reached before (the server may take both ways in
        // as the same account) already has the new one.
        if (!@$db->real_connect($t[0], DB_USER, DB_PASSWORD, '', $t[1] ?: 0, $t[2])) {
            $db = mysqli_init();
            if (!@$db->real_connect($t[0], DB_USER, $new_db_password, '', $t[1] ?: 0, $t[2])) {
                note('cannot log in to the database as ' . DB_USER . " through $where: " . mysqli_connect_error());
                exit(1);
            }
        }
        $account = $db->query('SELECT CURRENT_USER()')->fetch_row()[0];
        if (!isset($done[$account])) {
            if (!$db->query("SET PASSWORD = PASSWORD('" . $db->real_escape_string($new_db_password) . "')")) {
                note("changing the database password of $account failed: " . $db->error);
                exit(1);
            }
            note("database account $account (through $where) has its new password");
            $done[$account] = true;
        }
        $db->close();
    }
    out('rotated: database user ' . DB_USER);
}

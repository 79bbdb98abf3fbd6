<?php
/**
 * WordPress's installer, non-interactive (setup.sh runs it with the PHP CLI): installs WordPress
 * into the database of wp-config.php unless it is installed already, then makes an application
 * password for the admin. Prints on stdout, one per line:
 *   admin user: NAME
 *   admin password: PASSWORD        (only when this run installed WordPress)
 *   application password: PASSWORD
 * and everything else on stderr.
 *
 * Environment: WP_ADMIN_USER (default "admin"), WP_ADMIN_PASSWORD (default: generated),
 * WP_ADMIN_EMAIL (default NAME@example.com), WP_TITLE, and the database variables of
 * wp-config.php.
 */
if (PHP_SAPI !== 'cli') {
    exit(1);
}
define('WP_INSTALLING', true);
require __DIR__ . '/../public/wp-load.php';

// No mail about the new site (there is rarely a mail server), no HTTP requests to a front door
// that may not be up (WordPress tests pretty permalinks over HTTP), no .htaccess in the code
// (the rewrite rules are in Apache's configuration, run.sh).
function wp_new_blog_notification($blog_title, $blog_url, $user_id, $password)
{
}
add_filter('pre_http_request', function () {
    return new WP_Error('lifeboat_setup', 'no HTTP requests during setup');
});
add_filter('flush_rewrite_rules_hard', '__return_false');
require_once ABSPATH . 'wp-admin/includes/upgrade.php';

function out($line)
{
    fwrite(STDOUT, $line . "\n");
}
function note($line)
{
    fwrite(STDERR, "setup: $line\n");
}
function env($name, $default)
{
    $v = getenv($name);
    return $v === false || $v === '' ? $default : $v;
}

$user = env('WP_ADMIN_USER', 'admin');
$email = env('WP_ADMIN_EMAIL', $user . '@example.com');
$title = env('WP_TITLE', 'A WordPress under Lifeboat');

if (!is_blog_installed()) {
    $password = env('WP_ADMIN_PASSWORD', '');
    if ($password === '') {
        $password = wp_generate_password(24, false);
    }
    if (!validate_username($user)) {
        note("WP_ADMIN_USER '$user' is not a valid WordPress user name");
        exit(1);
    }
    $result = wp_install($title, $user, $email, true, '', wp_slash($password));
    if (is_wp_error($result) || empty($result['user_id'])) {
        note('the WordPress installer failed: ' . (is_wp_error($result) ? $result->get_error_message() : 'no user made'));
        exit(1);
    }
    // Pretty permalinks (/hello-world/, /wp-json/): Apache's rewrite rules are always on.
    update_option('permalink_structure', '/%postname%/');
    flush_rewrite_rules(false);
    // The account the credentials hook prints the new password of as "admin password".
    update_option('lifeboat_admin_login', $user, false);
    note("installed WordPress " . get_bloginfo('version') . " into database " . DB_NAME . " as '$title'");
    $admin = get_user_by('id', $result['user_id']);
    out("admin user: $user");
    out("admin password: $password");
} else {
    $admin = get_user_by('login', get_option('lifeboat_admin_login', $user));
    if (!$admin) {
        $admin = get_user_by('login', $user);
    }
    if (!$admin) {
        $admins = get_users(array('role' => 'administrator', 'orderby' => 'ID', 'number' => 1));
        $admin = $admins ? $admins[0] : null;
    }
    if (!$admin) {
        note('WordPress is installed in database ' . DB_NAME . ' but has no administrator; nothing changed');
        exit(1);
    }
    note("WordPress is installed already in database " . DB_NAME . "; its admin's password is unchanged (rotate-credentials.sh gives a new one)");
    out("admin user: " . $admin->user_login);
}

$created = WP_Application_Passwords::create_new_application_password(
    $admin->ID,
    array('name' => 'lifeboat setup ' . gmdate('Y-m-d H:i:s') . ' UTC')
);
if (is_wp_error($created)) {
    note('making an application password failed: ' . $created->get_error_message());
    exit(1);
}
out('application password: ' . $created[0]);

<?php
/**
 * The health check (lifeboat.toml: health.path = "/lifeboat-health.php"). 200 "ok" when PHP
 * runs, wp-config.php loads (environment, keys and salts), the database answers and WordPress
 * is installed in it; otherwise 503 with the reason (WordPress's own database error is a 500).
 * It loads only the smallest part of WordPress (SHORTINIT): a check every second per instance
 * costs a few milliseconds.
 */
define('SHORTINIT', true);
define('WP_USE_THEMES', false);
header('Cache-Control: no-store');
header('Content-Type: text/plain; charset=utf-8');
require __DIR__ . '/public/wp-load.php';

global $wpdb;
$siteurl = $wpdb->get_var("SELECT option_value FROM {$wpdb->options} WHERE option_name = 'siteurl'");
if ($siteurl === null) {
    http_response_code(503);
    echo $wpdb->last_error !== '' ? "database error\n" : "WordPress is not installed in the database yet (setup.sh installs it)\n";
    exit;
}
echo "ok\n";

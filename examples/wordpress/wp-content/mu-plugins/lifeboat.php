<?php
/**
 * Plugin Name: Lifeboat
 * Description: What a WordPress needs under Lifeboat's front door (always on: a must-use plugin).
 *
 * - Application passwords (the REST API's Basic auth) are offered over https, as WordPress
 *   does, and also over plain http to clients on this machine: Lifeboat's front door speaks
 *   plain HTTP, and scripts next to the site (setup.sh, test.sh, the owner's) use it. A
 *   visitor from elsewhere still needs https (a TLS terminator in [proxy] trusted_proxies).
 * - No daily https probe of its own address (see below).
 * - Uploads are read from and written to the state dir when Lifeboat gives one that is not the
 *   site dir (a restored copy it could not mount at the site's own paths).
 */

add_filter('wp_is_application_passwords_available', function ($available) {
    if ($available || PHP_SAPI === 'cli') {
        return true;
    }
    // wp-config.php has put the front door's view of the client into REMOTE_ADDR.
    $client = $_SERVER['REMOTE_ADDR'] ?? '';
    return $client === '::1' || strpos($client, '127.') === 0;
});

if (defined('LIFEBOAT_STATE_DIR') && LIFEBOAT_STATE_DIR !== LIFEBOAT_SITE_DIR) {
    add_filter('upload_dir', function ($dirs) {
        $site_uploads = WP_CONTENT_DIR . '/uploads';
        $state_uploads = LIFEBOAT_STATE_DIR . '/wp-content/uploads';
        foreach (array('path', 'basedir') as $key) {
            if (strpos($dirs[$key], $site_uploads) === 0) {
                $dirs[$key] = $state_uploads . substr($dirs[$key], strlen($site_uploads));
            }
        }
        return $dirs;
    });
}

// WordPress probes once a day whether the site answers https on its own address (a TLS
// handshake to the front door, which speaks plain HTTP: a 400 in its log, and a Site Health
// warning). Whether the site is https is decided by the TLS terminator in front of Lifeboat.
remove_action('init', 'wp_schedule_https_detection');
remove_action('wp_https_detection', 'wp_update_https_detection_errors');

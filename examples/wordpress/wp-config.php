<?php
/**
 * WordPress configuration for a site under Lifeboat.
 *
 * WordPress's code is in public/ (a copy of Debian's /usr/share/wordpress made by setup.sh);
 * WordPress finds this file one level above it, as it does for any wp-config.php kept outside
 * the document root. Nothing here is specific to one machine:
 *
 * - the database comes from the environment Lifeboat gives every instance (and the
 *   credentials hook, and `lifeboat exec`): LIFEBOAT_MARIADB_SOCKET (preferred) or
 *   LIFEBOAT_MARIADB_HOST + LIFEBOAT_MARIADB_PORT, LIFEBOAT_MARIADB_DATABASE,
 *   LIFEBOAT_MARIADB_USER, LIFEBOAT_MARIADB_PASSWORD (or LIFEBOAT_MARIADB_PASSWORD_FILE);
 * - the keys and salts come from secrets/wp-salts, part of the site's [state]: setup.sh makes
 *   it, the credentials hook (rotate-credentials.sh) rewrites it, and a rewind brings back the
 *   file of its time together with the database;
 * - WP_HOME and WP_SITEURL follow the address the visitor asked for (Lifeboat's front door
 *   passes it on in X-Forwarded-Host), so the site works at any host:port. WP_HOSTS (a
 *   space-separated list, in the process's `env`) restricts the names believed; the first
 *   one is used for any other.
 *
 * Apache passes the variables on to PHP (`PassEnv` in the configuration run.sh writes);
 * getenv() also falls back to the process environment, which is what the PHP CLI sees.
 */

if (!function_exists('lifeboat_env')) {
    /** A variable of the environment, or $default when it is unset or empty. */
    function lifeboat_env($name, $default = null)
    {
        $value = getenv($name);
        if ($value === false || $value === '') {
            $value = isset($_SERVER[$name]) && $_SERVER[$name] !== '' ? $_SERVER[$name] : $default;
        }
        return $value;
    }

    /** Stops with a message that says what is missing: a 500 for a visitor, exit 1 on the CLI. */
    function lifeboat_config_error($message)
    {
        if (PHP_SAPI === 'cli') {
            fwrite(STDERR, "wp-config.php: $message\n");
            exit(1);
        }
        error_log("wp-config.php: $message");
        if (!headers_sent()) {
            header('HTTP/1.1 500 Internal Server Error');
            header('Content-Type: text/plain; charset=utf-8');
        }
        echo "This site is not configured: $message\n";
        exit(1);
    }
}

/* Where the state is: the site dir itself (under Lifeboat a restored copy appears there, in
 * the instance's private mounts), or the copy's own path when Lifeboat could not mount it. */
define('LIFEBOAT_SITE_DIR', __DIR__);
define('LIFEBOAT_STATE_DIR', rtrim(lifeboat_env('LIFEBOAT_STATE_DIR', __DIR__), '/'));

/* ---- Database ---------------------------------------------------------------------------- */

$lifeboat_socket = lifeboat_env('LIFEBOAT_MARIADB_SOCKET');
$lifeboat_host = lifeboat_env('LIFEBOAT_MARIADB_HOST');
// The socket is preferred; TCP when the socket is not where this process can see it.
if ($lifeboat_socket !== null && ($lifeboat_host === null || @file_exists($lifeboat_socket))) {
    // wpdb reads "localhost:/path" as a unix socket.
    define('DB_HOST', 'localhost:' . $lifeboat_socket);
} elseif ($lifeboat_host !== null) {
    define('DB_HOST', $lifeboat_host . ':' . lifeboat_env('LIFEBOAT_MARIADB_PORT', '3306'));
} else {
    lifeboat_config_error('no database: LIFEBOAT_MARIADB_SOCKET or LIFEBOAT_MARIADB_HOST must be set (Lifeboat sets them for a manifest with [state] mariadb; by hand, export them)');
}
$lifeboat_password = lifeboat_env('LIFEBOAT_MARIADB_PASSWORD');
if ($lifeboat_password === null && ($lifeboat_password_file = lifeboat_env('LIFEBOAT_MARIADB_PASSWORD_FILE')) !== null) {
    $lifeboat_password = @file_get_contents($lifeboat_password_file);
    if ($lifeboat_password === false) {
        lifeboat_config_error("cannot read LIFEBOAT_MARIADB_PASSWORD_FILE ($lifeboat_password_file)");
    }
    $lifeboat_password = rtrim($lifeboat_password, "\r\n");
}
define('DB_NAME', lifeboat_env('LIFEBOAT_MARIADB_DATABASE', 'wordpress'));
define('DB_USER', lifeboat_env('LIFEBOAT_MARIADB_USER', 'wordpress'));
define('DB_PASSWORD', $lifeboat_password === null ? '' : $lifeboat_password);
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
unset($lifeboat_socket, $lifeboat_host, $lifeboat_password, $lifeboat_password_file);

// WP_TABLE_PREFIX (in the process's `env`) for a site brought in with other table names.
$table_prefix = lifeboat_env('WP_TABLE_PREFIX', 'wp_');

/* ---- Keys and salts: secrets/wp-salts, NAME=VALUE lines ------------------------------------ */

$lifeboat_salts_file = LIFEBOAT_STATE_DIR . '/secrets/wp-salts';
$lifeboat_salts = @file($lifeboat_salts_file, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES);
if ($lifeboat_salts === false) {
    lifeboat_config_error("cannot read the keys and salts in $lifeboat_salts_file (setup.sh makes it)");
}
$lifeboat_salt_names = array('AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY',
    'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT');
foreach ($lifeboat_salts as $lifeboat_line) {
    $lifeboat_pair = explode('=', $lifeboat_line, 2);
    if (count($lifeboat_pair) === 2 && in_array($lifeboat_pair[0], $lifeboat_salt_names, true)
        && strlen($lifeboat_pair[1]) >= 32 && !defined($lifeboat_pair[0])) {
        define($lifeboat_pair[0], $lifeboat_pair[1]);
    }
}
foreach ($lifeboat_salt_names as $lifeboat_name) {
    if (!defined($lifeboat_name)) {
        // Never fall back to WordPress's own salts in the database: a rotation would miss them.
        lifeboat_config_error("$lifeboat_salts_file has no $lifeboat_name of at least 32 characters");
    }
}
unset($lifeboat_salts, $lifeboat_salts_file, $lifeboat_salt_names, $lifeboat_line, $lifeboat_pair, $lifeboat_name);

/* ---- Behind Lifeboat's front door: scheme, host, client address ----------------------------- */

if (!function_exists('lifeboat_request_host')) {
    /** The host[:port] the visitor asked for, if it looks like one. */
    function lifeboat_request_host()
    {
        foreach (array('HTTP_X_FORWARDED_HOST', 'HTTP_HOST') as $key) {
            if (!empty($_SERVER[$key])) {
                // A proxy chain may list several; the first is what the visitor asked for.
                $host = strtolower(trim(explode(',', $_SERVER[$key])[0]));
                if (preg_match('/^([a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$/', $host)) {
                    return $host;
                }
                return null;
            }
        }
        return null;
    }
}

if (isset($_SERVER['HTTP_X_FORWARDED_PROTO'])
    && strtolower(trim(explode(',', $_SERVER['HTTP_X_FORWARDED_PROTO'])[0])) === 'https') {
    // Lifeboat sends "https" only when a trusted TLS terminator in front of it said so.
    $_SERVER['HTTPS'] = 'on';
}
if (!empty($_SERVER['HTTP_X_FORWARDED_FOR'])
    && in_array($_SERVER['REMOTE_ADDR'] ?? '', array('127.0.0.1', '::1'), true)) {
    // The front door appends the address it saw last: the only entry it vouches for.
    $lifeboat_hops = array_map('trim', explode(',', $_SERVER['HTTP_X_FORWARDED_FOR']));
    $lifeboat_client = end($lifeboat_hops);
    if (filter_var($lifeboat_client, FILTER_VALIDATE_IP)) {
        $_SERVER['REMOTE_ADDR'] = $lifeboat_client;
    }
    unset($lifeboat_hops, $lifeboat_client);
}

$lifeboat_host = PHP_SAPI === 'cli' ? null : lifeboat_request_host();
$lifeboat_allowed = preg_split('/[\s,]+/', strtolower((string) lifeboat_env('WP_HOSTS', '')), -1, PREG_SPLIT_NO_EMPTY);
if ($lifeboat_allowed && ($lifeboat_host === null || !in_array($lifeboat_host, $lifeboat_allowed, true))) {
    $lifeboat_host = $lifeboat_allowed[0];
}
if ($lifeboat_host !== null) {
    // WordPress compares HTTP_HOST with WP_HOME (canonical redirects): one name for both.
    $_SERVER['HTTP_HOST'] = $lifeboat_host;
    $lifeboat_url = (empty($_SERVER['HTTPS']) || $_SERVER['HTTPS'] === 'off' ? 'http' : 'https') . '://' . $lifeboat_host;
} else {
    // The CLI (setup.sh's installer, the credentials hook): WP_URL, or Lifeboat's default front door.
    $lifeboat_url = rtrim(lifeboat_env('WP_URL', 'http://127.0.0.1:8080'), '/');
}
define('WP_HOME', $lifeboat_url);
define('WP_SITEURL', $lifeboat_url);
unset($lifeboat_host, $lifeboat_allowed, $lifeboat_url);

// Cookie names end in a hash WordPress takes from the site's URL, which here follows the address
// asked for: one name for the site whatever address (or instance) a visitor uses.
define('COOKIEHASH', md5('lifeboat-wordpress:' . DB_NAME));

/* ---- Files ------------------------------------------------------------------------------- */

// wp-content (themes, plugins, mu-plugins) sits next to public/, uploads inside it is [state].
define('WP_CONTENT_DIR', __DIR__ . '/wp-content');
define('WP_CONTENT_URL', WP_HOME . '/wp-content');
// The code is Debian's (setup.sh copies it again when the package changes): WordPress must not
// change it, and the site's own user could not anyway.
define('DISALLOW_FILE_MODS', true);
define('DISALLOW_FILE_EDIT', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_AUTO_UPDATE_CORE', false);
define('WP_TEMP_DIR', sys_get_temp_dir());
define('FS_METHOD', 'direct');

define('WP_DEBUG', (bool) lifeboat_env('WP_DEBUG', false));
define('WP_DEBUG_DISPLAY', false);

if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/public/');
}
require_once ABSPATH . 'wp-settings.php';

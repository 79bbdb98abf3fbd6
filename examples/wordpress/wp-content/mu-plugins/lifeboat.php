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
 * - A REST API write carrying an `Idempotency-Key` header is done at most once (below), so the
 *   front door may send it again when the instance it went to died before answering.
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

/*
 * Idempotency-Key on REST API writes.
 *
 * Lifeboat's front door sends a request again on another instance when the first one died
 * before answering (a kill -9 of a PHP worker or of Apache's master), but a write only when it
 * carries an Idempotency-Key header: the site promises to act on one key at most once. This
 * keeps that promise for the REST API (every method but GET, HEAD and OPTIONS):
 *
 * - the key (per user) is inserted into wp_lifeboat_idempotency in a transaction that also
 *   holds everything the request writes, and the answer is stored in the same row just before
 *   the commit. A worker killed half-way leaves nothing behind: MariaDB rolls its transaction
 *   back when its connection drops, and the second attempt starts over;
 * - a second attempt while the first is still running waits for it (the row is locked), then
 *   gets the first one's answer, status, body and headers, without doing anything again;
 * - the same key with another request (method, route, query or body) is refused with a 422;
 * - an answer of 500 or more is rolled back with the rest, so a retry can do the work;
 * - while the transaction is open, wpdb must not reconnect: after the database server died
 *   (a kill -9, a restart) it would run the rest of the request, COMMIT included, on a new
 *   connection in autocommit mode, and answer 201 for writes the crash rolled back. The
 *   request fails instead (wpdb's "Error establishing a database connection", a 500), and a
 *   retry with the same key starts over or gets the first answer if the commit made it.
 *
 * Files written by the request (a medium's upload) are not part of the transaction: a worker
 * killed after writing one leaves an unattached file in uploads, and the retry writes another.
 * Keys are kept for a day.
 */
final class Lifeboat_Idempotency
{
    /** Keys older than this many seconds are deleted (now and then, by a write). */
    const KEEP_SECONDS = 86400;

    /** @var string|null the key's hash while this request's transaction is open */
    private static $open = null;

    /** @var int|null wpdb's reconnect_retries, put back when the transaction ends */
    private static $retries = null;

    /** No reconnection while the transaction is open (see above). */
    private static function hold_connection()
    {
        global $wpdb;
        if (self::$retries === null) {
            self::$retries = $wpdb->reconnect_retries;
            $wpdb->reconnect_retries = 0;
        }
    }

    private static function release_connection()
    {
        global $wpdb;
        if (self::$retries !== null) {
            $wpdb->reconnect_retries = self::$retries;
            self::$retries = null;
        }
    }

    public static function table()
    {
        global $wpdb;
        return $wpdb->base_prefix . 'lifeboat_idempotency';
    }

    /** rest_pre_dispatch: before the request is served. */
    public static function before($result, $server, $request)
    {
        if ($result !== null || self::$open !== null) {
            return $result;
        }
        $method = $request->get_method();
        $key = $request->get_header('idempotency_key');
        if ($key === null || $key === '' || in_array($method, array('GET', 'HEAD', 'OPTIONS'), true)) {
            return $result;
        }
        if (strlen($key) > 255) {
            return new WP_Error('lifeboat_idempotency_key', 'The Idempotency-Key header is longer than 255 characters.', array('status' => 400));
        }
        global $wpdb;
        $hash = hash('sha256', get_current_user_id() . "\n" . $key);
        $fingerprint = hash('sha256', $method . "\n" . $request->get_route() . "\n"
            . wp_json_encode($request->get_query_params()) . "\n" . $request->get_body());

        $claimed = self::claim($hash, $fingerprint);
        if ($claimed === true) {
            self::$open = $hash;
            return $result; // served as usual; after() stores the answer and commits
        }
        if ($claimed instanceof WP_Error) {
            return $claimed;
        }
        // Done before (and committed): the first answer, as it was.
        $row = $wpdb->get_row($wpdb->prepare(
            'SELECT fingerprint, status, body, headers FROM ' . self::table() . ' WHERE key_hash = %s',
            $hash
        ));
        if ($row === null || $row->status === null) {
            return new WP_Error('lifeboat_idempotency', 'The first request with this Idempotency-Key has no stored answer; send it again with a new key.', array('status' => 409));
        }
        if (!hash_equals($row->fingerprint, $fingerprint)) {
            return new WP_Error('lifeboat_idempotency_mismatch', 'This Idempotency-Key was used for another request.', array('status' => 422));
        }
        $response = new WP_REST_Response(json_decode($row->body, true), (int) $row->status);
        $headers = json_decode($row->headers, true);
        if (is_array($headers)) {
            $response->set_headers($headers);
        }
        $response->header('Idempotent-Replayed', 'true');
        return $response;
    }

    /**
     * Opens the transaction and inserts the key: true when this request owns it (the
     * transaction stays open), false when it was done before, or an error.
     */
    private static function claim($hash, $fingerprint)
    {
        global $wpdb;
        for ($attempt = 0; $attempt < 2; $attempt++) {
            self::hold_connection();
            $wpdb->query('START TRANSACTION');
            // Waits while another attempt with the same key holds it uncommitted.
            $inserted = $wpdb->query($wpdb->prepare(
                'INSERT IGNORE INTO ' . self::table() . ' (key_hash, fingerprint, created_at) VALUES (%s, %s, UTC_TIMESTAMP())',
                $hash,
                $fingerprint
            ));
            if ($inserted === 1) {
                return true;
            }
            $missing = $inserted === false && stripos($wpdb->last_error, "doesn't exist") !== false;
            $wpdb->query('ROLLBACK');
            self::release_connection();
            if ($inserted === 0) {
                return false;
            }
            if ($attempt === 0 && $missing) {
                // The first keyed write of this site (the table is made once, outside the
                // transaction: DDL would commit it).
                self::create_table();
                continue;
            }
            break;
        }
        return new WP_Error('lifeboat_idempotency', 'The Idempotency-Key could not be recorded (database error); nothing was done.', array('status' => 503));
    }

    private static function create_table()
    {
        global $wpdb;
        $wpdb->query('CREATE TABLE IF NOT EXISTS ' . self::table() . ' (
            key_hash CHAR(64) NOT NULL PRIMARY KEY,
            fingerprint CHAR(64) NOT NULL,
            created_at DATETIME NOT NULL,
            status SMALLINT NULL,
            body LONGTEXT NULL,
            headers TEXT NULL,
            KEY created_at (created_at)
        ) ENGINE=InnoDB ' . $wpdb->get_charset_collate());
    }

    /** rest_post_dispatch: the answer is stored with the key, then everything commits. */
    public static function after($response, $server, $request)
    {
        if (self::$open === null) {
            return $response;
        }
        global $wpdb;
        $hash = self::$open;
        self::$open = null;
        $response = rest_ensure_response($response);
        $status = $response->get_status();
        if ($status >= 500) {
            $wpdb->query('ROLLBACK');
            self::release_connection();
            return $response;
        }
        $stored = $wpdb->update(
            self::table(),
            array(
                'status' => $status,
                'body' => wp_json_encode($server->response_to_data($response, false)),
                'headers' => wp_json_encode($response->get_headers()),
            ),
            array('key_hash' => $hash)
        );
        if ($stored !== 1) {
            $wpdb->query('ROLLBACK');
            self::release_connection();
            return new WP_Error('lifeboat_idempotency', 'The answer could not be stored with its Idempotency-Key; nothing was done, send the request again.', array('status' => 503));
        }
        if ($wpdb->query('COMMIT') === false) {
            // Whether it committed is unknown: a retry with the same key finds out.
            self::release_connection();
            return new WP_Error('lifeboat_idempotency', 'The database did not confirm the commit; send the request again with the same Idempotency-Key.', array('status' => 503));
        }
        self::release_connection();
        if (mt_rand(1, 100) === 1) {
            $wpdb->query($wpdb->prepare(
                'DELETE FROM ' . self::table() . ' WHERE created_at < UTC_TIMESTAMP() - INTERVAL %d SECOND',
                self::KEEP_SECONDS
            ));
        }
        return $response;
    }
}

add_filter('rest_pre_dispatch', array('Lifeboat_Idempotency', 'before'), 0, 3);
add_filter('rest_post_dispatch', array('Lifeboat_Idempotency', 'after'), PHP_INT_MAX, 3);

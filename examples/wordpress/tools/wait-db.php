<?php
/**
 * Waits until the database of the LIFEBOAT_MARIADB_* environment accepts the app's login
 * (setup.sh runs it before the installer: right after `lifeboat up` the server may still be
 * starting). Usage: php tools/wait-db.php [SECONDS] (default 60). Exit 0 once it answers, else 1
 * with the last error on stderr.
 */
mysqli_report(MYSQLI_REPORT_OFF);
$env = function ($name) {
    $v = getenv($name);
    return $v === false || $v === '' ? null : $v;
};
$password = $env('LIFEBOAT_MARIADB_PASSWORD');
if ($password === null && ($file = $env('LIFEBOAT_MARIADB_PASSWORD_FILE')) !== null) {
    $password = rtrim((string) @file_get_contents($file), "\r\n");
}
$socket = $env('LIFEBOAT_MARIADB_SOCKET');
$host = $env('LIFEBOAT_MARIADB_HOST');
$deadline = microtime(true) + (float) ($argv[1] ?? 60);
do {
    $db = mysqli_init();
    $ok = $socket !== null && ($host === null || file_exists($socket))
        ? @$db->real_connect('localhost', $env('LIFEBOAT_MARIADB_USER'), (string) $password, $env('LIFEBOAT_MARIADB_DATABASE'), 0, $socket)
        : @$db->real_connect($host, $env('LIFEBOAT_MARIADB_USER'), (string) $password, $env('LIFEBOAT_MARIADB_DATABASE'), (int) ($env('LIFEBOAT_MARIADB_PORT') ?? 3306));
    if ($ok) {
        exit(0);
    }
    usleep(250000);
} while (microtime(true) < $deadline);
fwrite(STDERR, 'setup: the database does not answer through ' . ($socket ?? "$host") . ': ' . mysqli_connect_error() . "\n");
exit(1);

#!/bin/sh
# One instance of the site: Apache with mod_php (prefork) in the foreground, serving WordPress
# on 127.0.0.1:$PORT. Lifeboat runs this from the site dir with $PORT and $LIFEBOAT_INSTANCE set
# (lifeboat.toml); by hand: PORT=8001 LIFEBOAT_MARIADB_SOCKET=... ./run.sh
#
# It writes the instance's Apache configuration into its own run dir (pid file, lock files,
# the configuration) under $TMPDIR (default /tmp), and execs apache2, which stays the leader of
# the instance's process group: Lifeboat's SIGTERM to the group stops the master and its workers
# at once, SIGKILL after stop_timeout catches anything left, and a worker that dies is replaced
# by the master. The error log and the access log (health checks left out) go to stderr and
# stdout, which Lifeboat keeps per instance (`lifeboat logs web-1`).
#
# Environment: PORT (required); LIFEBOAT_INSTANCE, LIFEBOAT_STATE_DIR (uploads are served from
# its wp-content/uploads); WP_APACHE_WORKERS (most PHP requests one instance serves at once,
# default 8); WP_UPLOAD_MAX (default 64M); as root APACHE_RUN_USER / APACHE_RUN_GROUP (default
# www-data: Apache refuses to serve as root). The LIFEBOAT_MARIADB_* variables, WP_HOSTS, WP_URL,
# WP_DEBUG and WP_TABLE_PREFIX are passed on to PHP.
set -eu
me=run.sh
site=$(cd "$(dirname "$0")" && pwd)
port=${PORT:?$me: PORT must be set (lifeboat sets it for each instance)}
instance=${LIFEBOAT_INSTANCE:-port-$port}
state=${LIFEBOAT_STATE_DIR:-$site}
state=${state%/}
workers=${WP_APACHE_WORKERS:-8}
upload_max=${WP_UPLOAD_MAX:-64M}
modules=/usr/lib/apache2/modules
php_module=$(ls "$modules"/libphp*.so 2>/dev/null | sort -V | tail -n 1)
if [ ! -x /usr/sbin/apache2 ] || [ -z "$php_module" ]; then
    echo "$me: Apache or mod_php is missing (packages apache2, libapache2-mod-php); run setup.sh" >&2
    exit 1
fi
if [ ! -f "$site/public/wp-settings.php" ]; then
    echo "$me: no WordPress code in $site/public; run $site/setup.sh" >&2
    exit 1
fi

# The run dir: one per site dir and instance, only this user's.
umask 077
site_id=$(printf '%s' "$site" | cksum | cut -d ' ' -f 1)
base=${TMPDIR:-/tmp}/lifeboat-apache-$(id -u)
mkdir -p "$base"
if [ ! -O "$base" ]; then
    echo "$me: $base belongs to another user; set TMPDIR to a directory of your own" >&2
    exit 1
fi
chmod 0700 "$base"
run=$base/$site_id-$instance
mkdir -p "$run"
rm -f "$run/apache2.pid"   # a kill -9 leaves it; Apache would only warn
conf=$run/apache2.conf

# Logs go to the instance's stdout and stderr. When those are files this user can not open again
# by name (as root, Lifeboat keeps the instance's log file and hands over only the open file to
# the site's user), Apache writes through a `cat` of its own that inherits them.
error_log=/dev/stderr
access_log=/dev/stdout
if ! [ -w /dev/stderr ] || ! [ -w /dev/stdout ]; then
    error_log='"||/bin/cat"'
    access_log='"||/bin/cat"'
fi

user_lines=""
if [ "$(id -u)" -eq 0 ]; then
    user_lines="User ${APACHE_RUN_USER:-www-data}
Group ${APACHE_RUN_GROUP:-www-data}"
    # The workers (that user) never touch the run dir: the master writes pid and config.
fi

pass_env=""
for var in LIFEBOAT_MARIADB_SOCKET LIFEBOAT_MARIADB_HOST LIFEBOAT_MARIADB_PORT \
    LIFEBOAT_MARIADB_DATABASE LIFEBOAT_MARIADB_USER LIFEBOAT_MARIADB_PASSWORD \
    LIFEBOAT_MARIADB_PASSWORD_FILE LIFEBOAT_STATE_DIR LIFEBOAT_SITE_DIR LIFEBOAT_SITE \
    LIFEBOAT_INSTANCE WP_HOSTS WP_URL WP_DEBUG WP_TABLE_PREFIX TMPDIR; do
    if eval "[ -n \"\${$var:-}\" ]"; then
        pass_env="$pass_env $var"
    fi
done
[ -n "$pass_env" ] && pass_env="PassEnv$pass_env"

cat >"$conf.tmp" <<EOF
# Written by $site/run.sh for instance $instance; every start writes it again.
ServerRoot /etc/apache2
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile $run/apache2.pid
DefaultRuntimeDir $run
Mutex file:$run default
$user_lines

LoadModule mpm_prefork_module $modules/mod_mpm_prefork.so
LoadModule authz_core_module $modules/mod_authz_core.so
LoadModule alias_module $modules/mod_alias.so
LoadModule dir_module $modules/mod_dir.so
LoadModule env_module $modules/mod_env.so
LoadModule mime_module $modules/mod_mime.so
LoadModule rewrite_module $modules/mod_rewrite.so
LoadModule setenvif_module $modules/mod_setenvif.so
LoadModule php_module $php_module

# mod_php is not thread-safe: prefork, one PHP request per process. Lifeboat pools connections
# to instances and keeps idle ones for 10 s; a prefork worker held by an idle keep-alive
# connection serves nobody, so every response closes its connection (loopback connects cost
# microseconds).
StartServers 2
MinSpareServers 2
MaxSpareServers 4
ServerLimit $workers
MaxRequestWorkers $workers
MaxConnectionsPerChild 2000
KeepAlive Off
Timeout 60
ListenBacklog 511

ErrorLog $error_log
LogLevel warn
SetEnvIf Request_URI "^/lifeboat-health\.php$" lifeboat_health
LogFormat "%{X-Forwarded-For}i %l %u %t \"%r\" %>s %b %D \"%{Referer}i\" \"%{User-Agent}i\"" proxied
CustomLog $access_log proxied env=!lifeboat_health
ServerTokens Prod
ServerSignature Off
TraceEnable Off
FileETag MTime Size
TypesConfig /etc/mime.types
AddDefaultCharset UTF-8
$pass_env

# PHP: only *.php runs, and only where WordPress's code is.
php_admin_value upload_max_filesize $upload_max
php_admin_value post_max_size $upload_max
php_admin_value memory_limit 256M
php_admin_flag expose_php off
php_admin_flag display_errors off
php_admin_flag log_errors on
php_admin_flag engine off
<FilesMatch "\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>

<Directory />
    Options None
    AllowOverride None
    Require all denied
</Directory>
<FilesMatch "^\.">
    Require all denied
</FilesMatch>

DocumentRoot "$site/public"
DirectoryIndex index.php index.html
<Directory "$site/public">
    Options FollowSymLinks
    Require all granted
    php_admin_flag engine on
    # WordPress's pretty permalinks (its .htaccess rules; no .htaccess is read).
    RewriteEngine On
    RewriteBase /
    RewriteRule ^index\.php$ - [L]
    RewriteCond %{REQUEST_FILENAME} !-f
    RewriteCond %{REQUEST_FILENAME} !-d
    RewriteRule . /index.php [L]
</Directory>
<Directory "$site/public/wp-content">
    Require all denied
</Directory>

# wp-content is next to public/; its uploads are the state (after a rewind without private
# mounts, the restored copy's). Nothing in uploads ever runs as PHP: a .php planted there is
# refused, not executed.
Alias "/wp-content/uploads" "$state/wp-content/uploads"
Alias "/wp-content" "$site/wp-content"
<Directory "$site/wp-content">
    Options FollowSymLinks
    Require all granted
    php_admin_flag engine on
</Directory>
<Directory "$state/wp-content/uploads">
    Options None
    Require all granted
    php_admin_flag engine off
    RemoveHandler .php
    <FilesMatch "(?i)\.(php[0-9]*|phtml|phar|pht|phps|cgi|pl|py|sh|shtml)$">
        Require all denied
    </FilesMatch>
</Directory>

# The health check: PHP, wp-config.php and the database (lifeboat-health.php).
Alias "/lifeboat-health.php" "$site/lifeboat-health.php"
<Directory "$site">
    <Files "lifeboat-health.php">
        Require all granted
        php_admin_flag engine on
    </Files>
</Directory>
EOF
mv -f "$conf.tmp" "$conf"

exec /usr/sbin/apache2 -DFOREGROUND -f "$conf"

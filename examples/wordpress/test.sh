#!/usr/bin/env bash
# End-to-end test of the WordPress site without Lifeboat: a copy of this site dir in a temporary
# dir, its own MariaDB (tools/dev-mariadb.sh) and two Apache instances (run.sh) on free ports,
# each in its own process group as Lifeboat starts them. Then, as an attacker and an owner would:
#
#   setup.sh installs (and a second run changes nothing that works); a post and a medium are
#   made through the REST API with the application password (on one instance, seen on the
#   other); the admin logs in (a cookie); the title is defaced; a .php is planted in uploads
#   (refused, never run) and one is uploaded (refused); the database user gets a new password
#   (as `lifeboat rewind --rotate-credentials` sets it) and the rotate hook runs with it; the
#   instances are stopped (SIGTERM to each group, as Lifeboat does) and started with it. The old cookie, application password, admin password and database password
#   no longer work; the new admin password and application password do; content is intact.
#
# Undoing the defacement and the planted file is the rewind's job: Lifeboat's integration test
# (crates/cli/tests/site_wordpress.rs) runs these steps under `lifeboat up` around a
# `lifeboat rewind --to T --rotate-credentials`.
#
# Needs the packages setup.sh installs (run it once as root). Runs as root (Apache's workers as
# www-data) or as an ordinary user. Everything it starts is stopped at the end; KEEP=1 keeps the
# temporary dir (logs, the site copy).
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-wp-test.XXXXXX")
chmod 0755 "$work"
site=$work/site
pgids=()
failures=0
checks=0

say() { echo "# $*"; }
ok() { checks=$((checks + 1)); echo "ok $checks - $1"; }
not_ok() { checks=$((checks + 1)); failures=$((failures + 1)); echo "not ok $checks - $1"; [ -z "${2:-}" ] || echo "#   $2"; }
check() { # NAME 'SHELL CONDITION': ok when it holds (evaluated here, with this script's functions)
    if eval "$2"; then ok "$1"; else not_ok "$1" "failed: $2"; fi
}
die() { echo "Bail out! $*"; exit 1; }

stop_instances() {
    local pg
    for pg in "${pgids[@]}"; do
        kill -TERM -- "-$pg" 2>/dev/null || true
    done
    for pg in "${pgids[@]}"; do
        for _ in $(seq 100); do
            kill -0 -- "-$pg" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pg" 2>/dev/null || true
    done
    pgids=()
}
groups_gone() { # PGID...: none of these process groups has a process left
    local pg
    for pg in "$@"; do
        if kill -0 -- "-$pg" 2>/dev/null; then return 1; fi
    done
}
cleanup() {
    stop_instances
    "$site/tools/dev-mariadb.sh" stop "$work/db" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "# kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# HTTP: code URL [curl args...] -> prints the status; the body is in $work/body
http() {
    local url=$1
    shift
    curl -sS -o "$work/body" -w '%{http_code}' --max-time 30 "$@" "$url" || true
}
field() { # JSON field of $work/body
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2], ""))' "$work/body" "$1"
}
line() { # the value of "KEY: value" in FILE
    sed -n "s/^$1: //p" "$2" | tail -n 1
}

# ---- the site, its database, its instances --------------------------------------------------
mkdir -p "$site/tools" "$site/wp-content/mu-plugins"
for f in lifeboat.toml setup.sh run.sh rotate-credentials.sh wp-config.php lifeboat-health.php; do
    cp "$src/$f" "$site/$f"
done
cp "$src"/tools/* "$site/tools/"
cp "$src/wp-content/mu-plugins/lifeboat.php" "$site/wp-content/mu-plugins/"

say "MariaDB in $work/db"
db_env=$("$site/tools/dev-mariadb.sh" start "$work/db") || die "could not start MariaDB"
eval "$db_env"
old_db_password=$LIFEBOAT_MARIADB_PASSWORD

admin_password=$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9' | head -c 20)
say "setup.sh"
WP_ADMIN_USER=admin WP_ADMIN_PASSWORD=$admin_password "$site/setup.sh" >"$work/setup.out" 2>"$work/setup.err" \
    || { cat "$work/setup.err"; die "setup.sh failed"; }
app_password=$(line 'application password' "$work/setup.out")
check "setup.sh prints the admin password it was given" '[ "$(line "admin password" "$work/setup.out")" = "$admin_password" ]'
check "setup.sh prints an application password" '[ -n "$app_password" ]'

if [ "$(id -u)" -eq 0 ]; then
    # What `lifeboat up` does for the site's user: the [state] dirs are given to it.
    export APACHE_RUN_USER=www-data APACHE_RUN_GROUP=www-data
    chown -R www-data:www-data "$site/wp-content/uploads" "$site/secrets"
fi

ports=()
start_instances() {
    local i port
    for i in 1 2; do
        port=${ports[$((i - 1))]}
        (cd "$site" && PORT=$port LIFEBOAT_INSTANCE=web-$i exec setsid ./run.sh >>"$work/web-$i.log" 2>&1) &
        pgids+=($!)
    done
    for i in 1 2; do
        port=${ports[$((i - 1))]}
        for _ in $(seq 100); do
            [ "$(http "http://127.0.0.1:$port/lifeboat-health.php" 2>/dev/null)" = 200 ] && break
            sleep 0.1
        done
        check "web-$i (port $port) is healthy" '[ "$(http "http://127.0.0.1:$port/lifeboat-health.php")" = 200 ]'
    done
}
ports=("$(free_port)" "$(free_port)")
say "two Apache instances on ports ${ports[*]}"
start_instances
a=http://127.0.0.1:${ports[0]}
b=http://127.0.0.1:${ports[1]}

say "a second setup.sh run"
"$site/setup.sh" >"$work/setup2.out" 2>"$work/setup2.err" || { cat "$work/setup2.err"; die "the second setup.sh run failed"; }
check "the second run installs nothing again (no new admin password)" '[ -z "$(line "admin password" "$work/setup2.out")" ]'
app_password2=$(line 'application password' "$work/setup2.out")
check "the second run prints another application password" '[ -n "$app_password2" ] && [ "$app_password2" != "$app_password" ]'
check "the site still answers after it" '[ "$(http "$a/lifeboat-health.php")" = 200 ]'
check "the first application password still works" '[ "$(http "$a/wp-json/wp/v2/users/me" -u "admin:$app_password")" = 200 ]'

# ---- content through the REST API -----------------------------------------------------------
say "a post and a medium through the REST API"
code=$(http "$a/wp-json/wp/v2/posts" -u "admin:$app_password" -H 'Content-Type: application/json' \
    -d '{"title":"Lifeboat keeps this","content":"A post made through the REST API.","status":"publish"}')
post_id=$(field id)
check "a post is created on web-1 ($code)" '[ "$code" = 201 ]'
check "web-2 serves it" '[ "$(http "$b/?p=$post_id" -L)" = 200 ] && grep -q "Lifeboat keeps this" "$work/body"'

python3 -c 'import zlib,struct,sys
def chunk(t,d): return struct.pack(">I",len(d))+t+d+struct.pack(">I",zlib.crc32(t+d)&0xffffffff)
sys.stdout.buffer.write(b"\x89PNG\r\n\x1a\n"+chunk(b"IHDR",struct.pack(">IIBBBBB",1,1,8,2,0,0,0))+chunk(b"IDAT",zlib.compress(b"\x00\xff\x00\x00"))+chunk(b"IEND",b""))' >"$work/pixel.png"
code=$(http "$b/wp-json/wp/v2/media" -u "admin:$app_password" -H 'Content-Type: image/png' \
    -H 'Content-Disposition: attachment; filename="lifeboat-pixel.png"' --data-binary "@$work/pixel.png")
media_url=$(field source_url)
check "a medium is uploaded on web-2 ($code)" '[ "$code" = 201 ]'
media_path=${media_url#*/wp-content/uploads/}
check "it is in wp-content/uploads" 'cmp -s "$work/pixel.png" "$site/wp-content/uploads/$media_path"'
check "web-1 serves it" '[ "$(http "$a/wp-content/uploads/$media_path")" = 200 ] && cmp -s "$work/body" "$work/pixel.png"'

say "links follow the address asked for (X-Forwarded-Host/-Proto from the front door)"
http "$a/" -H 'X-Forwarded-Host: blog.example:8443' -H 'X-Forwarded-Proto: https' >/dev/null
check "links are https://blog.example:8443/..." 'grep -q "https://blog.example:8443/" "$work/body"'
check "and never the instance's own address" '! grep -q "127.0.0.1:${ports[0]}" "$work/body"'

login() { # JAR PASSWORD -> 0 when WordPress gave a login cookie
    rm -f "$1"
    curl -sS -o /dev/null --max-time 30 -c "$1" -b 'wordpress_test_cookie=WP%20Cookie%20check' \
        --data-urlencode log=admin --data-urlencode "pwd=$2" -d 'testcookie=1' "$a/wp-login.php"
    grep -q 'wordpress_logged_in_' "$1"
}
dashboard() { # JAR BASE -> the status of /wp-admin/ with that cookie
    http "$2/wp-admin/" -b "$1"
}
say "the admin logs in"
check "the admin password logs in" 'login "$work/old.jar" "$admin_password"'
check "the cookie opens the dashboard on web-1" '[ "$(dashboard "$work/old.jar" "$a")" = 200 ]'
check "and on web-2 (same keys and salts)" '[ "$(dashboard "$work/old.jar" "$b")" = 200 ]'

# ---- the attack -----------------------------------------------------------------------------
say "the attacker defaces the title and plants PHP"
code=$(http "$a/wp-json/wp/v2/settings" -u "admin:$app_password" -H 'Content-Type: application/json' \
    -d '{"title":"Hacked by nobody"}')
check "the title is defaced ($code)" '[ "$code" = 200 ] && [ "$(http "$b/")" = 200 ] && grep -q "Hacked by nobody" "$work/body"'
mkdir -p "$site/wp-content/uploads/2020/01"
printf '<?php echo "PLANTED" . "-RAN";\n' >"$site/wp-content/uploads/2020/01/shell.php"
code=$(http "$a/wp-content/uploads/2020/01/shell.php")
check "a .php planted in uploads is refused ($code), never run" '[ "$code" = 403 ] && ! grep -q "PLANTED-RAN" "$work/body"'
code=$(http "$a/wp-content/uploads/2020/01/shell.PhP")
check "also by another spelling ($code)" '[ "$code" != 200 ]'
code=$(http "$a/wp-json/wp/v2/media" -u "admin:$app_password" -H 'Content-Type: application/x-php' \
    -H 'Content-Disposition: attachment; filename="shell.php"' --data-binary '<?php echo 1;')
check "uploading a .php through WordPress is refused ($code)" '[ "$code" != 201 ] && grep -q "not allowed to upload this file type" "$work/body"'

# ---- the credentials hook -------------------------------------------------------------------
new_db_password=$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9' | head -c 24)
say "a new database password, as lifeboat rewind --rotate-credentials sets it, then rotate-credentials.sh"
for host in localhost 127.0.0.1; do
    mariadb --no-defaults --socket="$LIFEBOAT_MARIADB_SOCKET" -u"$(id -un)" \
        -e "ALTER USER 'wordpress'@'$host' IDENTIFIED BY '$new_db_password'" || die "could not set the new database password"
done
export LIFEBOAT_MARIADB_PASSWORD=$new_db_password
salts_before=$(cat "$site/secrets/wp-salts")
hook_user=()
[ "$(id -u)" -eq 0 ] && hook_user=(setpriv --reuid=www-data --regid=www-data --clear-groups)
(cd /tmp && "${hook_user[@]}" "$site/rotate-credentials.sh") \
    >"$work/rotate.out" 2>"$work/rotate.err" || { cat "$work/rotate.err"; die "the rotate hook failed"; }
sed 's/: [A-Za-z0-9]\{20,\}$/: (secret)/; s/^/#   hook: /' "$work/rotate.out"
sed 's/^/#   hook stderr: /' "$work/rotate.err"
new_admin_password=$(line 'admin password' "$work/rotate.out")
new_app_password=$(line 'application password' "$work/rotate.out")
check "the hook names the admin it rotated" 'grep -qx "rotated: admin" "$work/rotate.out"'
check "it prints a new admin password" '[ -n "$new_admin_password" ] && [ "$new_admin_password" != "$admin_password" ]'
check "it prints a new application password" '[ -n "$new_app_password" ]'
check "it leaves the database password to lifeboat" '! grep -q "database user" "$work/rotate.out"'
check "it wrote new keys and salts" '[ "$(cat "$site/secrets/wp-salts")" != "$salts_before" ]'
check "no rotated: line carries a password" '! grep "^rotated:" "$work/rotate.out" | grep -q -e "$new_admin_password" -e "$new_app_password"'

say "the instances are restarted with the new database password (SIGTERM to each process group)"
stopped=("${pgids[@]}")
stop_instances
check "every process of both instances is gone after SIGTERM" 'groups_gone "${stopped[@]}"'
check "the old database password is refused" '! mariadb --no-defaults --socket="$LIFEBOAT_MARIADB_SOCKET" -uwordpress -p"$old_db_password" -e "SELECT 1" >/dev/null 2>&1'
check "the new one is accepted (socket)" 'mariadb --no-defaults --socket="$LIFEBOAT_MARIADB_SOCKET" -uwordpress -p"$new_db_password" -e "SELECT 1" wordpress >/dev/null'
check "and over TCP" 'mariadb --no-defaults -h127.0.0.1 -P"$LIFEBOAT_MARIADB_PORT" -uwordpress -p"$new_db_password" -e "SELECT 1" wordpress >/dev/null'
start_instances

say "what the old credentials open now"
check "the old login cookie no longer opens the dashboard" '[ "$(dashboard "$work/old.jar" "$a")" = 302 ]'
check "the old application password is refused" '[ "$(http "$a/wp-json/wp/v2/users/me" -u "admin:$app_password")" = 401 ]'
check "so is the one of the second setup run" '[ "$(http "$b/wp-json/wp/v2/users/me" -u "admin:$app_password2")" = 401 ]'
check "the old admin password no longer logs in" '! login "$work/stale.jar" "$admin_password"'
check "the new admin password logs in" 'login "$work/new.jar" "$new_admin_password"'
check "its cookie opens the dashboard" '[ "$(dashboard "$work/new.jar" "$b")" = 200 ]'
check "the new application password works" '[ "$(http "$b/wp-json/wp/v2/users/me" -u "admin:$new_app_password")" = 200 ]'
check "the post is still there" '[ "$(http "$a/wp-json/wp/v2/posts/$post_id")" = 200 ]'
check "the medium is still there" '[ "$(http "$b/wp-content/uploads/$media_path")" = 200 ] && cmp -s "$work/body" "$work/pixel.png"'
check "the planted .php is still refused" '[ "$(http "$a/wp-content/uploads/2020/01/shell.php")" = 403 ]'
say "left for the rewind (Lifeboat): the defaced title and the planted file"

echo "1..$checks"
if [ "$failures" -ne 0 ]; then
    echo "# $failures of $checks checks failed; logs in $work (KEEP=1 keeps them)"
    exit 1
fi
echo "# all $checks checks passed"

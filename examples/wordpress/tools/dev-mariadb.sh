#!/bin/sh
# A private MariaDB for working on this site without Lifeboat's (test.sh uses it): a data dir,
# socket and port of its own under DIR, a database and user for WordPress, nothing system-wide.
#
#   eval "$(tools/dev-mariadb.sh start DIR [PORT])"   # starts it, prints the export lines
#   tools/dev-mariadb.sh stop DIR
#
# The exported variables are the ones Lifeboat gives instances of a site with [state] mariadb:
# LIFEBOAT_MARIADB_SOCKET, _HOST, _PORT, _DATABASE, _USER, _PASSWORD. DIR must be traversable by
# whoever runs PHP (as root, the Apache workers' user), since the socket is in it.
set -eu
me=dev-mariadb.sh
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $me start|stop DIR [PORT]" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/mysqld.sock
pidfile=$dir/mysqld.pid
database=${WP_DB_NAME:-wordpress}
user=${WP_DB_USER:-wordpress}

case $cmd in
stop)
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    fi
    exit 0
    ;;
start) ;;
*) echo "usage: $me start|stop DIR [PORT]" >&2; exit 2 ;;
esac

port=${3:-$(cat "$dir/port" 2>/dev/null || python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 33306)}
# The server's admin is this OS user, through the socket only (unix_socket authentication).
me_user=$(id -un)
# As an ordinary user /usr/sbin is often not on PATH.
mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
run_as=""
[ "$(id -u)" -eq 0 ] && run_as="--user=root"
if [ ! -d "$dir/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$dir/data" $run_as --auth-root-authentication-method=socket \
        --auth-root-socket-user="$me_user" \
        --skip-test-db >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; exit 1; }
fi
if mariadb --no-defaults --socket="$sock" -u"$me_user" -e 'SELECT 1' >/dev/null 2>&1; then
    started=1   # already running
else
    started=""
fi
# Binary log on, row format, as Lifeboat runs it (so what is tried here behaves the same there).
[ -n "$started" ] || "$mariadbd" --no-defaults --datadir="$dir/data" --socket="$sock" --port="$port" \
    --bind-address=127.0.0.1 --pid-file="$pidfile" --log-error="$dir/error.log" \
    --log-bin="$dir/data/binlog" --binlog-format=ROW --server-id=1 --gtid-strict-mode=1 \
    --sync-binlog=1 --skip-name-resolve --character-set-server=utf8mb4 $run_as >/dev/null 2>&1 &
i=0
until mariadb --no-defaults --socket="$sock" -u"$me_user" -e 'SELECT 1' >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "$me: mariadbd did not start; see $dir/error.log" >&2
        tail -n 20 "$dir/error.log" >&2 || true
        exit 1
    fi
    sleep 0.1
done
chmod 0755 "$dir"
echo "$port" >"$dir/port"
if [ ! -s "$dir/app-password" ]; then
    (umask 077; head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9' | head -c 24 >"$dir/app-password")
fi
password=$(cat "$dir/app-password")
mariadb --no-defaults --socket="$sock" -u"$me_user" <<EOF
CREATE DATABASE IF NOT EXISTS \`$database\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$user'@'localhost' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS '$user'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON \`$database\`.* TO '$user'@'localhost';
GRANT ALL PRIVILEGES ON \`$database\`.* TO '$user'@'127.0.0.1';
EOF
cat <<EOF
export LIFEBOAT_MARIADB_SOCKET='$sock'
export LIFEBOAT_MARIADB_HOST='127.0.0.1'
export LIFEBOAT_MARIADB_PORT='$port'
export LIFEBOAT_MARIADB_DATABASE='$database'
export LIFEBOAT_MARIADB_USER='$user'
export LIFEBOAT_MARIADB_PASSWORD='$password'
EOF

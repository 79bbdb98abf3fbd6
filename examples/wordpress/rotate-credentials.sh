#!/bin/sh
# The [credentials] rotate hook (lifeboat.toml). Before a rewound copy of the site goes live,
# lifeboat runs this from the site dir, with the copy's state at the site's own paths (or in
# $LIFEBOAT_STATE_DIR) and the environment of the web process, its database included
# (LIFEBOAT_MARIADB_*). After it, whoever held an old password, login cookie, session or
# application password is locked out of the rewound site:
#
#   - every administrator gets a new random password;
#   - every stored session is destroyed and every pending password-reset key cleared;
#   - every application password is revoked, and the admin gets a new one;
#   - new keys and salts in secrets/wp-salts: every old login cookie and nonce stops working
#     even where a session survived;
#
# The database user's password is rotated by Lifeboat itself: `rewind --rotate-credentials`
# sets a new one on the restored copy's server before this runs, and this hook and the new
# instances get it as LIFEBOAT_MARIADB_PASSWORD (the old one is refused from then on).
#
# It prints on stdout, shown to the owner once and never stored by lifeboat:
#   rotated: LOGIN                      each administrator (lifeboat keeps these names)
#   admin user: LOGIN
#   admin password: PASSWORD
#   password for LOGIN: PASSWORD        other administrators
#   application password: PASSWORD
#   rotated: login cookies (new salts)
# and everything else on stderr. By hand, on the live site: export the LIFEBOAT_MARIADB_*
# variables and run ./rotate-credentials.sh (or: lifeboat exec -- ./rotate-credentials.sh).
set -eu
me=rotate-credentials.sh
site=$(cd "$(dirname "$0")" && pwd)
state=${LIFEBOAT_STATE_DIR:-$site}
salts=$state/secrets/wp-salts
if [ ! -f "$salts" ]; then
    echo "$me: no keys and salts at $salts; this is not a prepared WordPress site dir (setup.sh makes it)" >&2
    exit 1
fi
if [ -z "${LIFEBOAT_MARIADB_SOCKET:-}${LIFEBOAT_MARIADB_HOST:-}" ]; then
    echo "$me: LIFEBOAT_MARIADB_SOCKET or LIFEBOAT_MARIADB_HOST is not set; lifeboat sets them (with _DATABASE, _USER, _PASSWORD) for a site with [state] mariadb" >&2
    exit 2
fi

# The new salts are made first and put in place last, once the database part succeeded.
tmp=$(mktemp "$state/secrets/.wp-salts.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
    echo "# WordPress keys and salts (wp-config.php reads them; rotate-credentials.sh replaces them)"
    for name in AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT; do
        value=$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9' | head -c 64)
        if [ ${#value} -ne 64 ]; then
            echo "$me: could not read random bytes from /dev/urandom; nothing was changed" >&2
            exit 1
        fi
        echo "$name=$value"
    done
} >"$tmp"
chmod 0600 "$tmp"

cd "$site"
if ! php -d display_errors=stderr -d error_reporting='E_ALL & ~E_DEPRECATED & ~E_NOTICE' tools/rotate.php; then
    echo "$me: rotating WordPress's credentials failed (see above); the keys and salts were not changed" >&2
    exit 1
fi
mv -f "$tmp" "$salts"
trap - EXIT
echo "rotated: login cookies (new salts)"

#!/usr/bin/env bash
# Prepares this directory as a WordPress site for `lifeboat up`, on Debian 12:
#
#   1. installs the Debian packages it needs (as root; never starts their system services);
#   2. puts WordPress's code (Debian's /usr/share/wordpress) in public/ and its themes and plugins
#      in wp-content/, again whenever the package changed; makes wp-content/uploads and the keys
#      and salts in secrets/wp-salts (both [state]) when they are missing;
#   3. runs WordPress's installer on the site's database, when there is one: the database named by
#      LIFEBOAT_MARIADB_* in the environment, or, when lifeboat runs this site, Lifeboat's own
#      (through `lifeboat exec`). Prints on stdout
#        admin user: NAME
#        admin password: PASSWORD      (WP_ADMIN_PASSWORD, else generated; only when installing)
#        application password: PASSWORD   (a new one on every run: WordPress's REST API, Basic auth)
#
# Idempotent, non-interactive, from any working directory, as root or as an ordinary user (who
# must have the packages already). A second run keeps the installed site, its uploads, salts and
# passwords. Options:
#   --install-only   only step 3, on the database in the environment (`lifeboat exec` runs this)
#   --no-install     only steps 1 and 2
#   --settings-from-stdin   read WP_ADMIN_USER, WP_ADMIN_PASSWORD, WP_ADMIN_EMAIL, WP_TITLE and
#                    WP_URL as NAME=VALUE lines from stdin (how they reach it through `lifeboat
#                    exec`, whose environment is the site's, never on a command line)
# Environment: WP_ADMIN_USER (admin), WP_ADMIN_PASSWORD, WP_ADMIN_EMAIL, WP_TITLE, LIFEBOAT
# (the lifeboat binary, default: lifeboat on PATH, else this workspace's target/{release,debug}).
set -euo pipefail
me=setup.sh
site=$(cd "$(dirname "$0")" && pwd)
say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 1; }

mode=all
settings_stdin=""
for arg in "$@"; do
    case $arg in
        --install-only) mode=install ;;
        --settings-from-stdin) settings_stdin=1 ;;
        --no-install) mode=files ;;
        -h | --help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

settings=(WP_ADMIN_USER WP_ADMIN_PASSWORD WP_ADMIN_EMAIL WP_TITLE WP_URL)
if [ -n "$settings_stdin" ]; then
    while IFS= read -r kv; do
        for name in "${settings[@]}"; do
            [ "${kv%%=*}" = "$name" ] && export "$kv"
        done
    done
fi

# ---- 1. Packages ----------------------------------------------------------------------------
packages=(wordpress wordpress-theme-twentytwentythree apache2 libapache2-mod-php php-cli php-mysql
    php-gd php-xml php-mbstring php-curl php-zip php-intl mariadb-server mariadb-client
    mariadb-backup curl)

install_packages() {
    local missing=() p
    for p in "${packages[@]}"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing Debian packages: ${missing[*]}; as root run: apt-get install --no-install-recommends ${missing[*]} (or run this script as root)"
    fi
    say "installing ${missing[*]}"
    # The packages' system services (apache2 on port 80, mariadb on 3306) are never started: while
    # they install, a policy-rc.d refuses every start; it is removed afterwards (one already in
    # place is left alone).
    local own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\n# setup.sh (examples/wordpress): no service starts while packages install\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
    fi
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >&2
    }
    if ! apt_install; then
        apt-get update -qq >&2
        apt_install
    fi
    if [ -n "$own_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
}

# ---- 2. The site dir -------------------------------------------------------------------------
random_token() { # $1 characters of [A-Za-z0-9] from /dev/urandom
    local s=""
    while [ ${#s} -lt "$1" ]; do
        s+=$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${s:0:$1}"
}

# NAME=VALUE lines read by wp-config.php; rotate-credentials.sh writes the same format.
write_salts() { # $1 = file
    local tmp
    tmp=$(mktemp "$(dirname "$1")/.wp-salts.XXXXXX")
    {
        echo "# WordPress keys and salts (wp-config.php reads them; rotate-credentials.sh replaces them)"
        for name in AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT; do
            echo "$name=$(random_token 64)"
        done
    } >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$1"
}

prepare_site() {
    local src=/usr/share/wordpress version stamp
    [ -f "$src/wp-settings.php" ] || die "no WordPress in $src (package wordpress)"
    version=$(dpkg-query -W -f='${Version} ' wordpress wordpress-theme-twentytwentythree 2>/dev/null | tr '\n' ' ')
    stamp="$version"
    if [ "$(cat "$site/public/.lifeboat-wordpress-version" 2>/dev/null)" != "$stamp" ]; then
        say "copying WordPress ($version) from $src to $site/public"
        local new="$site/.public.new" old="$site/.public.old"
        rm -rf "$new" "$old"
        mkdir -p "$new"
        # -L: Debian's copy links to shared libraries (getID3, underscore) by relative paths that
        # would break here. wp-config.php is ours (one level up); wp-content is next to public/.
        cp -RL "$src/." "$new/"
        rm -rf "$new/wp-content" "$new/wp-config.php" "$new/wp-config-sample.php" "$new/.htaccess"
        chmod -R u+rwX,go+rX,go-w "$new"
        echo "$stamp" >"$new/.lifeboat-wordpress-version"
        # Swap in one rename each, so a running site sees either copy whole.
        [ -d "$site/public" ] && mv "$site/public" "$old"
        mv "$new" "$site/public"
        rm -rf "$old"
        # Themes and plugins from the packages, each replaced whole; others are left alone.
        local kind entry
        for kind in themes plugins; do
            mkdir -p "$site/wp-content/$kind"
            for entry in "$src/wp-content/$kind"/*; do
                [ -e "$entry" ] || continue
                rm -rf "$site/wp-content/$kind/.new"
                cp -RL "$entry" "$site/wp-content/$kind/.new"
                chmod -R u+rwX,go+rX,go-w "$site/wp-content/$kind/.new"
                rm -rf "$site/wp-content/$kind/$(basename "$entry")"
                mv "$site/wp-content/$kind/.new" "$site/wp-content/$kind/$(basename "$entry")"
            done
        done
    fi
    chmod go+rX "$site" "$site/wp-content" "$site/wp-content/mu-plugins" "$site/wp-content/mu-plugins/lifeboat.php" \
        "$site/wp-config.php" "$site/lifeboat-health.php" "$site/tools" "$site/tools"/*.php 2>/dev/null || true
    # The state: uploads (served) and the keys and salts (never served). Lifeboat gives both to
    # the site's user on `up`.
    mkdir -p "$site/wp-content/uploads"
    if [ ! -s "$site/secrets/wp-salts" ]; then
        mkdir -p -m 0700 "$site/secrets"
        write_salts "$site/secrets/wp-salts"
        say "made new keys and salts in $site/secrets/wp-salts"
    fi
}

# ---- 3. WordPress's installer ----------------------------------------------------------------
find_lifeboat() {
    if [ -n "${LIFEBOAT:-}" ]; then echo "$LIFEBOAT"; return; fi
    if command -v lifeboat >/dev/null 2>&1; then command -v lifeboat; return; fi
    local root target
    root=$(cd "$site/../.." && pwd)
    target=${CARGO_TARGET_DIR:-$root/target}
    for bin in "$target/release/lifeboat" "$target/debug/lifeboat"; do
        [ -x "$bin" ] && { echo "$bin"; return; }
    done
    return 1
}

install_wordpress() {
    if [ -n "${LIFEBOAT_MARIADB_SOCKET:-}${LIFEBOAT_MARIADB_HOST:-}" ]; then
        cd "$site"
        php tools/wait-db.php 60 || exit 1
        php -d display_errors=stderr -d error_reporting='E_ALL & ~E_DEPRECATED & ~E_NOTICE' tools/install.php
        return
    fi
    [ "$mode" = install ] && die "no database: LIFEBOAT_MARIADB_SOCKET or LIFEBOAT_MARIADB_HOST must be set (lifeboat exec sets them for a site with [state] mariadb)"
    local lifeboat
    if lifeboat=$(find_lifeboat) && "$lifeboat" -C "$site" status >/dev/null 2>&1; then
        say "lifeboat runs this site: installing WordPress into its database (lifeboat exec)"
        local name
        for name in "${settings[@]}"; do
            if [ -n "${!name:-}" ]; then printf '%s=%s\n' "$name" "${!name}"; fi
        done | "$lifeboat" -C "$site" exec -- ./setup.sh --install-only --settings-from-stdin
        exit
    fi
    say "the site dir is ready; WordPress is installed into the site's database once it runs:"
    say "  lifeboat up $site      (then, in another terminal, $site/setup.sh again)"
    say "or run this with LIFEBOAT_MARIADB_SOCKET (or _HOST/_PORT), _DATABASE, _USER, _PASSWORD set."
}

case $mode in
    all)
        install_packages
        prepare_site
        install_wordpress
        ;;
    files)
        install_packages
        prepare_site
        ;;
    install) install_wordpress ;;
esac

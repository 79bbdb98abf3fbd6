#!/bin/sh
# The [credentials] rotate hook (see lifeboat.toml). Before a rewound copy of the site goes live,
# lifeboat runs this from the site dir with $LIFEBOAT_STATE_DIR set to the restored copy. It gives
# that copy a new random admin password and signs every session out, so whoever knew the old
# password or held a session cookie is locked out of the rewound site. It prints one line,
#   new admin password: PASSWORD
# on stdout, which lifeboat shows the owner once; everything else goes to stderr.
# By hand: LIFEBOAT_STATE_DIR=/path/to/site ./rotate-credentials.sh (the dir holding data/).
set -eu
me=rotate-credentials.sh
if [ -z "${LIFEBOAT_STATE_DIR:-}" ]; then
    echo "$me: LIFEBOAT_STATE_DIR is not set; lifeboat sets it to the restored copy when it runs the [credentials] rotate hook. To rotate by hand, set it to the dir that holds data/guestbook.db, e.g. LIFEBOAT_STATE_DIR=\$PWD $0" >&2
    exit 2
fi
data=$LIFEBOAT_STATE_DIR/data
if [ ! -f "$data/guestbook.db" ]; then
    echo "$me: no guestbook database at $data/guestbook.db; LIFEBOAT_STATE_DIR must be a copy of the site's state (the dir that holds data/guestbook.db)" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
bin=$("$here/guestbook-bin.sh")
# 128 random bits as 32 hex characters.
password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
if [ ${#password} -ne 32 ]; then
    echo "$me: could not read 16 random bytes from /dev/urandom; the password was not changed" >&2
    exit 1
fi
if ! GUESTBOOK_DATA=$data GUESTBOOK_ADMIN_PASSWORD=$password "$bin" set-admin-password >&2; then
    echo "$me: setting the new admin password in $data/guestbook.db failed (see above); the copy still has its old password" >&2
    exit 1
fi
echo "new admin password: $password"

#!/bin/sh
# Runs the guestbook binary built in this workspace (see guestbook-bin.sh for which one).
# Lifeboat runs this from the site dir with $PORT set; `exec` keeps the pid (and the signals
# lifeboat sends) the guestbook's own.
# The data lives in $GUESTBOOK_DATA; when that is unset and lifeboat gave a state dir
# ($LIFEBOAT_STATE_DIR: the site dir, or after a rewind the restored copy), in its data/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$("$here/guestbook-bin.sh")
if [ -z "${GUESTBOOK_DATA:-}" ] && [ -n "${LIFEBOAT_STATE_DIR:-}" ]; then
    export GUESTBOOK_DATA="$LIFEBOAT_STATE_DIR/data"
fi
exec "$bin" "$@"

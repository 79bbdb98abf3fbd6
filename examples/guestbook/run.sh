#!/bin/sh
# Runs the guestbook binary built in this workspace: the newest of target/release/guestbook and
# target/debug/guestbook. Lifeboat runs this from the site dir with $PORT set; `exec` keeps the
# pid (and the signals lifeboat sends) the guestbook's own.
#   GUESTBOOK_BIN=/path/to/guestbook   use exactly this binary
#   CARGO_TARGET_DIR=DIR               look in DIR instead of <workspace>/target
set -eu
if [ -n "${GUESTBOOK_BIN:-}" ]; then
    exec "$GUESTBOOK_BIN" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
newest() {
    best=""
    for candidate in "$1/release/guestbook" "$1/debug/guestbook"; do
        if [ -x "$candidate" ] && { [ -z "$best" ] || [ "$candidate" -nt "$best" ]; }; then
            best=$candidate
        fi
    done
    echo "$best"
}
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
best=$(newest "$target")
if [ -z "$best" ] && [ "$target" != "$root/target" ]; then
    best=$(newest "$root/target")
fi
if [ -z "$best" ]; then
    echo "run.sh: no guestbook binary under $target; build it first: cargo build --release -p guestbook" >&2
    exit 127
fi
exec "$best" "$@"

#!/bin/sh
# Prints the guestbook binary to run, for run.sh and rotate-credentials.sh:
#   GUESTBOOK_BIN=/path/to/guestbook   exactly this binary
#   otherwise the newest of target/release/guestbook and target/debug/guestbook, in
#   $CARGO_TARGET_DIR if set (falling back to <workspace>/target), else in <workspace>/target.
# Exits 127 with what to do when there is none.
set -eu
if [ -n "${GUESTBOOK_BIN:-}" ]; then
    echo "$GUESTBOOK_BIN"
    exit 0
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
    echo "guestbook: no guestbook binary under $target; build it first: cargo build --release -p guestbook" >&2
    exit 127
fi
echo "$best"

#!/bin/sh
# Runs the guestbook binary built in this workspace, whichever of release or debug is newest.
# Lifeboat runs this from the site dir with $PORT set; `exec` keeps the pid (and signals) the
# guestbook's own. Honours CARGO_TARGET_DIR if the workspace was built with one.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
best=""
for candidate in "$target/release/guestbook" "$target/debug/guestbook" \
                 "$root/target/release/guestbook" "$root/target/debug/guestbook"; do
    if [ -x "$candidate" ] && { [ -z "$best" ] || [ "$candidate" -nt "$best" ]; }; then
        best=$candidate
    fi
done
if [ -z "$best" ]; then
    echo "run.sh: no guestbook binary under $target; build it first: cargo build --release -p guestbook" >&2
    exit 127
fi
exec "$best" "$@"

#!/bin/sh
# Objects the timeline worker writes per destination, by kind, extrapolated to one hour.
# Method and last results: docs/timeline-format.md, "Objects written".
#
#   bench/timeline-objects.sh              # all scenarios
#   bench/timeline-objects.sh busy 120     # one scenario: quiet | idle | busy | compact, seconds
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p lifeboat-timeline --example objects
bin="$CARGO_TARGET_DIR/release/examples/objects"
if [ $# -gt 0 ]; then
    exec "$bin" "$@"
fi
"$bin" quiet 120    # one write a minute (every other one with a 2 KiB upload), time-scaled x60
"$bin" idle 60      # nothing written
"$bin" busy 120     # 200 inserts/s through rusqlite
"$bin" compact 60   # 100 inserts/s, then everything compacted

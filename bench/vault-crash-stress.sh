#!/usr/bin/env bash
# Longer crash stress for the vault: runs the SIGKILL crash test (30+ killed backups and 10+
# killed prunes per run, each followed by verify and byte-for-byte restores) N times.
#   bench/vault-crash-stress.sh [N]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
for i in $(seq 1 "$N"); do
    echo "== crash stress run $i/$N" >&2
    cargo test -p lifeboat --test vault_crash -- --nocapture 2>&1 | grep -E "seed|test result|panicked" || exit 1
done

#!/usr/bin/env bash
# Benchmark: lifeboat's vault against restic (Debian package) on the same reproducible ~1 GiB
# dataset on the same machine. Measures first backup, second backup after changing 1% of the
# files, restore, and bytes stored; prints the ratios. Not a test: numbers depend on the machine.
#
#   bench/vault-vs-restic.sh [WORKDIR]      (default WORKDIR: /tmp/lifeboat-vault-bench)
#
# Env: LIFEBOAT_BIN (default: target/release/lifeboat, built if missing), SIZE_MB (default 1024),
# ROUNDS (default 1): first backups (each into a fresh repository) and restores are repeated
# ROUNDS times, alternating the two tools, and the medians are reported (use 3 or more on a
# machine shared with other work).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/lifeboat-vault-bench}
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-1}

if ! command -v restic >/dev/null 2>&1; then
    echo "installing restic from Debian packages..." >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get install -y restic >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y restic >/dev/null; }
fi
LIFEBOAT_BIN=${LIFEBOAT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeboat}
if [ ! -x "$LIFEBOAT_BIN" ]; then
    echo "building lifeboat (release)..." >&2
    cargo build --release -p lifeboat >&2
fi

rm -rf "$WORK"
mkdir -p "$WORK"
DATA=$WORK/data

# Reproducible bytes: AES-CTR keystream of a fixed key (fast, incompressible, same every run).
stream() { # seed bytes
    openssl enc -aes-256-ctr -nosalt -pass "pass:lifeboat-$1" -pbkdf2 -iter 1 </dev/zero 2>/dev/null | head -c "$2"
}

echo "generating ~${SIZE_MB} MiB dataset in $DATA..." >&2
python3 - "$DATA" "$SIZE_MB" <<'PY'
import os, random, sys, subprocess
root, size_mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 10))) for _ in range(5000)]
def write(rel, data):
    p = os.path.join(root, rel); os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, 'wb') as f: f.write(data)
def stream(seed, n):
    return subprocess.run(f"openssl enc -aes-256-ctr -nosalt -pass pass:lifeboat-{seed} -pbkdf2 -iter 1 </dev/zero 2>/dev/null | head -c {n}",
                          shell=True, check=True, capture_output=True).stdout
budget = size_mb << 20
# 20%: many small text files (pages, posts): 2-30 KiB each.
small, i = budget // 5, 0
while small > 0:
    n = rng.randint(2048, 30720)
    text = ' '.join(rng.choice(words) for _ in range(n // 6)).encode()[:n]
    write(f"site/posts/{i // 500:03d}/post-{i}.html", text); small -= len(text); i += 1
# 40%: large binaries (uploads), incompressible.
big = budget * 2 // 5; j = 0
while big > 0:
    n = min(big, rng.randint(20, 120) << 20)
    write(f"uploads/video-{j}.bin", stream(f"big{j}", n)); big -= n; j += 1
# 15%: duplicated files (the same upload stored twice under other names).
dup = budget * 3 // 20; k = 0
while dup > 0:
    n = min(dup, 8 << 20)
    data = stream(f"dup{k}", n)
    write(f"uploads/photos/a/photo-{k}.jpg", data); write(f"uploads/photos/copy/photo-{k}.jpg", data)
    dup -= 2 * n; k += 1
# 25%: a compressible part (logs, a database dump).
comp = budget // 4; m = 0
while comp > 0:
    lines = []
    size = 0
    while size < (16 << 20) and size < comp:
        l = f"2026-11-{rng.randint(1,28):02d} GET /{rng.choice(words)}/{rng.choice(words)} 200 {rng.randint(100,99999)}\n"
        lines.append(l); size += len(l)
    data = ''.join(lines).encode()
    write(f"logs/access-{m}.log", data); comp -= len(data); m += 1
PY
FILES=$(find "$DATA" -type f | wc -l)
BYTES=$(du -sb "$DATA" | cut -f1)
echo "dataset: $FILES files, $BYTES bytes" >&2

change_one_percent() {
    # Deterministically rewrite every 100th file (sorted): small files get a line appended,
    # large ones get 4 KiB overwritten in the middle.
    find "$DATA" -type f | sort | awk 'NR % 100 == 0' | while read -r f; do
        sz=$(stat -c %s "$f")
        if [ "$sz" -lt 1048576 ]; then echo "changed $(basename "$f")" >>"$f"
        else stream "chg-$(basename "$f")" 4096 | dd of="$f" bs=4096 seek=$((sz / 8192)) conv=notrunc status=none; fi
    done
}

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

export LIFEBOAT_PASSWORD=bench-password RESTIC_PASSWORD=bench-password
export LIFEBOAT_SPOOL=$WORK/spool

# --- lifeboat ---
# First backups: with ROUNDS=N each tool backs up the same data into a fresh repository N
# times, alternating, and the medians are compared (a single timing on a shared machine says
# little). The last repositories of each tool are kept for the rest of the run.
LB_B1L=(); R_B1L=()
for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/lb-repo" "$LIFEBOAT_SPOOL"
    "$LIFEBOAT_BIN" vault init --dest "$WORK/lb-repo" >/dev/null
    sync
    t0=$(now); "$LIFEBOAT_BIN" backup --repo "$WORK/lb-repo" "$DATA" >/dev/null; t1=$(now)
    LB_B1L+=("$(elapsed "$t0" "$t1")")
    rm -rf "$WORK/restic-repo"
    restic init --repo "$WORK/restic-repo" >/dev/null
    sync
    t0=$(now); restic backup --repo "$WORK/restic-repo" "$DATA" >/dev/null; t1=$(now)
    R_B1L+=("$(elapsed "$t0" "$t1")")
done
echo "first backup rounds (s): lifeboat ${LB_B1L[*]}; restic ${R_B1L[*]}" >&2

change_one_percent
t0=$(now); "$LIFEBOAT_BIN" backup --repo "$WORK/lb-repo" "$DATA" >/dev/null; t1=$(now)
LB_B2=$(elapsed "$t0" "$t1")
LB_STORED=$(du -sb "$WORK/lb-repo" | cut -f1)
t0=$(now); restic backup --repo "$WORK/restic-repo" "$DATA" >/dev/null; t1=$(now)
R_B2=$(elapsed "$t0" "$t1")
R_STORED=$(du -sb "$WORK/restic-repo" | cut -f1)

LB_RL=(); LB_RSL=(); R_RL=(); R_RSL=()
for round in $(seq 1 "$ROUNDS"); do
    sync
    t0=$(now); "$LIFEBOAT_BIN" restore --repo "$WORK/lb-repo" latest --to "$WORK/lb-restore" >/dev/null; t1=$(now)
    # lifeboat's restore is durable when it returns (it syncs); measure what a sync still finds.
    sync; t2=$(now)
    LB_RL+=("$(elapsed "$t0" "$t1")"); LB_RSL+=("$(elapsed "$t0" "$t2")")
    diff -r "$DATA" "$WORK/lb-restore" >/dev/null || { echo "lifeboat restore differs from the data!" >&2; exit 1; }
    rm -rf "$WORK/lb-restore"
    sync
    t0=$(now); restic restore --repo "$WORK/restic-repo" latest --target "$WORK/restic-restore" >/dev/null; t1=$(now)
    # restic returns before its files are on disk; the same guarantee as lifeboat needs a sync.
    sync; t2=$(now)
    R_RL+=("$(elapsed "$t0" "$t1")"); R_RSL+=("$(elapsed "$t0" "$t2")")
    rm -rf "$WORK/restic-restore"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
LB_B1=$(median "${LB_B1L[@]}"); R_B1=$(median "${R_B1L[@]}")
LB_R=$(median "${LB_RL[@]}"); LB_RS=$(median "${LB_RSL[@]}")
R_R=$(median "${R_RL[@]}"); R_RS=$(median "${R_RSL[@]}")
echo "restore rounds (s): lifeboat ${LB_RL[*]}; restic ${R_RL[*]}" >&2

python3 - <<PY
rows = [("first backup (s)", $LB_B1, $R_B1), ("second backup, 1% changed (s)", $LB_B2, $R_B2),
        ("restore (s)", $LB_R, $R_R), ("restore, durable on disk (s)", $LB_RS, $R_RS)]
print(f"first backup and restore: median of $ROUNDS round(s)")
print(f"dataset: $FILES files, {$BYTES/2**20:.0f} MiB; restic {'$(restic version | cut -d" " -f2)'}; cores: {__import__('os').cpu_count()}")
print(f"{'':34}{'lifeboat':>10}{'restic':>10}{'speedup':>10}")
for name, lb, r in rows:
    print(f"{name:34}{lb:>10.2f}{r:>10.2f}{r/lb:>9.2f}x")
print(f"{'bytes stored (MiB)':34}{$LB_STORED/2**20:>10.1f}{$R_STORED/2**20:>10.1f}{$LB_STORED/$R_STORED:>9.3f} (lifeboat/restic)")
PY

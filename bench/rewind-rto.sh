#!/usr/bin/env bash
# Recovery time of a whole site: `lifeboat rewind` of a guestbook whose database and uploads
# are DB_MIB and UPLOADS_MIB (default 1024 each, the issue's 1 GiB + 1 GiB), from the command
# to the front door serving the restored copy. Also prints how long the first checkpoint took.
#
#   bash bench/rewind-rto.sh                 # 1 GiB + 1 GiB
#   DB_MIB=256 UPLOADS_MIB=256 bash bench/rewind-rto.sh
#
# Uses release builds (CARGO_TARGET_DIR is honoured) and a scratch dir under /tmp
# (needs about 4x the data size free). Goal: under 10 s for 1 GiB + 1 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DB_MIB=${DB_MIB:-1024}
UPLOADS_MIB=${UPLOADS_MIB:-1024}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p lifeboat -p guestbook
L=$target/release/lifeboat
G=$(realpath "$target/release/guestbook")
scratch=$(mktemp -d /tmp/lifeboat-rto.XXXXXX)
site=$scratch/site
trap 'kill $(cat "$scratch/pid" 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$scratch"' EXIT
mkdir -p "$site/data/uploads"

echo "making a ${DB_MIB} MiB database and ${UPLOADS_MIB} MiB of uploads (incompressible)..."
python3 - "$site/data" "$DB_MIB" "$UPLOADS_MIB" <<'EOF'
import os, sqlite3, sys
data, db_mib, up_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(os.path.join(data, "guestbook.db"))
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE IF NOT EXISTS ballast (id INTEGER PRIMARY KEY, data BLOB)")
for i in range(db_mib):
    c.execute("INSERT INTO ballast (data) VALUES (?)", (os.urandom(1 << 20),))
    if i % 64 == 63:
        c.commit()
c.commit()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
for i in range(up_mib // 4):
    with open(os.path.join(data, "uploads", f"photo-{i:05}.jpg"), "wb") as f:
        f.write(os.urandom(4 << 20))
EOF

cat > "$site/lifeboat.toml" <<EOF
[site]
name = "rto"
[processes.web]
command = "$G"
replicas = 2
health = { path = "/healthz", interval = "100ms", timeout = "2s" }
[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]
[proxy]
listen = "127.0.0.1:0"
[vault]
destinations = ["$scratch/vault"]
segment_interval = "1s"
EOF

start=$(date +%s.%N)
"$L" up "$site" > "$scratch/up.log" 2>&1 &
echo $! > "$scratch/pid"
until "$L" -C "$site" status --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if (d.get("capture") or {}).get("last_checkpoint") else 1)' 2>/dev/null; do
    sleep 0.5
done
first=$(python3 -c "import time; print(round(time.time() - $start, 1))")
echo "first checkpoint stored ${first} s after lifeboat up"
proxy=$("$L" -C "$site" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["proxy"])')
curl -s -XPOST -d text=hello "$proxy/entries" > /dev/null
sleep 2

t0=$(date +%s.%N)
"$L" -C "$site" rewind --to latest --yes --json > "$scratch/rewind.json"
t1=$(date +%s.%N)
curl -sf "$proxy/healthz" > /dev/null
rto=$(python3 -c "print(round($t1 - $t0, 2))")
state=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "$scratch/rewind.json")
echo "rewind of ${DB_MIB} MiB database + ${UPLOADS_MIB} MiB uploads: ${rto} s from the command to serving ${state} (goal < 10 s)"
"$L" -C "$site" down > /dev/null

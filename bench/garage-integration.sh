#!/usr/bin/env bash
# Integration check: the vault's S3 destination against a real single-node Garage server (the
# S3-compatible store self-hosters run across zones). CI runs the S3 tests against the smaller
# s3s-fs (scripts/install-test-deps); this script is the Garage run, by hand, through the real
# `lifeboat` CLI. Not a benchmark: it prints PASS/FAIL per step and exits 1 on any failure.
#
#   bench/garage-integration.sh [WORKDIR]    (default WORKDIR: /tmp/lifeboat-garage-integration)
#
# Steps: install Garage if missing (cargo install, cached), build lifeboat and the guestbook
# (release), start Garage on loopback with fresh data/meta dirs, create a bucket and a key, make a
# real guestbook data dir (SQLite database + uploads) plus a large random file, then:
#   vault init (local dir + Garage, --quorum 1), backup, snapshots --json, restore from Garage
#   only, diff -r, vault verify --read-data on Garage; stop Garage, change the data, backup (must
#   succeed into the spool), status shows Garage behind; start Garage, vault sync, status shows
#   0 objects behind, restore the second snapshot from Garage only and diff -r.
#
# Env: GARAGE_BIN (a garage binary to use instead of installing one), GARAGE_VERSION (2.5.0),
# GARAGE_ROOT (install root, default /tmp/lifeboat-tools-build/garage: the binary goes to
# $GARAGE_ROOT/bin/garage, the build dir to $GARAGE_ROOT/target, so a second run does not
# rebuild), CARGO_TARGET_DIR (where lifeboat is built, default target/), LIFEBOAT_BIN and
# GUESTBOOK_BIN (use these binaries, build nothing), BIG_MB (size of the large file, 24).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/lifeboat-garage-integration}
GARAGE_VERSION=${GARAGE_VERSION:-2.5.0}
GARAGE_ROOT=${GARAGE_ROOT:-/tmp/lifeboat-tools-build/garage}
BIG_MB=${BIG_MB:-24}
BUCKET=lifeboat-it
FAILED=0

say() { echo "== $*" >&2; }
pass() { printf 'PASS  %s\n' "$1"; }
fail() {
    printf 'FAIL  %s\n' "$1"
    [ -n "${2:-}" ] && [ -s "$2" ] && sed 's/^/      | /' "$2" | tail -n 30
    FAILED=1
}
# step NAME CMD...: runs CMD with its output in $WORK/logs/<n>.log, prints PASS/FAIL with the time.
# Each step needs the ones before it: after the first failure the rest are listed as SKIP.
STEP_N=0
step() {
    local name=$1
    shift
    STEP_N=$((STEP_N + 1))
    if [ "$FAILED" != 0 ]; then
        printf 'SKIP  %s\n' "$name"
        return
    fi
    local log
    log=$(printf '%s/logs/%02d.log' "$WORK" "$STEP_N")
    local t0=$SECONDS
    if "$@" >"$log" 2>&1; then
        pass "$name ($((SECONDS - t0)) s)"
    else
        fail "$name ($((SECONDS - t0)) s; log: $log)" "$log"
    fi
}
# wait_until SECONDS WHAT CMD...: polls CMD until it succeeds or the deadline passes.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "gave up after ${limit} s waiting for: $what" >&2
            return 1
        fi
        sleep 0.2
    done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- Garage binary --------------------------------------------------------------------------
if [ -z "${GARAGE_BIN:-}" ]; then
    if command -v garage >/dev/null 2>&1; then
        GARAGE_BIN=$(command -v garage)
    elif [ -x "$ROOT/.tools/bin/garage" ]; then
        GARAGE_BIN=$ROOT/.tools/bin/garage
    else
        GARAGE_BIN=$GARAGE_ROOT/bin/garage
    fi
fi
if [ ! -x "$GARAGE_BIN" ]; then
    say "installing Garage $GARAGE_VERSION into $GARAGE_ROOT (cargo install, niced; 15-30 min on 2 cores)"
    mkdir -p "$GARAGE_ROOT"
    CARGO_TARGET_DIR=$GARAGE_ROOT/target nice -n 19 \
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$GARAGE_ROOT" >&2
    GARAGE_BIN=$GARAGE_ROOT/bin/garage
fi
say "garage: $GARAGE_BIN ($("$GARAGE_BIN" --version 2>/dev/null | head -n 1))"

# ---- lifeboat -------------------------------------------------------------------------------
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
case $BIN_DIR in /*) ;; *) BIN_DIR=$ROOT/$BIN_DIR ;; esac
if [ -z "${LIFEBOAT_BIN:-}" ] || [ -z "${GUESTBOOK_BIN:-}" ]; then
    say "building lifeboat and the guestbook (release, ${CARGO_TARGET_DIR:-target})"
    nice -n 19 cargo build --release -p lifeboat -p guestbook >&2
fi
LIFEBOAT=${LIFEBOAT_BIN:-$BIN_DIR/lifeboat}
GUESTBOOK=${GUESTBOOK_BIN:-$BIN_DIR/guestbook}
say "lifeboat: $LIFEBOAT ($("$LIFEBOAT" --version))"

# ---- fresh work dir ---------------------------------------------------------------------------
GARAGE_PID=""
GUESTBOOK_PID=""
cleanup() {
    [ -n "$GUESTBOOK_PID" ] && kill "$GUESTBOOK_PID" 2>/dev/null || true
    [ -n "$GARAGE_PID" ] && kill "$GARAGE_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
if [ -e "$WORK" ] && [ ! -e "$WORK/.lifeboat-garage-integration" ] && [ -n "$(ls -A "$WORK")" ]; then
    echo "$WORK exists, is not empty and is not a previous run of this script: name another WORKDIR" >&2
    exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/garage/meta" "$WORK/garage/data"
touch "$WORK/.lifeboat-garage-integration"
export LIFEBOAT_PASSWORD=garage-integration-password
export LIFEBOAT_SPOOL=$WORK/spool
unset LIFEBOAT_REPO AWS_REGION AWS_PROFILE AWS_SESSION_TOKEN || true

# ---- Garage: single node on loopback -----------------------------------------------------------
S3_PORT=$(free_port)
RPC_PORT=$(free_port)
REGION=garage
CONF=$WORK/garage/garage.toml
cat >"$CONF" <<EOF
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "lmdb"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
EOF
chmod 600 "$CONF"
garage() { "$GARAGE_BIN" -c "$CONF" "$@"; }
s3_answers() { # any HTTP answer (an anonymous request gets 403) means the S3 API is serving
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/" || true)
    [ "$code" != "000" ]
}
start_garage() {
    "$GARAGE_BIN" -c "$CONF" server >>"$WORK/garage/server.log" 2>&1 &
    GARAGE_PID=$!
    wait_until 120 "garage status (the node's RPC)" garage status &&
        wait_until 60 "Garage's S3 API on port $S3_PORT" s3_answers
}
stop_garage() {
    kill "$GARAGE_PID" && wait "$GARAGE_PID" 2>/dev/null || true
    GARAGE_PID=""
    ! s3_answers
}
setup_garage() { # (functions run by `step` chain with && : set -e does not apply inside `if`)
    local node key_id secret
    node=$(garage node id -q) && node=${node%%@*} &&
        garage layout assign -z dc1 -c 1G "$node" &&
        garage layout apply --version 1 &&
        garage bucket create "$BUCKET" &&
        # An imported key (Garage's format: GK + 24 hex, secret 64 hex) so the script knows it.
        key_id=GK$(openssl rand -hex 12) && secret=$(openssl rand -hex 32) &&
        garage key import --yes -n lifeboat-it "$key_id" "$secret" &&
        garage bucket allow --read --write --owner "$BUCKET" --key lifeboat-it &&
        garage bucket info "$BUCKET" &&
        printf 'export AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=%s\n' "$key_id" "$secret" >"$WORK/garage/env"
}

step "garage: start a single node (127.0.0.1:$S3_PORT, region $REGION)" start_garage
step "garage: layout, bucket $BUCKET, key with read/write/owner on it" setup_garage
if [ "$FAILED" != 0 ]; then
    echo "Garage did not come up; its log: $WORK/garage/server.log" >&2
    tail -n 30 "$WORK/garage/server.log" >&2 || true
    exit 1
fi
# shellcheck disable=SC1091
. "$WORK/garage/env"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

# ---- a real site data dir: the guestbook's SQLite database and uploads, plus a large file --------
DATA=$WORK/site/data
mkdir -p "$DATA"
make_guestbook_data() {
    PORT=0 GUESTBOOK_DATA=$DATA GUESTBOOK_ADMIN_PASSWORD=it-admin "$GUESTBOOK" >"$WORK/guestbook.log" 2>&1 &
    GUESTBOOK_PID=$!
    wait_until 30 "the guestbook's listening line" grep -q 'listening on http://' "$WORK/guestbook.log" || return 1
    local url i
    url=$(grep -o 'http://[0-9.:]*' "$WORK/guestbook.log" | head -n 1)
    for i in $(seq 1 50); do
        curl -sSf -o /dev/null --data-urlencode "text=entry $i: backed up to Garage" "$url/entries" || return 1
    done
    head -c 300000 /dev/urandom >"$WORK/photo.jpg" &&
        curl -sSf -o /dev/null -F "file=@$WORK/photo.jpg;filename=photo.jpg" "$url/upload" &&
        curl -sSf -o /dev/null -F "file=@$ROOT/README.md;filename=readme.txt" "$url/upload" || return 1
    kill "$GUESTBOOK_PID" && wait "$GUESTBOOK_PID" 2>/dev/null
    GUESTBOOK_PID=""
    mkdir -p "$DATA/big" "$DATA/empty-dir" &&
        head -c $((BIG_MB << 20)) /dev/urandom >"$DATA/big/archive.bin" &&
        : >"$DATA/big/empty-file" &&
        find "$DATA" -type f -exec ls -l {} + &&
        [ -s "$DATA/guestbook.db" ]
}
step "site data: guestbook database with 50 entries, 2 uploads, a ${BIG_MB} MiB file" make_guestbook_data

LOCAL=$WORK/vault-local
S3="s3://$BUCKET/blog?endpoint=http://127.0.0.1:$S3_PORT&region=$REGION"
lb() { (cd "$WORK" && "$LIFEBOAT" "$@"); }
# restore_from_garage SNAPSHOT DIR: the local destination is moved away meanwhile, so every byte
# must come from Garage (restore would otherwise re-read a failed blob from the other copy).
restore_from_garage() {
    local rc=0
    mv "$LOCAL" "$LOCAL.away" || return 1
    lb restore --repo "$S3" "$1" --to "$2" || rc=$?
    mv "$LOCAL.away" "$LOCAL" || rc=1
    return $rc
}
# verify_garage: vault verify --read-data of the Garage destination; its report must show it
# reachable, with packs read and no problem.
verify_garage() {
    local rc=0
    lb vault verify --repo "$S3" --read-data --destination "$S3" --json >"$WORK/verify.json" || rc=$?
    cat "$WORK/verify.json"
    [ "$rc" = 0 ] && python3 - "$WORK/verify.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert not r.get("problems"), f"problems: {r['problems']}"
s3 = [d for d in r["destinations"] if d["url"].startswith("s3://")]
assert len(s3) == 1, f"expected the Garage destination in {r['destinations']}"
d = s3[0]
assert d["reachable"] and not d["problems"] and d["packs_checked"] > 0, f"Garage: {d}"
PY
}

step "vault init --dest <local> --dest <garage> --quorum 1" lb vault init --dest "$LOCAL" --dest "$S3" --quorum 1
# backup_into FILE: backs up the data dir; the new snapshot's id goes to FILE.
backup_into() { lb backup --repo "$LOCAL" "$DATA" >"$1" && cat "$1"; }
step "backup (to both destinations)" backup_into "$WORK/snap1.id"
SNAP1=$(cat "$WORK/snap1.id" 2>/dev/null || true)
garage_has_objects() { # Garage's own count (its counters are updated in the background)
    garage bucket info "$BUCKET" | awk '/^Objects:/ { n = $2 } END { exit !(n > 0) }'
}
garage_objects() { wait_until 60 "objects in Garage's bucket" garage_has_objects && garage bucket info "$BUCKET"; }
step "Garage itself counts objects in the bucket (garage bucket info)" garage_objects
snapshots_list_it() {
    lb snapshots --repo "$S3" --json >"$WORK/snapshots.json" && cat "$WORK/snapshots.json" &&
    python3 - "$WORK/snapshots.json" "$SNAP1" <<'PY'
import json, sys
snaps = json.load(open(sys.argv[1]))
ids = [s["id"] for s in snaps]
assert sys.argv[2] in ids, f"snapshot {sys.argv[2]!r} not in {ids}"
PY
}
step "snapshots --json --repo <garage> lists the snapshot" snapshots_list_it
step "restore from Garage only (--repo s3://..., local copy moved away)" restore_from_garage "$SNAP1" "$WORK/restore1"
step "restored copy is byte-for-byte the data (diff -r)" diff -r "$DATA" "$WORK/restore1"
step "vault verify --repo <garage> --read-data: Garage ok, packs read" verify_garage

# ---- Garage down: the backup still succeeds (quorum 1) and the missed objects wait in the spool --
step "garage: stop" stop_garage
change_data() {
    local f
    f=$(find "$DATA/uploads" -type f | sort | head -n 1) && [ -n "$f" ] &&
        echo "changed while Garage was down" >>"$f" &&
        head -c 2000000 /dev/urandom >"$DATA/big/added-while-down.bin" &&
        rm "$DATA/big/empty-file"
}
step "change the data (a new 2 MB file, an edited upload)" change_data
step "backup while Garage is down (quorum 1: succeeds, spools)" backup_into "$WORK/snap2.id"
SNAP2=$(cat "$WORK/snap2.id" 2>/dev/null || true)
# behind_is OP N (OP: gt|eq): vault status --json says the Garage destination is OP N objects behind.
behind_is() {
    lb vault status --repo "$LOCAL" --json >"$WORK/status.json" &&
    cat "$WORK/status.json" &&
    python3 - "$WORK/status.json" "$1" "$2" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
s3 = [d for d in st["destinations"] if d["url"].startswith("s3://")]
assert len(s3) == 1, f"expected one s3 destination in {st}"
behind = s3[0]["objects_behind"]
op, n = sys.argv[2], int(sys.argv[3])
ok = behind > n if op == "gt" else behind == n
assert ok, f"objects_behind = {behind}, expected {op} {n}"
if op == "eq":
    assert s3[0]["reachable"], f"Garage destination not reachable: {s3[0]}"
PY
}
step "vault status --json: Garage is behind (> 0 objects in the spool)" behind_is gt 0

# ---- Garage back: sync sends the spool, nothing behind, the new snapshot restores from Garage ----
step "garage: start again (same data)" start_garage
step "vault sync" lb vault sync --repo "$LOCAL"
step "vault status --json: Garage reachable, 0 objects behind" behind_is eq 0
step "restore the second snapshot from Garage only" restore_from_garage "$SNAP2" "$WORK/restore2"
step "second restore is byte-for-byte the changed data (diff -r)" diff -r "$DATA" "$WORK/restore2"
step "vault verify --repo <garage> --read-data (after sync)" verify_garage

echo
if [ "$FAILED" = 0 ]; then
    echo "ALL PASSED (Garage $("$GARAGE_BIN" --version 2>/dev/null | head -n 1 | awk '{print $2}'), logs in $WORK/logs)"
else
    echo "SOME STEPS FAILED (logs in $WORK/logs, Garage's log in $WORK/garage/server.log)"
    exit 1
fi

#!/usr/bin/env bash
# WordPress on MariaDB under Lifeboat: the recovery point and the recovery time.
#
# RPO: `crates/mariadb/examples/mariadb_rpo.rs` (the measure of the SQLite `rpo` example, for MariaDB):
# a managed mariadbd takes RATE single-row commits/s for SECONDS, a timeline worker captures its
# binlog and ships to two local destinations (quorum 2); from each commit's acknowledgement to the
# segment holding it being durable on both, matched by GTID. RUNS runs, each printed.
#
# RTO: examples/wordpress under `lifeboat up` (release build), WordPress installed by setup.sh,
# then DB_MIB of incompressible rows in its database (1 MiB rows, each its own transaction, so
# the binlog carries them too) and UPLOADS_MIB of incompressible files in wp-content/uploads; once
# a checkpoint holds them and a post was written after it, `lifeboat rewind --to latest --yes`
# is timed from the command to the front door serving the restored copy (base restored, binlog
# replayed, mariadbd started and CHECK TABLE run, files restored, both Apache instances healthy,
# switch: the report's `serving_ms`; the command returns once the old state's instances, capture
# and server are stopped too, printed beside it), with the report's phases. RUNS rewinds on the
# same site.
#
#   sudo bash bench/wordpress-rpo-rto.sh                   # 1 GiB + 1 GiB, as root (setup.sh)
#   DB_MIB=128 UPLOADS_MIB=128 RUNS=2 sudo -E bash bench/wordpress-rpo-rto.sh
#   ONLY=rpo RATE=200 SECONDS_RPO=20 SEGMENT_MS=500 bash bench/wordpress-rpo-rto.sh
#
# Goals (issue 13, as for SQLite): RPO p99 <= 1 s, RTO <= 10 s. Needs the Debian packages of
# examples/wordpress/setup.sh, curl and python3; about 5x DB_MIB + UPLOADS_MIB free under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
DB_MIB=${DB_MIB:-1024}
UPLOADS_MIB=${UPLOADS_MIB:-1024}
RUNS=${RUNS:-3}
RATE=${RATE:-200}
SECONDS_RPO=${SECONDS_RPO:-20}
SEGMENT_MS=${SEGMENT_MS:-500}
ONLY=${ONLY:-}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p lifeboat
cargo build --release -q -p lifeboat-mariadb --example mariadb_rpo
L=$(realpath "$target/release/lifeboat")
RPO=$target/release/examples/mariadb_rpo

if [ "$ONLY" != rto ]; then
    echo "== RPO: $RATE commits/s for $SECONDS_RPO s, segment_interval $SEGMENT_MS ms, $RUNS runs"
    for _ in $(seq "$RUNS"); do
        "$RPO" "$RATE" "$SECONDS_RPO" "$SEGMENT_MS"
    done
fi
[ "$ONLY" = rpo ] && exit 0

scratch=$(mktemp -d /tmp/lifeboat-wp-rto.XXXXXX)
chmod 0755 "$scratch"
site=$scratch/site
cleanup() {
    if [ -f "$scratch/pid" ]; then
        "$L" -C "$site" down >/dev/null 2>&1 || kill "$(cat "$scratch/pid")" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$(cat "$scratch/pid")" 2>/dev/null || break; sleep 0.1; done
    fi
    [ -n "${KEEP:-}" ] && echo "kept $scratch" || rm -rf "$scratch"
}
trap cleanup EXIT

# The example, as the tests copy it (its code from Debian's WordPress by setup.sh --no-install).
mkdir -p "$site/tools" "$site/wp-content/mu-plugins"
cp examples/wordpress/{setup.sh,run.sh,rotate-credentials.sh,wp-config.php,lifeboat-health.php} "$site/"
cp examples/wordpress/tools/* "$site/tools/"
cp examples/wordpress/wp-content/mu-plugins/lifeboat.php "$site/wp-content/mu-plugins/"
sed -e 's|listen = "127.0.0.1:8080"|listen = "127.0.0.1:0"|' \
    -e "s|destinations = \[\".lifeboat/vault\"\]|destinations = [\"$scratch/vault\"]\ncheckpoint_interval = \"20s\"|" \
    examples/wordpress/lifeboat.toml >"$site/lifeboat.toml"
"$site/setup.sh" --no-install >/dev/null

status() { "$L" -C "$site" status --json 2>/dev/null; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
wait_for() { # wait_for WHAT PYTHON-CONDITION-ON-d
    local deadline=$((SECONDS + ${3:-600}))
    until status | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($2) else 1)" 2>/dev/null; do
        if [ $SECONDS -gt $deadline ]; then echo "timed out waiting for $1" >&2; tail -20 "$scratch/up.log" >&2; exit 1; fi
        sleep 0.2
    done
}
now() { date +%s.%N; }

"$L" up "$site" >"$scratch/up.log" 2>&1 &
echo $! >"$scratch/pid"
wait_for "MariaDB" 'd["databases"] and d["databases"][0].get("pid")'
front=$(status | field 'd["proxy"].rstrip("/")')
out=$(LIFEBOAT=$L WP_ADMIN_USER=admin WP_ADMIN_PASSWORD=Bench-admin-0123456789 WP_URL=$front "$site/setup.sh")
app=$(printf '%s\n' "$out" | sed -n 's/^application password: //p' | tail -n 1)
wait_for "2 healthy instances" 'len(d["instances"]) == 2 and all(i["state"] == "healthy" for i in d["instances"])'

echo "== RTO: loading ${DB_MIB} MiB into the database and ${UPLOADS_MIB} MiB of uploads (incompressible)"
t=$(now)
python3 - "$DB_MIB" <<'PY' | mariadb --defaults-file="$site/.lifeboat/mariadb/site/my.cnf" wordpress
import os, sys
print("CREATE TABLE wp_lifeboat_ballast (id INT AUTO_INCREMENT PRIMARY KEY, data LONGBLOB) ENGINE=InnoDB;")
for _ in range(int(sys.argv[1])):
    print("INSERT INTO wp_lifeboat_ballast (data) VALUES (0x%s);" % os.urandom(1 << 20).hex())
PY
uploads=$site/wp-content/uploads/2026/12
mkdir -p "$uploads"
python3 - "$uploads" "$UPLOADS_MIB" <<'PY'
import os, sys
for i in range(int(sys.argv[2]) // 4):
    with open(os.path.join(sys.argv[1], f"photo-{i:05}.jpg"), "wb") as f:
        f.write(os.urandom(4 << 20))
PY
chown -R --reference="$site/wp-content/uploads" "$site/wp-content/uploads"
loaded=$(now)
echo "loaded in $(python3 -c "print(round($loaded - $t, 1))") s; waiting for capture and a checkpoint holding it"
wait_for "a checkpoint after the load" \
    "d['capture']['lag_ms'] == 0 and (d['capture'].get('last_checkpoint') or {}).get('time', '') > '$(date -u -d @"${loaded%.*}" +%Y-%m-%dT%H:%M:%S)'" 900
checkpointed=$(now)
echo "checkpoint stored $(python3 -c "print(round($checkpointed - $loaded, 1))") s after the load"
du -sh "$site/mariadb" "$site/wp-content/uploads" "$scratch/vault" | sed 's/^/  /'

last_rewind=$loaded
for run in $(seq "$RUNS"); do
    # The live state (after a rewind, the restored one) captured from a base of its own.
    wait_for "a checkpoint of the live state" \
        "d['capture'].get('mariadb') and d['capture']['mariadb']['connected'] and (d['capture'].get('last_checkpoint') or {}).get('time', '') > '$(date -u -d @"${last_rewind%.*}" +%Y-%m-%dT%H:%M:%S)'" 900
    code=$(curl -s -o /dev/null -w '%{http_code}' -u "admin:$app" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: bench-$run-$$" -d "{\"title\":\"after the checkpoint $run\",\"status\":\"publish\"}" \
        "$front/wp-json/wp/v2/posts")
    [ "$code" = 201 ] || { echo "a post failed: $code" >&2; exit 1; }
    wait_for "the post to be shipped" 'd["capture"]["lag_ms"] == 0'
    t0=$(now)
    "$L" -C "$site" rewind --to latest --yes --json >"$scratch/rewind.json"
    t1=$(now)
    code=$(curl -s -o /dev/null -w '%{http_code}' "$front/lifeboat-health.php")
    [ "$code" = 200 ] || { echo "the restored site answers $code" >&2; exit 1; }
    state=$(field 'd["state"]' <"$scratch/rewind.json")
    found=$(curl -s "$front/wp-json/wp/v2/posts?search=checkpoint%20$run" | field 'len(d)')
    [ "$found" -ge 1 ] || { echo "the post written before rewind $run is not in the restored copy" >&2; exit 1; }
    last_rewind=$t1
    serving=$(field 'd["serving_ms"] / 1000' <"$scratch/rewind.json")
    phases=$(field '", ".join("%s %.2f" % (n, ms / 1000) for n, ms in d["phases_ms"])' <"$scratch/rewind.json")
    echo "rewind $run of ${DB_MIB} MiB database + ${UPLOADS_MIB} MiB uploads: serving $state $serving s after the command (goal <= 10 s); the command took $(python3 -c "print(round($t1 - $t0, 2))") s"
    echo "  $phases"
done

#!/usr/bin/env bash
# Failover of a three-zone cluster under write load (issue 12's figures). Three virtual hosts
# (network namespaces, one zone each) run an etcd member and a lifeboat node with the guestbook,
# durability = "sync". An open-model writer (RATE writes/s, unique ids, latency from the
# intended send time; bench/lib/openload.py) on a surviving host writes through every node's
# front door in turn (the next address when one refuses, as a client given every address by
# DNS). Each round kills every process of the current primary's host, waits for writes to
# succeed again, brings the dead host back as a standby, and goes on. At the end, every
# acknowledged write is looked up on the primary.
#
# Then LATENCY_ROUNDS alternating rounds of SECONDS of steady load on a fresh async cluster and
# a fresh sync cluster: what sync adds to a write (p50/p99).
#
#   sudo bash bench/failover.sh
#   ROUNDS=10 RATE=40 LATENCY_ROUNDS=3 SECONDS_PER_PHASE=10 sudo -E bash bench/failover.sh
#
# Prints per round: time from the kill to the first successful write sent after it, failed
# requests, acknowledged writes lost; totals and medians; and the latency comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10}
RATE=${RATE:-40}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-3}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-10}
source scripts/lib/cluster.sh
cluster_require
if [ -z "${LIFEBOAT:-}" ]; then
    cargo build --release -p lifeboat -p guestbook >&2
    LIFEBOAT=$PWD/target/release/lifeboat
    GUESTBOOK=$PWD/target/release/guestbook
fi
LOAD=$PWD/bench/lib/openload.py
WORK=$(mktemp -d /tmp/lifeboat-failover.XXXXXX)
chmod 755 "$WORK"
trap 'cluster_down 2>/dev/null || true' EXIT

urls() {
    local i out=""
    for i in $(seq "$CLUSTER_NODES"); do out+=" http://$(cluster_ip "$i"):8080/entries"; done
    echo "$out"
}

# wait_standby I: until node I says it is a standby with a whole copy of the state.
wait_standby() {
    for _ in $(seq 600); do
        if "$LIFEBOAT" -C "$CLUSTER_DIR/node$1" status --json 2>/dev/null | python3 -c '
import json,sys
s = json.load(sys.stdin)
sys.exit(0 if s["role"]["role"] == "standby" and (s.get("replica") or {}).get("ready") else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "node $1 did not come back as a standby; see $CLUSTER_DIR/node$1.log" >&2
    return 1
}

# ---- failover rounds (sync) ----
CLUSTER_DIR=$WORK/failover CLUSTER_DURABILITY=sync
mkdir -p "$CLUSTER_DIR"
cluster_up
primary=$(cluster_wait_primary 60)
for i in $(seq "$CLUSTER_NODES"); do [ "$i" = "$primary" ] || wait_standby "$i"; done
echo "round  killed  healed_s  failed  acked" >"$WORK/rounds.txt"
for round in $(seq "$ROUNDS"); do
    primary=$(cluster_wait_primary 60)
    client=$(( primary % CLUSTER_NODES + 1 ))
    ip netns exec "$(cluster_ns "$client")" python3 "$LOAD" "$RATE" "r$round" $(urls) \
        >"$WORK/load-$round.txt" &
    load=$!
    sleep 3
    killed_at=$(date +%s.%N)
    cluster_kill_host "$primary"
    for _ in $(seq 300); do
        p=$(cluster_primary)
        [ -n "$p" ] && [ "$p" != "$primary" ] && break
        sleep 0.1
    done
    sleep 3
    kill -TERM "$load"
    wait "$load" || true
    echo "$killed_at" >"$WORK/killed-$round.txt"
    cluster_etcd_start "$primary"
    cluster_node_start "$primary"
    wait_standby "$primary"
    python3 - "$WORK" "$round" "n$primary" >>"$WORK/rounds.txt" <<'PY'
import sys
work, rnd, node = sys.argv[1], sys.argv[2], sys.argv[3]
killed = float(open(f"{work}/killed-{rnd}.txt").read())
rows = [l.split() for l in open(f"{work}/load-{rnd}.txt")]
ok_after = [float(r[1]) for r in rows if float(r[0]) >= killed and r[2] == "201"]
healed = (min(ok_after) - killed) if ok_after else float("nan")
failed = sum(1 for r in rows if r[2] != "201")
acked = sum(1 for r in rows if r[2] == "201")
print(f"{rnd:>5}  {node:>6}  {healed:8.2f}  {failed:6}  {acked:5}")
PY
    tail -1 "$WORK/rounds.txt" >&2
done
primary=$(cluster_wait_primary 60)
ip netns exec "$(cluster_ns "$primary")" python3 -c "
import urllib.request,sys
sys.stdout.write(urllib.request.urlopen('http://$(cluster_ip "$primary"):8080/api/entries', timeout=30).read().decode())
" >"$WORK/entries.json"
cluster_down
echo
echo "failover, $ROUNDS rounds, $RATE writes/s, durability = sync:"
cat "$WORK/rounds.txt"
python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
stored = {e["text"] for e in json.load(open(f"{work}/entries.json"))}
acked, lost, failed, healed = 0, [], 0, []
for rnd in range(1, rounds + 1):
    killed = float(open(f"{work}/killed-{rnd}.txt").read())
    rows = [l.split() for l in open(f"{work}/load-{rnd}.txt")]
    for intended, done, status, text in rows:
        if status == "201":
            acked += 1
            if text not in stored:
                lost.append(text)
        else:
            failed += 1
    ok = [float(r[1]) for r in rows if float(r[0]) >= killed and r[2] == "201"]
    if ok:
        healed.append(min(ok) - killed)
print(f"acknowledged writes: {acked}, lost: {len(lost)} {lost[:10] if lost else ''}")
print(f"failed requests: {failed}")
if healed:
    print(f"healed (kill -> first successful write): median {statistics.median(healed):.2f} s, "
          f"max {max(healed):.2f} s over {len(healed)} rounds")
PY

# ---- what sync adds to a write: alternating async / sync rounds ----
lat() {
    python3 - "$1" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
lat = sorted(float(r[1]) - float(r[0]) for r in rows if r[2] == "201")
if not lat:
    print("nan nan"); sys.exit()
print(f"{lat[len(lat)//2]*1000:.1f} {lat[min(len(lat)-1, int(len(lat)*0.99))]*1000:.1f}")
PY
}
echo
echo "write latency (ms), steady load of $RATE writes/s for $SECONDS_PER_PHASE s, alternating:"
echo "round  mode   p50    p99"
for round in $(seq "$LATENCY_ROUNDS"); do
    for mode in async sync; do
        CLUSTER_DIR=$WORK/lat-$mode-$round CLUSTER_DURABILITY=$mode
        mkdir -p "$CLUSTER_DIR"
        cluster_up
        primary=$(cluster_wait_primary 60)
        for i in $(seq "$CLUSTER_NODES"); do [ "$i" = "$primary" ] || wait_standby "$i"; done
        client=$(( primary % CLUSTER_NODES + 1 ))
        ip netns exec "$(cluster_ns "$client")" python3 "$LOAD" "$RATE" "$mode" \
            "http://$(cluster_ip "$primary"):8080/entries" >"$WORK/lat-$mode-$round.txt" &
        load=$!
        sleep "$SECONDS_PER_PHASE"
        kill -TERM "$load"
        wait "$load" || true
        cluster_down
        echo "$round  $mode  $(lat "$WORK/lat-$mode-$round.txt")" | tee -a "$WORK/latency.txt"
    done
done
python3 - "$WORK/latency.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for q, col in (("p50", 2), ("p99", 3)):
    a = statistics.median(float(r[col]) for r in rows if r[1] == "async")
    s = statistics.median(float(r[col]) for r in rows if r[1] == "sync")
    print(f"median {q}: async {a:.1f} ms, sync {s:.1f} ms, sync/async {s/a:.2f}x")
PY
echo "files: $WORK"

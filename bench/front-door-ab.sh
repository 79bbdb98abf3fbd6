#!/usr/bin/env bash
# A/B of front door builds: each given `front_door` binary and nginx in front of the same 3
# guestbook instances, measured in turn within each round (the order rotates every round), with
# wrk on GET /healthz. Prints req/s, p90, p99, max latency and the proxy's CPU µs per request per
# target and round, then each target's median p99 and req/s over the rounds.
#
# usage: bench/front-door-ab.sh NAME=PATH_TO_FRONT_DOOR [NAME=PATH ...]
#   e.g. build the example at two commits, copy each binary away, then
#        ROUNDS=8 DURATION=6s bench/front-door-ab.sh old=/tmp/fd-old new=/tmp/fd-new
# Settings (environment): ROUNDS (6) DURATION (6s) WRK_THREADS (2) WRK_CONNECTIONS (64)
#   BASE_PORT (18180: instances on +1..+3, nginx on +10, front doors on +20...).
#   Builds the guestbook with cargo --release into ${CARGO_TARGET_DIR:-target}. Needs wrk and
#   nginx (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-6s}"
THREADS="${WRK_THREADS:-2}"
CONNECTIONS="${WRK_CONNECTIONS:-64}"
BASE_PORT="${BASE_PORT:-18180}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
INSTANCE_PORTS=($((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)))
NGINX_PORT=$((BASE_PORT + 10))

for spec in "$@"; do
    name="${spec%%=*}" bin="${spec#*=}"
    if [ "$name" = "$spec" ] || [ "$name" = nginx ] || [ ! -x "$bin" ]; then
        echo "bad argument '$spec': give NAME=PATH with an executable front_door binary (NAME not 'nginx')" >&2
        exit 2
    fi
done

source bench/lib/nginx.sh
ensure_wrk_and_nginx
cargo build --release -q -p guestbook
GUESTBOOK="$TARGET/release/guestbook"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # file pattern what
    for _ in $(seq 1 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$3 did not start; its log:" >&2
    tail -n 20 "$1" >&2
    exit 1
}

mkdir -p "$WORK/data"
UPSTREAMS=()
for port in "${INSTANCE_PORTS[@]}"; do
    PORT=$port GUESTBOOK_DATA="$WORK/data" "$GUESTBOOK" >"$WORK/guestbook-$port.log" 2>&1 &
    PIDS+=($!)
    UPSTREAMS+=("127.0.0.1:$port")
done
for port in "${INSTANCE_PORTS[@]}"; do
    until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.1; done
done

start_nginx "$WORK/nginx" "$NGINX_PORT" "${UPSTREAMS[@]}"
until curl -sf "http://127.0.0.1:$NGINX_PORT/healthz" >/dev/null; do sleep 0.1; done

# name:port:pid:with_children (nginx's CPU is its workers')
TARGETS=("nginx:$NGINX_PORT:$NGINX_PID:yes")
port=$((BASE_PORT + 20))
for spec in "$@"; do
    name="${spec%%=*}" bin="${spec#*=}"
    "$bin" "127.0.0.1:$port" "${UPSTREAMS[@]}" >"$WORK/fd-$name.log" 2>&1 &
    PIDS+=($!)
    TARGETS+=("$name:$port:$!:no")
    wait_for "$WORK/fd-$name.log" "healthy instances" "front door '$name'"
    port=$((port + 1))
done

cpu_ticks() { # pid with_children -> total user+system clock ticks
    local total=0 pid children=""
    [ "$2" = yes ] && children="$(ps -o pid= --ppid "$1" || true)"
    for pid in "$1" $children; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.2f", v }'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency /healthz; $(nproc) cores; $ROUNDS round(s)"
printf "%-16s %10s %8s %8s %8s %12s  %s\n" target req/s "p90 ms" "p99 ms" "max ms" "cpu us/req" errors
declare -A ALL_P99 ALL_RPS
n=${#TARGETS[@]}
for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        IFS=: read -r name port pid children <<<"${TARGETS[$(((i + round - 1) % n))]}"
        url="http://127.0.0.1:$port/healthz"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d1s "$url" >/dev/null
        c0="$(cpu_ticks "$pid" "$children")"
        out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")"
        c1="$(cpu_ticks "$pid" "$children")"
        rps="$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')"
        p90="$(echo "$out" | awk '$1 == "90%" { print $2 }' | to_ms)"
        p99="$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_ms)"
        max="$(echo "$out" | awk '$1 == "Latency" { print $4; exit }' | to_ms)"
        total="$(echo "$out" | awk '/requests in/ { print $1 }')"
        errors="$(echo "$out" | awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }')"
        cpu="$(awk -v t=$((c1 - c0)) -v u="$TICK_US" -v n="$total" 'BEGIN { printf "%.1f", t * u / n }')"
        printf "%-16s %10s %8s %8s %8s %12s  %s\n" "$name r$round" "$rps" "$p90" "$p99" "$max" "$cpu" "${errors:-none}"
        ALL_P99[$name]+="$p99 "
        ALL_RPS[$name]+="$rps "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "medians over $ROUNDS round(s):"
for target in "${TARGETS[@]}"; do
    name="${target%%:*}"
    printf "  %-14s p99 %7.2f ms   req/s %9.0f\n" "$name" \
        "$(echo "${ALL_P99[$name]}" | median)" "$(echo "${ALL_RPS[$name]}" | median)"
done

#!/usr/bin/env bash
# Front door benchmark: requests/s and p50/p99 latency of the guestbook's GET /healthz
#   (a) on one instance directly,
#   (b) through Lifeboat's front door in front of 3 instances (`lifeboat up <site> --listen` when
#       the lifeboat binary supports it, else the lifeboat-proxy `front_door` example),
#   (c) through nginx (reverse proxy, upstream block with keepalive) in front of the same 3,
# measured with wrk in one run on this machine, then the lifeboat/nginx ratios.
# Goal: lifeboat >= 1.0x nginx's requests/s, and p99 no worse than nginx's.
#
# Settings (environment): WRK_THREADS (2) WRK_CONNECTIONS (64) DURATION (10s) ROUNDS (1)
#   BENCH_PATH (/healthz) BASE_PORT (18080) BENCH_VIA (auto|lifeboat|front_door).
#   Builds with cargo --release into ${CARGO_TARGET_DIR:-target}. Needs wrk and nginx
#   (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${WRK_THREADS:-2}"
CONNECTIONS="${WRK_CONNECTIONS:-64}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-1}"
BENCH_PATH="${BENCH_PATH:-/healthz}"
BASE_PORT="${BASE_PORT:-18080}"
VIA="${BENCH_VIA:-auto}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
PROXY_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 10))
INSTANCE_PORTS=($((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)))

source bench/lib/nginx.sh
ensure_wrk_and_nginx

echo "building release binaries into $TARGET ..." >&2
# Two commands: `--example` would narrow a shared command to examples, leaving the guestbook
# binary unbuilt.
cargo build --release -q -p guestbook
cargo build --release -q -p lifeboat-proxy --example front_door
GUESTBOOK="$TARGET/release/guestbook"
FRONT_DOOR="$TARGET/release/examples/front_door"
LIFEBOAT="$TARGET/release/lifeboat"

WORK="$(mktemp -d)"
# Readable by the site's own user (lifeboat, run as root, starts the instances as one).
chmod 755 "$WORK"
PIDS=()
cleanup() {
    if [ "$VIA" = lifeboat ]; then "$LIFEBOAT" -C "$WORK/site" down >/dev/null 2>&1 || true; fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for_port() { # port what
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$2 did not start listening on port $1; logs:" >&2
    tail -n 20 "$WORK"/*.log "$WORK"/nginx/*.log >&2 || true
    exit 1
}

if [ "$VIA" != front_door ]; then
    if cargo build --release -q -p lifeboat 2>"$WORK/lifeboat-build.txt" \
        && "$LIFEBOAT" up --help 2>/dev/null | grep -q -- "--listen"; then
        VIA=lifeboat
    elif [ "$VIA" = lifeboat ]; then
        echo "cannot build a lifeboat binary with 'up --listen':" >&2
        cat "$WORK/lifeboat-build.txt" >&2
        exit 1
    else
        VIA=front_door
    fi
fi

if [ "$VIA" = lifeboat ]; then
    # The real thing: lifeboat supervises 3 guestbook instances and fronts them.
    mkdir -p "$WORK/site"
    cat >"$WORK/site/lifeboat.toml" <<TOML
[site]
name = "bench"

[processes.web]
command = "$GUESTBOOK"
replicas = 3
health = { path = "/healthz", interval = "1s", timeout = "500ms" }

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:$PROXY_PORT"

[maintenance]
message = "Benchmark"
TOML
    "$LIFEBOAT" up "$WORK/site" --listen "127.0.0.1:$PROXY_PORT" >"$WORK/lifeboat.log" 2>&1 &
    PIDS+=($!)
    PROXY_PID=$!
    PROXY_CHILDREN=no # the instances are its children: count the lifeboat process only
    status=""
    for _ in $(seq 1 300); do
        status="$("$LIFEBOAT" -C "$WORK/site" status --json 2>/dev/null || true)"
        [ "$(echo "$status" | grep -o '"state": *"healthy"' | wc -l)" -ge 3 ] && break
        sleep 0.2
    done
    mapfile -t INSTANCE_PORTS < <(echo "$status" | grep -o '"port": *[0-9]*' | grep -o '[0-9]*$')
    if [ "${#INSTANCE_PORTS[@]}" -lt 3 ]; then
        echo "lifeboat did not report 3 healthy instances; status: $status" >&2
        tail -n 20 "$WORK/lifeboat.log" >&2
        exit 1
    fi
else
    # Three guestbook instances sharing one data dir, as under lifeboat.
    mkdir -p "$WORK/data"
    for port in "${INSTANCE_PORTS[@]}"; do
        PORT=$port GUESTBOOK_DATA="$WORK/data" "$GUESTBOOK" >"$WORK/guestbook-$port.log" 2>&1 &
        PIDS+=($!)
        wait_for_port "$port" "guestbook"
    done
    # Lifeboat's front door library in a bare binary.
    UPSTREAMS=()
    for port in "${INSTANCE_PORTS[@]}"; do UPSTREAMS+=("127.0.0.1:$port"); done
    "$FRONT_DOOR" "127.0.0.1:$PROXY_PORT" "${UPSTREAMS[@]}" >"$WORK/front-door.log" 2>&1 &
    PIDS+=($!)
    PROXY_PID=$!
    PROXY_CHILDREN=yes
fi
wait_for_port "$PROXY_PORT" "lifeboat front door"
if [ "$VIA" = front_door ]; then
    # It prints its start line once every instance passed its first health check.
    for _ in $(seq 1 300); do
        grep -q "healthy instances" "$WORK/front-door.log" && break
        sleep 0.1
    done
fi

# nginx as a reverse proxy with upstream keep-alive, as it is usually deployed.
start_nginx "$WORK/nginx" "$NGINX_PORT" "${INSTANCE_PORTS[@]/#/127.0.0.1:}"
wait_for_port "$NGINX_PORT" "nginx"

# wrk's latency lines read "50%  1.23ms"; print them in milliseconds.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.3f", v }'; }

# CPU time (user, system; clock ticks) used so far by a process, and its children if asked
# (nginx's workers; not lifeboat's instances).
cpu_ticks() { # pid with_children(yes|no)
    local user=0 sys=0 pid children=""
    [ "$2" = yes ] && children="$(ps -o pid= --ppid "$1" || true)"
    for pid in "$1" $children; do
        read -r u s < <(awk '{ print $14, $15 }' "/proc/$pid/stat" 2>/dev/null || echo "0 0")
        user=$((user + u)); sys=$((sys + s))
    done
    echo "$user $sys"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

measure() { # name port pid with_children -> "rps p50 p99 user_us/req sys_us/req errors"
    local url="http://127.0.0.1:$2$BENCH_PATH" out u0 s0 u1 s1
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null  # warm up pools and caches
    read -r u0 s0 < <(cpu_ticks "${3:-$$}" "$4")
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")"
    read -r u1 s1 < <(cpu_ticks "${3:-$$}" "$4")
    echo "$out" >>"$WORK/wrk-$1.txt"
    local rps p50 p99 total errors
    rps="$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')"
    p50="$(echo "$out" | awk '$1 == "50%" { print $2 }' | to_ms)"
    p99="$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_ms)"
    total="$(echo "$out" | awk '/requests in/ { print $1 }')"
    errors="$(echo "$out" | awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }')"
    awk -v r="$rps" -v a="$p50" -v b="$p99" -v n="$total" -v t="$TICK_US" \
        -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v e="${errors:-none}" \
        'BEGIN { printf "%s %s %s %.1f %.1f %s\n", r, a, b, u * t / n, s * t / n, e }'
}

echo "front door: $VIA; instances on ports ${INSTANCE_PORTS[*]}; $(nproc) cores"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency http://127.0.0.1:PORT$BENCH_PATH"
echo "cpu us/req: CPU time the proxy process(es) used per request, user+system"
printf "%-20s %10s %8s %8s %16s  %s\n" "target" "req/s" "p50 ms" "p99 ms" "cpu us/req" "errors"
RPS_RATIOS=(); P99_RATIOS=(); CPU_RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
    declare -A R=() P=() C=()
    # The two proxies take turns going first (ABBA), so that a drift in the machine's load
    # during a run does not favour either of them.
    proxies=("lifeboat:$PROXY_PORT:$PROXY_PID:$PROXY_CHILDREN" "nginx:$NGINX_PORT:$NGINX_PID:yes")
    if [ $((round % 2)) -eq 0 ]; then proxies=("${proxies[1]}" "${proxies[0]}"); fi
    for target in "direct:${INSTANCE_PORTS[0]}::" "${proxies[@]}"; do
        IFS=: read -r name port pid children <<<"$target"
        read -r rps p50 p99 user sys errors < <(measure "$name" "$port" "$pid" "$children")
        cpu="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }') ($user+$sys)"
        [ -z "$pid" ] && cpu="-"
        printf "%-20s %10s %8s %8s %16s  %s\n" "$name (round $round)" "$rps" "$p50" "$p99" "$cpu" "$errors"
        R[$name]=$rps; P[$name]=$p99; C[$name]="${cpu%% *}"
    done
    RPS_RATIOS+=("$(awk -v a="${R[lifeboat]}" -v b="${R[nginx]}" 'BEGIN { print a / b }')")
    P99_RATIOS+=("$(awk -v a="${P[lifeboat]}" -v b="${P[nginx]}" 'BEGIN { print a / b }')")
    CPU_RATIOS+=("$(awk -v a="${C[lifeboat]}" -v b="${C[nginx]}" 'BEGIN { print a / b }')")
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "lifeboat/nginx, median over $ROUNDS round(s) of the per-round ratios:"
printf "  requests/s   %.2fx  (goal >= 1.00x)\n" "$(echo "${RPS_RATIOS[*]}" | median)"
printf "  p99 latency  %.2fx  (goal <= 1.00x)\n" "$(echo "${P99_RATIOS[*]}" | median)"
printf "  cpu/request  %.2fx\n" "$(echo "${CPU_RATIOS[*]}" | median)"

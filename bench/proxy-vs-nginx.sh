#!/usr/bin/env bash
# Front door benchmark: requests/s and p50/p99 latency of the guestbook's GET /healthz
#   (a) on one instance directly,
#   (b) through Lifeboat's proxy in front of 3 instances,
#   (c) through nginx (reverse proxy, upstream block with keepalive) in front of the same 3,
# measured with wrk in one run on this machine, then the lifeboat/nginx ratios.
# Goal: lifeboat >= 1.0x nginx's requests/s, and p99 no worse than nginx's.
#
# Settings (environment): WRK_THREADS (2) WRK_CONNECTIONS (64) DURATION (10s) ROUNDS (1)
#   BENCH_PATH (/healthz) BASE_PORT (18080). Builds with cargo --release into
#   ${CARGO_TARGET_DIR:-target}. Needs wrk and nginx (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${WRK_THREADS:-2}"
CONNECTIONS="${WRK_CONNECTIONS:-64}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-1}"
BENCH_PATH="${BENCH_PATH:-/healthz}"
BASE_PORT="${BASE_PORT:-18080}"
TARGET="${CARGO_TARGET_DIR:-target}"
PROXY_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 10))
INSTANCE_PORTS=($((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)))

if ! command -v wrk >/dev/null || { ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; }; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk nginx >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

echo "building release binaries into $TARGET ..." >&2
cargo build --release -q -p guestbook -p lifeboat-proxy --example front_door
GUESTBOOK="$TARGET/release/guestbook"
FRONT_DOOR="$TARGET/release/examples/front_door"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
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
    echo "$2 did not start listening on port $1; see $WORK/*.log" >&2
    exit 1
}

# Three guestbook instances sharing one data dir, as under lifeboat.
mkdir -p "$WORK/data"
for port in "${INSTANCE_PORTS[@]}"; do
    PORT=$port GUESTBOOK_DATA="$WORK/data" GUESTBOOK_ADMIN_PASSWORD=bench-password \
        "$GUESTBOOK" >"$WORK/guestbook-$port.log" 2>&1 &
    PIDS+=($!)
    wait_for_port "$port" "guestbook"
done

# Lifeboat's front door.
UPSTREAMS=()
for port in "${INSTANCE_PORTS[@]}"; do UPSTREAMS+=("127.0.0.1:$port"); done
"$FRONT_DOOR" "127.0.0.1:$PROXY_PORT" "${UPSTREAMS[@]}" >"$WORK/front-door.log" 2>&1 &
PIDS+=($!)
wait_for_port "$PROXY_PORT" "lifeboat front door"

# nginx as a reverse proxy with upstream keep-alive, as it is usually deployed.
mkdir -p "$WORK/nginx/logs"
{
    [ "$(id -u)" -eq 0 ] && echo "user root;"
    cat <<NGINX
worker_processes auto;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream guestbook {
        server 127.0.0.1:${INSTANCE_PORTS[0]};
        server 127.0.0.1:${INSTANCE_PORTS[1]};
        server 127.0.0.1:${INSTANCE_PORTS[2]};
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://guestbook;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
NGINX
} >"$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g "daemon off;" >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
wait_for_port "$NGINX_PORT" "nginx"

# wrk's latency lines read "50%  1.23ms"; print them in milliseconds.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.3f", v }'; }

measure() { # name port -> "name rps p50 p99 errors"
    local url="http://127.0.0.1:$2$BENCH_PATH" out
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null  # warm up pools and caches
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")"
    echo "$out" >"$WORK/wrk-$1.txt"
    local rps p50 p99 errors
    rps="$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')"
    p50="$(echo "$out" | awk '$1 == "50%" { print $2 }' | to_ms)"
    p99="$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_ms)"
    errors="$(echo "$out" | awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }')"
    echo "$1 $rps $p50 $p99 ${errors:-none}"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency http://127.0.0.1:PORT$BENCH_PATH   ($(nproc) cores)"
printf "%-24s %12s %10s %10s  %s\n" "target" "req/s" "p50 ms" "p99 ms" "errors"
declare -A RPS P99
for round in $(seq 1 "$ROUNDS"); do
    for target in "direct:${INSTANCE_PORTS[0]}" "lifeboat:$PROXY_PORT" "nginx:$NGINX_PORT"; do
        name="${target%%:*}"
        read -r _ rps p50 p99 errors < <(measure "$name" "${target##*:}")
        printf "%-24s %12s %10s %10s  %s\n" "$name (round $round)" "$rps" "$p50" "$p99" "$errors"
        RPS[$name]="${RPS[$name]:-} $rps"
        P99[$name]="${P99[$name]:-} $p99"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR]=$1 } END { print a[int((NR+1)/2)] }'; }
L_RPS="$(echo "${RPS[lifeboat]}" | median)"; N_RPS="$(echo "${RPS[nginx]}" | median)"
L_P99="$(echo "${P99[lifeboat]}" | median)"; N_P99="$(echo "${P99[nginx]}" | median)"
echo
awk -v lr="$L_RPS" -v nr="$N_RPS" -v lp="$L_P99" -v np="$N_P99" 'BEGIN {
    printf "lifeboat/nginx requests/s: %.2fx  (goal >= 1.00x)\n", lr / nr
    printf "lifeboat/nginx p99:        %.2fx  (goal <= 1.00x)\n", lp / np
}'

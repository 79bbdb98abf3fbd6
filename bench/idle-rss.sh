#!/usr/bin/env bash
# Idle memory of `lifeboat up`: a copy of examples/guestbook (3 instances, capture into its
# local vault) started as a user would, given a little load (writes, reads, an upload), left
# to idle, then the lifeboat process's memory sampled from /proc/PID/status a few times.
# Prints each sample and the medians of VmRSS, RssAnon, RssFile and threads for lifeboat
# itself, and separately for its helper processes (`lifeboat __hold-sqlite`) and, for
# information, for the 3 guestbook instances. Goal (issue 11): lifeboat <= 30 MiB.
#
#   bash bench/idle-rss.sh
#   LIFEBOAT_BIN=/tmp/lifeboat-old bash bench/idle-rss.sh      # an other build, no cargo
#
# Settings (environment): WRITES (300) READ_SECONDS (3) READ_CONNECTIONS (32)
#   UPLOAD_KIB (2048) IDLE_SECONDS (20) SAMPLES (7) SAMPLE_EVERY (5) KEEP=1 (leave the
#   scratch dir). Builds `lifeboat` and `guestbook` with cargo --release into
#   $CARGO_TARGET_DIR, by default target-lto when it exists (the release profile is fat LTO:
#   ~8 min from scratch on 2 cores), else target. LIFEBOAT_BIN / GUESTBOOK_BIN skip the build.
#   Lifeboat's own environment is passed through, so MIMALLOC_* variables reach it.
#   Needs curl and wrk (wrk is installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

WRITES="${WRITES:-300}"
READ_SECONDS="${READ_SECONDS:-3}"
READ_CONNECTIONS="${READ_CONNECTIONS:-32}"
UPLOAD_KIB="${UPLOAD_KIB:-2048}"
IDLE_SECONDS="${IDLE_SECONDS:-20}"
SAMPLES="${SAMPLES:-7}"
SAMPLE_EVERY="${SAMPLE_EVERY:-5}"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d target-lto ]; then export CARGO_TARGET_DIR=target-lto; fi
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac

if ! command -v wrk >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi

if [ -z "${LIFEBOAT_BIN:-}" ] || [ -z "${GUESTBOOK_BIN:-}" ]; then
    echo "building release binaries into $TARGET ..." >&2
    cargo build --release -q -p lifeboat -p guestbook
fi
LIFEBOAT="$(realpath "${LIFEBOAT_BIN:-$TARGET/release/lifeboat}")"
GUESTBOOK="$(realpath "${GUESTBOOK_BIN:-$TARGET/release/guestbook}")"

WORK="$(mktemp -d /tmp/lifeboat-idle-rss.XXXXXX)"
# Readable by the site's own user (lifeboat, run as root, starts the instances as one).
chmod 755 "$WORK"
SITE="$WORK/guestbook"
UP_PID=""
cleanup() {
    if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
        timeout 60 "$LIFEBOAT" -C "$SITE" down >/dev/null 2>&1 || true
        # `down` returns once the socket is gone; the process may still be exiting.
        for _ in $(seq 1 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$UP_PID" 2>/dev/null; then
            # Its instances and helper die with it (parent-death signal).
            kill -TERM "$UP_PID" 2>/dev/null || true
            sleep 2
            kill -KILL "$UP_PID" 2>/dev/null || true
        fi
    fi
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# The example as a user would copy it, with its own manifest; only two lines differ: the
# binary to run (run.sh would look for it in this workspace's target dir, which the copy is
# no longer in) and a free port instead of 8080.
mkdir -p "$SITE"
cp -r examples/guestbook/lifeboat.toml examples/guestbook/run.sh \
    examples/guestbook/guestbook-bin.sh examples/guestbook/rotate-credentials.sh "$SITE/"
sed -i "s|^replicas = 3|replicas = 3\nenv = { GUESTBOOK_BIN = \"$GUESTBOOK\" }|" "$SITE/lifeboat.toml"
grep -q "^replicas = 3" "$SITE/lifeboat.toml" || { echo "the example no longer has 3 replicas" >&2; exit 1; }

"$LIFEBOAT" up "$SITE" --listen 127.0.0.1:0 >"$WORK/up.log" 2>&1 &
UP_PID=$!
status=""
for _ in $(seq 1 300); do
    status="$("$LIFEBOAT" -C "$SITE" status --json 2>/dev/null || true)"
    [ "$(echo "$status" | grep -o '"state": *"healthy"' | wc -l)" -ge 3 ] && break
    kill -0 "$UP_PID" 2>/dev/null || break
    sleep 0.2
done
if [ "$(echo "$status" | grep -o '"state": *"healthy"' | wc -l)" -lt 3 ]; then
    echo "lifeboat did not report 3 healthy instances; its output:" >&2
    tail -n 30 "$WORK/up.log" >&2
    exit 1
fi
PROXY="$(echo "$status" | grep -o '"proxy": *"[^"]*"' | head -1 | sed 's/.*"\(http[^"]*\)"/\1/')"
echo "lifeboat $UP_PID serving $PROXY; $(nproc) cores; binary $LIFEBOAT"

# A little load: writes from 4 clients at once, an upload, concurrent reads.
seq 1 "$WRITES" | xargs -P 4 -I{} curl -sf -o /dev/null -d "text=entry {} from the idle bench" "$PROXY/entries"
head -c $((UPLOAD_KIB * 1024)) /dev/urandom >"$WORK/photo.jpg"
curl -sf -o /dev/null -F "file=@$WORK/photo.jpg" "$PROXY/upload"
curl -sf -o /dev/null "$PROXY/uploads/photo.jpg"
wrk -t2 -c"$READ_CONNECTIONS" -d"${READ_SECONDS}s" "$PROXY/" | awk '/Requests\/sec/ { print "reads: " $2 " req/s for '"$READ_SECONDS"' s" }'
wrk -t2 -c"$READ_CONNECTIONS" -d"${READ_SECONDS}s" "$PROXY/api/entries" >/dev/null
echo "load: $WRITES writes, one ${UPLOAD_KIB} KiB upload and its download, reads; idling ${IDLE_SECONDS} s"
sleep "$IDLE_SECONDS"

kib() { awk -v k="$2" '$1 == k":" { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Processes under lifeboat: its helpers run the lifeboat binary; instances run anything else
# (the shim `lifeboat __instance` execs the command).
descendants() { # pid
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf "%-8s %9s %9s %9s %8s %14s %15s\n" sample "VmRSS KiB" "RssAnon" "RssFile" threads "helpers KiB" "instances KiB"
: >"$WORK/samples"
for i in $(seq 1 "$SAMPLES"); do
    kill -0 "$UP_PID" 2>/dev/null || { echo "lifeboat exited; its output:" >&2; tail -n 30 "$WORK/up.log" >&2; exit 1; }
    helpers=0 helper_count=0 instances=0
    for pid in $(descendants "$UP_PID"); do
        rss="$(kib "$pid" VmRSS)"
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$LIFEBOAT" ]; then
            helpers=$((helpers + rss)) helper_count=$((helper_count + 1))
        else
            instances=$((instances + rss))
        fi
    done
    row="$(kib "$UP_PID" VmRSS) $(kib "$UP_PID" RssAnon) $(kib "$UP_PID" RssFile) $(kib "$UP_PID" Threads) $helpers $instances"
    echo "$row" >>"$WORK/samples"
    read -r a b c d e f <<<"$row"
    printf "%-8s %9s %9s %9s %8s %9s (%s) %15s\n" "$i" "$a" "$b" "$c" "$d" "$e" "$helper_count" "$f"
    [ "$i" -lt "$SAMPLES" ] && sleep "$SAMPLE_EVERY"
done
col() { awk -v c="$1" '{ print $c }' "$WORK/samples" | median; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
echo
echo "median of $SAMPLES samples, ${SAMPLE_EVERY} s apart:"
echo "  lifeboat:  VmRSS $(mib "$(col 1)") (RssAnon $(mib "$(col 2)"), RssFile $(mib "$(col 3)")), $(col 4) threads   (goal <= 30 MiB)"
echo "  helpers:   VmRSS $(mib "$(col 5)") in total (lifeboat __hold-sqlite)"
echo "  instances: VmRSS $(mib "$(col 6)") in total (3 guestbook processes, for information)"

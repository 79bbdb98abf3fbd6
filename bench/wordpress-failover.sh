#!/usr/bin/env bash
# WordPress (examples/wordpress: Debian's WordPress, MariaDB, Apache) on three virtual hosts of
# this machine (scripts/lib/cluster.sh), durability = "sync": the site dir is prepared once and
# copied to every node, as an owner would; WordPress is installed on the primary; 15 posts and
# an image are written through the REST API; the primary's whole host is killed (kill -9 of
# everything in its namespace). Prints when another node took over and served again, checks
# that every post and the image (byte for byte) are there, and the new primary's events.
#
#   sudo bash bench/wordpress-failover.sh
#
# Application passwords work over plain http only from the node's own loopback (the example's
# must-use plugin, as WordPress asks https otherwise), so the writes go to the primary's
# 127.0.0.1 from its own host. Needs root, etcd (scripts/install-test-deps) and the packages of
# examples/wordpress/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh
cluster_require
cargo build --release -q -p lifeboat
LIFEBOAT=$PWD/${CARGO_TARGET_DIR:-target}/release/lifeboat
CLUSTER_DIR=$(mktemp -d /tmp/lifeboat-wp-cluster.XXXXXX)
chmod 755 "$CLUSTER_DIR"
echo "dir $CLUSTER_DIR"
trap 'cluster_down; [ -n "${KEEP:-}" ] && echo "kept $CLUSTER_DIR" || rm -rf "$CLUSTER_DIR"' EXIT
cluster_net_up
for i in 1 2 3; do cluster_etcd_start "$i"; done
n1=$CLUSTER_DIR/node1
mkdir -p "$n1"
cp -a examples/wordpress/. "$n1/"
rm -rf "$n1/.lifeboat"
clients=""
for j in 1 2 3; do clients+="${clients:+, }\"http://$(cluster_ip "$j"):2379\""; done
sed -i -e 's|listen = "127.0.0.1:8080"|listen = "0.0.0.0:8080"|' \
    -e "s|destinations = \[\".lifeboat/vault\"\]|destinations = [\"$CLUSTER_DIR/vault\"]|" "$n1/lifeboat.toml"
printf '\n[cluster]\netcd = [%s]\ndurability = "sync"\n' "$clients" >>"$n1/lifeboat.toml"
"$n1/setup.sh" --no-install >/dev/null
cp -a "$n1" "$CLUSTER_DIR/node2"; cp -a "$n1" "$CLUSTER_DIR/node3"
cluster_node_start 1
for _ in $(seq 300); do [ -f "$n1/.lifeboat/vault.key" ] && break; sleep 0.1; done
for i in 2 3; do mkdir -p "$CLUSTER_DIR/node$i/.lifeboat"; cp "$n1/.lifeboat/vault.key" "$CLUSTER_DIR/node$i/.lifeboat/"; cluster_node_start "$i"; done
p=$(cluster_wait_primary 90) || { echo "no primary"; tail -30 $CLUSTER_DIR/node*.log; exit 1; }
echo "primary n$p"
ip=$(cluster_ip "$p")
out=$(LIFEBOAT=$LIFEBOAT WP_ADMIN_USER=admin WP_ADMIN_PASSWORD=Trial-admin-0123456789 WP_URL=http://$ip:8080 "$CLUSTER_DIR/node$p/setup.sh" 2>&1) || { echo "$out"; exit 1; }
app=$(printf '%s\n' "$out" | sed -n 's/^application password: //p' | tail -n 1)
echo "app password: ${app:0:4}..."
other=$(( p % 3 + 1 )); third=$(( other % 3 + 1 ))
# wait for standbys streaming
for _ in $(seq 600); do
  ok=0
  for i in $other $third; do
    "$LIFEBOAT" -C "$CLUSTER_DIR/node$i" status --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d.get("replica") and d["replica"]["state"]=="streaming" and d["replica"]["ready"] else 1)' && ok=$((ok+1))
  done
  [ $ok = 2 ] && break; sleep 0.2
done
echo "standbys streaming: $ok"
acked=()
[ "$ok" = 2 ] || { echo "the standbys did not stream" >&2; exit 1; }
for n in $(seq 1 15); do
  code=$(ip netns exec "$(cluster_ns "$p")" curl -s -o /dev/null -w '%{http_code}' -u "admin:$app" -H 'Content-Type: application/json' \
      -d "{\"title\":\"trial post $n\",\"status\":\"publish\"}" "http://127.0.0.1:8080/wp-json/wp/v2/posts")
  [ "$code" = 201 ] && acked+=("$n") || echo "post $n: $code"
done
echo "acked ${#acked[@]} posts"
mkdir -p "$CLUSTER_DIR/up"; echo "uploading a medium"
python3 -c "
import zlib,struct,os
w=h=200
raw=b''.join(b'\\x00'+os.urandom(w*3) for _ in range(h))
def chunk(t,d): return struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d))
open('$CLUSTER_DIR/up/photo.jpg','wb').write(b'\\x89PNG\\r\\n\\x1a\\n'+chunk(b'IHDR',struct.pack('>IIBBBBB',w,h,8,2,0,0,0))+chunk(b'IDAT',zlib.compress(raw))+chunk(b'IEND',b''))
"
code=$(ip netns exec "$(cluster_ns "$p")" curl -s -o "$CLUSTER_DIR/media.json" -w '%{http_code}' -u "admin:$app" -H 'Content-Disposition: attachment; filename=photo.png' -H 'Content-Type: image/png' --data-binary @"$CLUSTER_DIR/up/photo.jpg" "http://127.0.0.1:8080/wp-json/wp/v2/media")
echo "media: $code"
t0=$(date +%s.%N)
cluster_kill_host "$p"
np=""
for _ in $(seq 600); do
  for i in $other $third; do
    "$LIFEBOAT" -C "$CLUSTER_DIR/node$i" status --json 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["role"]["role"]=="primary" else 1)' && np=$i
  done
  [ -n "$np" ] && break; sleep 0.1
done
echo "new primary n$np after $(python3 -c "import time;print(round(time.time()-$t0,1))") s"
for _ in $(seq 300); do
  code=$(ip netns exec "$(cluster_ns "$third")" curl -s -o /dev/null -w '%{http_code}' "http://$(cluster_ip "$np"):8080/lifeboat-health.php") || true
  [ "$code" = 200 ] && break; sleep 0.1
done
echo "serving after $(python3 -c "import time;print(round(time.time()-$t0,1))") s"
ip netns exec "$(cluster_ns "$third")" curl -s "http://$(cluster_ip "$np"):8080/wp-json/wp/v2/posts?per_page=100&search=trial" | python3 -c '
import json,sys; d=json.load(sys.stdin); titles=sorted(int(p["title"]["rendered"].split()[-1]) for p in d); print("posts on the new primary:", titles); want=list(range(1, int(sys.argv[1]) + 1)); sys.exit(0 if titles == want else "posts lost: %s" % sorted(set(want) - set(titles)))' "${#acked[@]}"
mid=$(python3 -c "import json;print(json.load(open('$CLUSTER_DIR/media.json'))['id'])" 2>/dev/null || echo "")
src=$(ip netns exec "$(cluster_ns "$third")" curl -s "http://$(cluster_ip "$np"):8080/wp-json/wp/v2/media/$mid" | python3 -c 'import json,sys; print(json.load(sys.stdin)["source_url"])' 2>/dev/null || echo "?")
echo "medium $mid at $src"
path=${src#*://*/}
ip netns exec "$(cluster_ns "$third")" curl -s -o "$CLUSTER_DIR/back.jpg" "http://$(cluster_ip "$np"):8080/$path" && cmp "$CLUSTER_DIR/back.jpg" "$CLUSTER_DIR/up/photo.jpg" && echo "the image is intact on the new primary"
"$LIFEBOAT" -C "$CLUSTER_DIR/node$np" events | tail -12

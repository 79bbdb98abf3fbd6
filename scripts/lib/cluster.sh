# Three (or N) virtual hosts on this machine for a cluster site: network namespaces on a bridge,
# an etcd member and a lifeboat node (the guestbook) per host, each host its own zone. Sourced by
# scripts/demo-cluster and bench/failover.sh. Needs root (network namespaces) and etcd
# (scripts/install-test-deps puts Debian's etcd-server in .tools/bin).
#
# Variables: CLUSTER_DIR (scratch dir, required), CLUSTER_NODES (3), CLUSTER_DURABILITY (sync),
# LIFEBOAT and GUESTBOOK (binaries). Sets CLUSTER_NET (10.X.Y) and CLUSTER_ID.

cluster_require() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: needs root: it makes network namespaces (one per virtual host)" >&2
        exit 1
    fi
    ETCD=$(command -v etcd || true)
    [ -z "$ETCD" ] && [ -x "$PWD/.tools/bin/etcd" ] && ETCD=$PWD/.tools/bin/etcd
    [ -z "$ETCD" ] && [ -x /usr/bin/etcd ] && ETCD=/usr/bin/etcd
    if [ -z "$ETCD" ]; then
        echo "$0: etcd is not installed; run scripts/install-test-deps" >&2
        exit 1
    fi
    command -v python3 >/dev/null || { echo "$0: needs python3" >&2; exit 1; }
}

cluster_ns() { echo "lbc${CLUSTER_ID}h$1"; }
cluster_ip() { echo "$CLUSTER_NET.$1"; }

# cluster_net_up: the bridge and one namespace per host, 10.X.Y.i/24.
cluster_net_up() {
    CLUSTER_NODES=${CLUSTER_NODES:-3}
    CLUSTER_ID=$(printf '%04x' $((RANDOM % 65536)))
    CLUSTER_NET="10.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1))"
    ip link add "lbc${CLUSTER_ID}br" type bridge
    ip link set "lbc${CLUSTER_ID}br" up
    local i ns
    for i in $(seq "$CLUSTER_NODES"); do
        ns=$(cluster_ns "$i")
        ip netns add "$ns"
        ip link add "lbc${CLUSTER_ID}v$i" type veth peer name eth0 netns "$ns"
        ip link set "lbc${CLUSTER_ID}v$i" master "lbc${CLUSTER_ID}br" up
        ip -n "$ns" addr add "$(cluster_ip "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

# cluster_kill_host I: kill -9 of every process of host I, as when the machine dies.
cluster_kill_host() {
    local pids
    pids=$(ip netns pids "$(cluster_ns "$1")" 2>/dev/null || true)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
}

# cluster_down: every process of every host, the namespaces and the bridge.
cluster_down() {
    local i
    for i in $(seq "${CLUSTER_NODES:-3}"); do
        cluster_kill_host "$i"
        ip netns del "$(cluster_ns "$i")" 2>/dev/null || true
    done
    ip link del "lbc${CLUSTER_ID}br" 2>/dev/null || true
}

# cluster_etcd_start I: host I's etcd member (with --pre-vote: a member back from a partition
# must not force an election; heartbeat 50 ms and election timeout 500 ms, for a LAN: when the
# etcd leader dies with the primary's host, the new etcd leader extends every lease by its TTL,
# so etcd's own election adds to the failover time).
cluster_etcd_start() {
    local i=$1 peers="" j
    for j in $(seq "$CLUSTER_NODES"); do
        peers+="${peers:+,}h$j=http://$(cluster_ip "$j"):2380"
    done
    ip netns exec "$(cluster_ns "$i")" "$ETCD" --name "h$i" --data-dir "$CLUSTER_DIR/etcd-$i" \
        --listen-client-urls "http://$(cluster_ip "$i"):2379" \
        --advertise-client-urls "http://$(cluster_ip "$i"):2379" \
        --listen-peer-urls "http://$(cluster_ip "$i"):2380" \
        --initial-advertise-peer-urls "http://$(cluster_ip "$i"):2380" \
        --initial-cluster "$peers" --initial-cluster-state new --pre-vote \
        --heartbeat-interval 50 --election-timeout 500 \
        >>"$CLUSTER_DIR/etcd-$i.log" 2>&1 &
    disown $!
}

# cluster_sites: node1..N site dirs (the guestbook, [vault] on a shared dir, [cluster]).
cluster_sites() {
    local clients="" j i
    for j in $(seq "$CLUSTER_NODES"); do
        clients+="${clients:+, }\"http://$(cluster_ip "$j"):2379\""
    done
    for i in $(seq "$CLUSTER_NODES"); do
        mkdir -p "$CLUSTER_DIR/node$i"
        cat >"$CLUSTER_DIR/node$i/lifeboat.toml" <<TOML
[site]
name = "guestbook"

[processes.web]
command = "$GUESTBOOK"
replicas = 2
env = { GUESTBOOK_ADMIN_PASSWORD = "demo-admin-password" }
health = { path = "/healthz", interval = "200ms", timeout = "1s" }

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "0.0.0.0:8080"

[vault]
destinations = ["$CLUSTER_DIR/vault"]
segment_interval = "250ms"

[cluster]
etcd = [$clients]
durability = "${CLUSTER_DURABILITY:-sync}"
TOML
    done
}

# cluster_node_start I: host I's lifeboat node (n I, zone z I); output in node I.log.
cluster_node_start() {
    local i=$1
    ip netns exec "$(cluster_ns "$i")" "$LIFEBOAT" up "$CLUSTER_DIR/node$i" --node "n$i" \
        --zone "z$i" --advertise "$(cluster_ip "$i")" >>"$CLUSTER_DIR/node$i.log" 2>&1 &
    disown $!
}

# cluster_up: network, etcd, sites, and the nodes (node 1 first: it makes the vault key the
# others get a copy of, as an owner copies it to each machine).
cluster_up() {
    cluster_net_up
    local i
    for i in $(seq "$CLUSTER_NODES"); do cluster_etcd_start "$i"; done
    cluster_sites
    cluster_node_start 1
    for _ in $(seq 300); do
        [ -f "$CLUSTER_DIR/node1/.lifeboat/vault.key" ] && break
        sleep 0.1
    done
    for i in $(seq 2 "$CLUSTER_NODES"); do
        mkdir -p "$CLUSTER_DIR/node$i/.lifeboat"
        cp "$CLUSTER_DIR/node1/.lifeboat/vault.key" "$CLUSTER_DIR/node$i/.lifeboat/"
        cluster_node_start "$i"
    done
}

# cluster_primary: the number of the node that says it is the primary (empty if none does).
cluster_primary() {
    local i
    for i in $(seq "$CLUSTER_NODES"); do
        if "$LIFEBOAT" -C "$CLUSTER_DIR/node$i" status --json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["role"]["role"] == "primary" else 1)' 2>/dev/null; then
            echo "$i"
            return
        fi
    done
}

# cluster_wait_primary SECONDS: waits until one node says it is the primary; prints its number.
cluster_wait_primary() {
    local p
    for _ in $(seq $(($1 * 10))); do
        p=$(cluster_primary)
        [ -n "$p" ] && { echo "$p"; return 0; }
        sleep 0.1
    done
    return 1
}

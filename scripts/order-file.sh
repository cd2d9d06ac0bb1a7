#!/usr/bin/env bash
# Regenerate daemon/weftd.order: the functions a running weftd executes, which the release build
# links first and together (lld `--symbol-ordering-file`, see daemon/build.rs), so that a node's
# weftd keeps a few MB of its binary resident instead of pages scattered over all of it.
#
#   sudo ./scripts/order-file.sh            (about 10 minutes; needs valgrind)
#
# For each store (file, etcd, kube: a real kube-apiserver) it brings up a one-node dual-stack
# lab, runs that node's weftd again under valgrind's callgrind with the same arguments (file: as
# a first start, after `weftd cleanup` and without its lease; etcd and kube: as a restart that
# finds both), and drives what a node does: the lease, peers (file store: 60 simulated ones), pod ADD / CHECK / DEL through the real weft-cni,
# the control socket (status, peers), /metrics and the health probes, then idles. The functions
# every store ran come first, then the rest by store. Re-run it after changes that rename many
# functions (a dependency upgrade, a new compiler): names it lists that no longer exist are
# ignored by the linker, so a stale file costs memory, never correctness.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
require_root order-file "the lab makes network namespaces"
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
cargo build --release --quiet
root=$PWD
lab=$root/target/release/weft-lab
work=$(mktemp -d /tmp/weft-order.XXXXXX)
labs=()
kube_lab=
cleanup() {
    pkill -f "callgrind-out-file=$work" 2>/dev/null || true
    if [ -n "$kube_lab" ]; then kill -INT "$kube_lab" 2>/dev/null && wait "$kube_lab" || true; fi
    for name in "${labs[@]}"; do "$lab" down "$name" >/dev/null 2>&1 || true; done
    for ns in $(ip netns list | awk -v p="${work##*.}" '$1 ~ "^wo" p {print $1}'); do ip netns del "$ns"; done
    rm -rf "$work"
}
trap cleanup EXIT

# Run the CNI plugin for pod $2 ($1: ADD, CHECK or DEL) against the lab node's socket $3.
cni() {
    echo "{\"cniVersion\":\"1.1.0\",\"name\":\"weft\",\"type\":\"weft\",\"daemonSocket\":\"$3\"}" |
        ip netns exec "$node_ns" env CNI_COMMAND="$1" CNI_CONTAINERID="order$2" \
            CNI_NETNS="/run/netns/$2" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
            "$root/target/release/weft-cni" >/dev/null
}

# Simulated peers in the file store: IPv6 for every one, IPv4 for the first 40.
file_peers() {
    python3 - "$1" <<'EOF'
import json, sys
for i in range(1, 61):
    mac = lambda f: "02:%02x:%02x:00:00:%02x" % (i >> 8, i & 0xff, f)
    ann = {"weft.dev/backend": "vxlan", "weft.dev/public-ip": f"100.64.{i}.1",
           "weft.dev/vtep-mac-v6": mac(6)}
    cidrs = [f"fd00:10:244:{i + 1:x}::/64"]
    if i <= 40:
        cidrs.insert(0, f"10.244.{i}.0/24")
        ann["weft.dev/vtep-mac"] = mac(4)
    record = {"name": f"sim-{i}", "podCIDRs": cidrs, "annotations": ann, "expires": 4000000000}
    open(f"{sys.argv[1]}/sim-{i}.json", "w").write(json.dumps(record))
EOF
}

# Bring up a one-node dual-stack lab on store $1; its name in $lab_name. A kube lab stays in the
# foreground (its process relays the API server into the node): it runs in the background here,
# its pid in $kube_lab, until `profile_store` interrupts it.
lab_up() {
    local out=$work/$1-lab.out
    if [ "$1" = kube ]; then
        "$lab" up --nodes 1 --pods 0 --ipv6 --store kube >"$out" 2>&1 &
        kube_lab=$!
        until grep -q "runs in the foreground" "$out"; do
            kill -0 "$kube_lab" 2>/dev/null || { cat "$out" >&2; exit 1; }
            sleep 1
        done
        lab_name=$(sed -n 's/.*--run-dir \/tmp\/weft-lab-\([^/]*\)\/.*/\1/p' "$out" | head -1)
    else
        "$lab" up --nodes 1 --pods 0 --ipv6 --store "$1" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
        lab_name=$(sed -n 's/.*weft-lab down \([^ ]*\) .*/\1/p' "$out")
        labs+=("$lab_name")
    fi
}

profile_store() {
    local store=$1 name pid args dir sock pod=wo${work##*.}${1:0:1}
    lab_up "$store"
    name=$lab_name
    pid=$(pgrep -f "weftd run .*weft-lab-$name/" | head -1)
    node_ns=$(ip netns identify "$pid")
    mapfile -d '' args < <(tail -c +1 "/proc/$pid/cmdline")
    mapfile -d '' envs < "/proc/$pid/environ"
    dir=/tmp/weft-lab-$name
    sock=$dir/node-1/run/cni.sock
    kill -KILL "$pid"
    # Gone, or a zombie (the foreground kube lab reaps its children only when it ends).
    while [ -n "$(ps -o stat= -p "$pid" | grep -v Z)" ]; do sleep 0.1; done
    if [ "$store" = file ]; then
        # A first start, as on a new node: no devices, no firewall table, no lease.
        ip netns exec "$node_ns" target/release/weftd cleanup >/dev/null 2>&1
        rm -f "$dir/node-1/state/lease.json" "$dir/store/nodes/node-1.json"
    fi
    ip netns exec "$node_ns" env -i "${envs[@]}" valgrind --tool=callgrind --demangle=no \
        --compress-strings=no --dump-line=no --callgrind-out-file="$work/$store.%p.cg" \
        "${args[@]}" >"$work/$store.log" 2>&1 &
    until [ -S "$sock" ] && grep -q "serving CNI" "$work/$store.log"; do sleep 1; done
    [ "$store" = file ] && file_peers "$dir/store/nodes"
    for p in 1 2; do ip netns add "$pod$p"; done
    for p in 1 2; do cni ADD "$pod$p" "$sock"; done
    cni CHECK "${pod}1" "$sock"
    cni DEL "${pod}2" "$sock"
    for what in status peers; do
        ip netns exec "$node_ns" target/release/weftd "$what" --run-dir "$dir/node-1/run" >/dev/null || true
    done
    for round in 1 2 3; do
        ip netns exec "$node_ns" curl -sf 127.0.0.1:9476/metrics >/dev/null || true
        ip netns exec "$node_ns" curl -sf 127.0.0.1:9475/healthz >/dev/null || true
        ip netns exec "$node_ns" curl -sf 127.0.0.1:9475/readyz >/dev/null || true
        sleep 10
    done
    cni DEL "${pod}1" "$sock"
    pkill -TERM -f "callgrind-out-file=$work/$store"
    while pgrep -f "callgrind-out-file=$work/$store" >/dev/null; do sleep 0.5; done
    echo "$store: $(cat "$work/$store".*.cg | grep -c '^fn=') function records"
    if [ "$store" = kube ]; then kill -INT "$kube_lab"; wait "$kube_lab" || true; fi
}

for store in file etcd kube; do profile_store "$store"; done
python3 - "$work" daemon/weftd.order <<'EOF'
import fileinput, glob, re, sys
work, out = sys.argv[1], sys.argv[2]
stores = ["file", "etcd", "kube"]
ran = {}
for store in stores:
    ob = cob = None
    # One file per process: weftd's, and the children it forked (to run nft) before their exec.
    for line in fileinput.input(glob.glob(f"{work}/{store}.*.cg"), errors="replace"):
        key, _, value = line.rstrip("\n").partition("=")
        if key == "ob":
            ob = value
        elif key == "cob":
            cob = value
        elif key in ("fn", "cfn"):
            obj = cob if key == "cfn" and cob else ob
            if key == "fn":
                cob = None
            name = re.sub(r"'\d+$", "", value)
            if obj and obj.endswith("/weftd") and not name.startswith(("0x", "(")):
                ran.setdefault(name, set()).add(store)
# Functions every store ran first, then by the first store that ran them; by name within each.
order = sorted(ran, key=lambda n: (len(ran[n]) < len(stores), min(stores.index(s) for s in ran[n]), n))
open(out, "w").write("".join(n + "\n" for n in order))
print(f"{out}: {len(order)} functions")
EOF

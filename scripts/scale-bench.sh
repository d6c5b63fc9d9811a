#!/usr/bin/env bash
# Configuration at scale through the stock `wg` tool, as an operator would do it: for each N
# given (default: 1000000 4194304), start `wgpmd run` in a fresh network namespace (AF_PACKET
# WAN on a veth, adaptive polling, one worker), generate a wg.conf of N peers (random public
# keys, one /32 allowed IP each), and time
#   - `wg setconf` of the N peers into the running daemon,
#   - `wg show <if> dump` of all of them (lines counted),
# and report the daemon's resident set growth per peer (VmRSS before and after the load), and
# the CPU time the daemon spent on each (utime + stime): on a shared machine the wall clock
# also counts the neighbours, the CPU time does not.
#
# Usage (as root, after `cargo build --release -p wgpmd`):
#   scripts/scale-bench.sh [N...]
# Needs wg (wireguard-tools), python3, iproute2; about 1.5 KB of RAM per peer for the daemon
# plus about as much for `wg` itself while it runs (4M peers: 10+ GB in all).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WGPMD:-$here/target/release/wgpmd}
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p wgpmd" >&2; exit 1; }
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 4194304)

tmp=$(mktemp -d /tmp/wgpmd-scale.XXXXXX)
ns=wgpmdscale$$
name=sc$$
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# The daemon's CPU time in seconds, minus what its busy-polling threads spend (only the UAPI
# thread's is wanted: the worker and control threads poll whatever happens).
uapi_cpu() {
    local t
    for t in /proc/$1/task/*; do
        if grep -q '^uapi-' "$t/comm"; then
            awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "$t/stat"
            return
        fi
    done
    echo 0
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%10s %10s %12s %12s %10s %12s %12s\n' peers setconf_s uapi_cpu_s peers_per_s dump_s uapi_cpu_s rss_B_per_peer
for n in "${sizes[@]}"; do
    python3 - "$n" >"$tmp/peers.conf" <<'EOF'
import base64, os, sys
n = int(sys.argv[1])
out = sys.stdout
out.write("[Interface]\nPrivateKey = %s\nListenPort = 51820\n" % base64.b64encode(os.urandom(32)).decode())
rnd = os.urandom(32 * n)
parts = []
for i in range(n):
    k = base64.b64encode(rnd[32 * i:32 * i + 32]).decode()
    parts.append("\n[Peer]\nPublicKey = %s\nAllowedIPs = %d.%d.%d.%d/32\n" % (k, 10 + (i >> 24), (i >> 16) & 255, (i >> 8) & 255, i & 255))
    if len(parts) == 65536:
        out.write("".join(parts)); parts = []
out.write("".join(parts))
EOF
    ip netns add "$ns"
    ip -n "$ns" link add wan0 type veth peer name wan1
    ip -n "$ns" link set wan0 up
    ip -n "$ns" link set wan1 up
    ip netns exec "$ns" "$bin" run --name "$name" --port af_packet:wan0 --address 192.0.2.1/24 \
        -l 0 --poll adaptive >"$tmp/wgpmd.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do [ -S "/var/run/wireguard/$name.sock" ] && break; sleep 0.1; done
    [ -S "/var/run/wireguard/$name.sock" ] || { cat "$tmp/wgpmd.log"; exit 1; }
    sleep 0.5
    rss0=$(rss_kib "$pid")
    c0=$(uapi_cpu "$pid")
    t0=$(date +%s.%N)
    wg setconf "$name" "$tmp/peers.conf"
    t1=$(date +%s.%N)
    c1=$(uapi_cpu "$pid")
    rss1=$(rss_kib "$pid")
    lines=$(wg show "$name" dump | wc -l)
    t2=$(date +%s.%N)
    c2=$(uapi_cpu "$pid")
    [ "$lines" -eq $((n + 1)) ] || { echo "dump listed $((lines - 1)) peers, not $n" >&2; exit 1; }
    awk -v n="$n" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v r0="$rss0" -v r1="$rss1" -v c0="$c0" -v c1="$c1" -v c2="$c2" 'BEGIN {
        printf "%10d %10.2f %12.2f %12.0f %10.2f %12.2f %12.0f\n", n, t1 - t0, c1 - c0, n / (t1 - t0), t2 - t1, c2 - c1, (r1 - r0) * 1024 / n }'
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    ip netns del "$ns"
done

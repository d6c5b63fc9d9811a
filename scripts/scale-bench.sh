#!/usr/bin/env bash
# Configuration at scale through the stock `wg` tool, as an operator would do it: for each N
# given (default: 1000000 4194304), start `wgpmd run` in a fresh network namespace (AF_PACKET
# WAN on a veth, adaptive polling, one worker), generate a wg.conf of N peers (random public
# keys, one /32 allowed IP each), and time
#   - `wg setconf` of the N peers into the running daemon,
#   - `wg show <if> dump` of all of them (lines counted),
# and report the daemon's resident set growth per peer (VmRSS before and after the load), the
# CPU time the daemon's UAPI thread spent on each (utime + stime), and the CPU time of `wg`
# itself (the client: it parses the file and writes the request, or parses the answer and
# prints the dump). On a shared machine the wall clock also counts the neighbours, the CPU
# times do not. Under the table, per N: how the daemon's `set` split between applying the
# request and publishing the tables (its log line), and the UAPI thread's context switches
# during the `wg setconf` (voluntary: it waited, for the socket or the readers of the old
# tables; involuntary: it was runnable and the scheduler ran something else).
#
# Then, to separate the daemon from the client, the same request as `wg setconf` writes it
# (`set=1`, the private key, the listen port, `replace_peers=true`, then per peer `public_key`,
# `replace_allowed_ips=true`, `allowed_ip`) is written straight into the socket of a second,
# fresh daemon from a file prepared beforehand ("raw set"), and a `get=1` is read back whole
# ("raw get", peers counted); these wall times are the daemon's side alone (plus the kernel's
# socket copies and a small Python reader).
#
# Usage (as root, after `cargo build --release -p wgpmd`):
#   scripts/scale-bench.sh [N...]
# Needs wg (wireguard-tools), python3, iproute2, GNU time (/usr/bin/time); about 1.5 KB of RAM
# per peer for the daemon plus about as much for `wg` itself while it runs (4M peers: 10+ GB in
# all), and about 250 bytes per peer in /tmp for the two request files.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WGPMD:-$here/target/release/wgpmd}
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p wgpmd" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "no /usr/bin/time: apt-get install time" >&2; exit 1; }
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 4194304)

tmp=$(mktemp -d /tmp/wgpmd-scale.XXXXXX)
ns=wgpmdscale$$
name=sc$$
sock=/var/run/wireguard/$name.sock
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
uapi_tid() {
    local t
    for t in /proc/$1/task/*; do
        if grep -q '^uapi-' "$t/comm"; then
            basename "$t"
            return
        fi
    done
}
# Voluntary and involuntary context switches of the UAPI thread.
uapi_switches() {
    awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 } END { print v, n }' \
        "/proc/$1/task/$(uapi_tid "$1")/status"
}
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
now() { date +%s.%N; }
# The daemon's timing of its last `set` (from its log; older builds do not log it).
set_timing() { grep -o 'applied in .*' "$tmp/wgpmd.log" | tail -1 || echo "(no timing in the daemon's log)"; }

start_daemon() {
    ip netns add "$ns"
    ip -n "$ns" link add wan0 type veth peer name wan1
    ip -n "$ns" link set wan0 up
    ip -n "$ns" link set wan1 up
    ip netns exec "$ns" "$bin" run --name "$name" --port af_packet:wan0 --address 192.0.2.1/24 \
        -l 0 --poll adaptive >"$tmp/wgpmd.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$tmp/wgpmd.log"; exit 1; }
    sleep 0.5
}
stop_daemon() {
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    ip netns del "$ns"
}

# A UAPI client: `set FILE` writes FILE into the socket and prints the answer's errno line;
# `get` sends get=1 and prints the number of peers in the answer.
cat >"$tmp/uapi.py" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
if sys.argv[2] == "set":
    with open(sys.argv[3], "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            s.sendall(b)
    print(s.makefile("rb").read().decode().strip())
else:
    s.sendall(b"get=1\n\n")
    peers, tail, last = 0, b"", b""
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        peers += (tail + b).count(b"\npublic_key=")
        tail = b[-12:]
        last = (last + b)[-9:]
    if last != b"errno=0\n\n":
        sys.exit("get answer did not end with errno=0")
    print(peers)
EOF

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%10s | %9s %8s %9s %9s | %8s %8s %9s %9s | %9s\n' peers setconf_s wg_cpu uapi_cpu raw_set_s \
    dump_s wg_cpu uapi_cpu raw_get_s rss_B/peer
notes=()
for n in "${sizes[@]}"; do
    python3 - "$n" "$tmp/peers.conf" "$tmp/set.uapi" <<'EOF'
import base64, os, sys
n = int(sys.argv[1])
conf, uapi = open(sys.argv[2], "w"), open(sys.argv[3], "w")
priv = os.urandom(32)
conf.write("[Interface]\nPrivateKey = %s\nListenPort = 51820\n" % base64.b64encode(priv).decode())
uapi.write("set=1\nprivate_key=%s\nlisten_port=51820\nreplace_peers=true\n" % priv.hex())
rnd = os.urandom(32 * n)
parts, raw = [], []
for i in range(n):
    k = rnd[32 * i:32 * i + 32]
    ip = "%d.%d.%d.%d/32" % (10 + (i >> 24), (i >> 16) & 255, (i >> 8) & 255, i & 255)
    parts.append("\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n" % (base64.b64encode(k).decode(), ip))
    raw.append("public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s\n" % (k.hex(), ip))
    if len(parts) == 65536:
        conf.write("".join(parts)); uapi.write("".join(raw)); parts, raw = [], []
conf.write("".join(parts))
uapi.write("".join(raw) + "\n")
EOF
    # Through `wg`.
    start_daemon
    rss0=$(rss_kib "$pid")
    c0=$(uapi_cpu "$pid")
    read -r v0 n0 < <(uapi_switches "$pid")
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$tmp/wg_set.time" wg setconf "$name" "$tmp/peers.conf"
    t1=$(now)
    c1=$(uapi_cpu "$pid")
    read -r v1 n1 < <(uapi_switches "$pid")
    rss1=$(rss_kib "$pid")
    lines=$( (/usr/bin/time -f '%U %S' -o "$tmp/wg_dump.time" wg show "$name" dump) | wc -l)
    t2=$(now)
    c2=$(uapi_cpu "$pid")
    [ "$lines" -eq $((n + 1)) ] || { echo "dump listed $((lines - 1)) peers, not $n" >&2; exit 1; }
    notes+=("$n: wg setconf: $(set_timing); UAPI thread context switches: $((v1 - v0)) voluntary, $((n1 - n0)) involuntary")
    stop_daemon
    # Straight into the socket.
    start_daemon
    t3=$(now)
    answer=$(python3 "$tmp/uapi.py" "$sock" set "$tmp/set.uapi")
    t4=$(now)
    [ "$answer" = "errno=0" ] || { echo "raw set answered $answer" >&2; exit 1; }
    got=$(python3 "$tmp/uapi.py" "$sock" get)
    t5=$(now)
    [ "$got" -eq "$n" ] || { echo "raw get listed $got peers, not $n" >&2; exit 1; }
    notes+=("$n: raw set: $(set_timing)")
    stop_daemon
    read -r su ss <"$tmp/wg_set.time"
    read -r du ds <"$tmp/wg_dump.time"
    awk -v n="$n" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" -v t5="$t5" -v r0="$rss0" \
        -v r1="$rss1" -v c0="$c0" -v c1="$c1" -v c2="$c2" -v su="$su" -v ss="$ss" -v du="$du" -v ds="$ds" 'BEGIN {
        printf "%10d | %9.2f %8.2f %9.2f %9.2f | %8.2f %8.2f %9.2f %9.2f | %9.0f\n", n, t1 - t0, su + ss, c1 - c0,
            t4 - t3, t2 - t1, du + ds, c2 - c1, t5 - t4, (r1 - r0) * 1024 / n }'
done
for note in "${notes[@]}"; do echo "$note"; done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

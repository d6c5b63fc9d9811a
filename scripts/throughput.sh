#!/usr/bin/env bash
# Tunnel throughput on this machine: iperf3 (TCP, one stream) through a WireGuard tunnel between a
# wireguard-go peer and a concentrator, with the concentrator being, in turn, wireguard-go, wgpmd
# on af_xdp: and wgpmd on af_packet: (TUN inner port in both), several rounds interleaved so that
# machine noise hits every variant alike. Prints each measurement, the medians, the ratios to
# wireguard-go, and wgpmd's WAN ring drops (wan_queue_rx_dropped) during each run.
#
#   scripts/throughput.sh [ROUNDS] [SECONDS]      (as root; default 3 rounds of 5 s per direction)
#   VARIANTS="wggo af_packet" WGPMD_BIN=/path/to/other/wgpmd scripts/throughput.sh   (a subset, another build)
#   WGPMD_BASE_BIN=/path/to/older/wgpmd scripts/throughput.sh   (adds variant base_af_packet: that
#   build on af_packet:, interleaved with the others: a before/after in one run)
#
#   namespace tp-<pid>-c (concentrator): veth 10.98.0.1/24 (2 queues), tunnel 10.100.0.1/24
#   namespace tp-<pid>-p (peer):         veth 10.98.0.2/24, wireguard-go, tunnel 10.100.0.2/24
#
# forward = peer -> concentrator (the concentrator decrypts), reverse = concentrator -> peer
# (iperf3 -R: the concentrator encrypts). wgpmd runs as the issue's small-machine setup:
# -l 0-1 --control-shares-core --poll adaptive (two workers, so the veth has two queues).
# Needs wgpmd built (cargo build --release -p wgpmd), wireguard-go, wg, iperf3. Removes everything
# it created on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
WGPMD=${WGPMD_BIN:-$PWD/target/release/wgpmd}
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
[[ -x $WGPMD ]] || { echo "no $WGPMD: cargo build --release -p wgpmd" >&2; exit 1; }
for t in wireguard-go wg iperf3; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done

ID=$$
NC=tp-$ID-c NP=tp-$ID-p
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$NC" 2>/dev/null
    ip netns del "$NP" 2>/dev/null
    rm -f /var/run/wireguard/tpc$ID.sock /var/run/wireguard/tpp$ID.sock /var/run/wgpmd/tpc$ID.sock
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NC"
ip netns add "$NP"
ip link add tpa$ID netns "$NC" numtxqueues 2 numrxqueues 2 type veth peer name tpb$ID netns "$NP" numtxqueues 2 numrxqueues 2
ip -n "$NC" link set lo up
ip -n "$NP" link set lo up
ip -n "$NC" link set tpa$ID up
ip -n "$NP" addr add 10.98.0.2/24 dev tpb$ID
ip -n "$NP" link set tpb$ID up

KC=$(wg genkey) KP=$(wg genkey)
printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.100.0.2/32\n' \
    "$KC" "$(wg pubkey <<<"$KP")" >"$TMP/c.conf"
printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n[Peer]\nPublicKey = %s\nEndpoint = 10.98.0.1:51820\nAllowedIPs = 10.100.0.0/24\n' \
    "$KP" "$(wg pubkey <<<"$KC")" >"$TMP/p.conf"
chmod 600 "$TMP"/*.conf

wait_sock() { for ((n = 0; n < 100; n++)); do [[ -S $1 ]] && return 0; sleep 0.1; done; echo "no $1" >&2; return 1; }
stop_pid() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null || true; }

start_peer() {
    LOG_LEVEL=error ip netns exec "$NP" wireguard-go -f tpp$ID >"$TMP/peer.log" 2>&1 &
    PEER=$!
    PIDS+=("$PEER")
    wait_sock /var/run/wireguard/tpp$ID.sock
    wg setconf tpp$ID "$TMP/p.conf"
    ip -n "$NP" addr add 10.100.0.2/24 dev tpp$ID
    ip -n "$NP" link set tpp$ID mtu 1420 up
}

# start_conc VARIANT: wggo | af_xdp | af_packet
start_conc() {
    ip -n "$NC" addr flush dev tpa$ID
    case $1 in
    wggo)
        ip -n "$NC" addr add 10.98.0.1/24 dev tpa$ID
        LOG_LEVEL=error ip netns exec "$NC" wireguard-go -f tpc$ID >"$TMP/conc.log" 2>&1 &
        CONC=$!
        PIDS+=("$CONC")
        wait_sock /var/run/wireguard/tpc$ID.sock
        wg setconf tpc$ID "$TMP/c.conf"
        ip -n "$NC" link set tpc$ID mtu 1420
        ;;
    af_xdp | af_packet | base_af_packet)
        # af_xdp: the kernel keeps the address; af_packet: wgpmd owns it.
        [[ $1 == af_xdp ]] && ip -n "$NC" addr add 10.98.0.1/24 dev tpa$ID
        local bin=$WGPMD port=${1#base_}
        [[ $1 == base_* ]] && bin=$WGPMD_BASE_BIN
        NO_COLOR=1 ip netns exec "$NC" "$bin" run tpc$ID --config "$TMP/c.conf" --port "$port:tpa$ID" \
            --address 10.98.0.1/24 -l 0-1 --control-shares-core --poll adaptive >"$TMP/conc.log" 2>&1 &
        CONC=$!
        PIDS+=("$CONC")
        wait_sock /var/run/wireguard/tpc$ID.sock
        ;;
    esac
    ip -n "$NC" addr add 10.100.0.1/24 dev tpc$ID
    ip -n "$NC" link set tpc$ID up
}

drops() { # wgpmd's WAN ring drops so far (0 for wireguard-go)
    [[ $1 == wggo ]] && { echo 0; return; }
    "$WGPMD" stats tpc$ID | awk -F= '/^worker[0-9]+\.wan_queue_rx_dropped=/ {s += $2} END {print s + 0}'
}

# run_iperf DIR: Mbit/s at the receiver
run_iperf() {
    local rev=()
    [[ $1 == reverse ]] && rev=(-R)
    ip netns exec "$NC" iperf3 -s -1 -B 10.100.0.1 >/dev/null 2>&1 &
    local srv=$!
    PIDS+=("$srv")
    for ((n = 0; n < 50; n++)); do ip netns exec "$NC" ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.1; done
    ip netns exec "$NP" iperf3 -c 10.100.0.1 -t "$SECS" -f m "${rev[@]}" >"$TMP/iperf.log" 2>&1 || { cat "$TMP/iperf.log" >&2; return 1; }
    wait "$srv" 2>/dev/null || true
    awk '/receiver/ {for (f = 1; f <= NF; f++) if ($f == "Mbits/sec") print $(f - 1)}' "$TMP/iperf.log"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) vCPU, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wireguard-go $(wireguard-go --version | sed -n 's/^wireguard-go v//p'); wgpmd $($WGPMD --version | cut -d' ' -f2); $ROUNDS round(s) of ${SECS} s per direction"
declare -A R
read -ra VARIANTS <<<"${VARIANTS:-wggo af_xdp af_packet${WGPMD_BASE_BIN:+ base_af_packet}}"
for ((r = 1; r <= ROUNDS; r++)); do
    for v in "${VARIANTS[@]}"; do
        start_conc "$v"
        start_peer
        for ((n = 0; n < 100; n++)); do ip netns exec "$NP" ping -c1 -W1 -q 10.100.0.1 >/dev/null 2>&1 && break; done
        for dir in forward reverse; do
            d0=$(drops "$v")
            m=$(run_iperf "$dir")
            d1=$(drops "$v")
            R[$v.$dir]+="$m "
            R[$v.$dir.drops]+="$((d1 - d0)) "
            printf 'round %d  %-9s %-7s %8s Mbit/s   WAN ring drops %s\n' "$r" "$v" "$dir" "$m" "$((d1 - d0))"
        done
        stop_pid "$PEER"
        stop_pid "$CONC"
        ip -n "$NP" link del tpp$ID 2>/dev/null || true
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
echo
printf '%-10s %14s %14s %12s %12s   %s\n' concentrator "forward Mbit/s" "reverse Mbit/s" "fwd ratio" "rev ratio" "WAN ring drops (fwd | rev)"
base_f=$(median <<<"${R[wggo.forward]}")
base_r=$(median <<<"${R[wggo.reverse]}")
for v in "${VARIANTS[@]}"; do
    f=$(median <<<"${R[$v.forward]}")
    rv=$(median <<<"${R[$v.reverse]}")
    printf '%-10s %14s %14s %12s %12s   %s| %s\n' "$v" "$f" "$rv" \
        "$(awk -v a="$f" -v b="$base_f" 'BEGIN {printf "%.2fx", a / b}')" \
        "$(awk -v a="$rv" -v b="$base_r" 'BEGIN {printf "%.2fx", a / b}')" "${R[$v.forward.drops]}" "${R[$v.reverse.drops]}"
done
echo "(medians of $ROUNDS round(s); every run is listed above)"

#!/usr/bin/env bash
# wgpmd on this machine, no spare NIC needed: a concentrator and four WireGuard peers in network
# namespaces on one virtual LAN, traffic through the tunnels, then everything removed again.
#
#   scripts/demo.sh                 (as root: namespaces, veths, a TUN device)
#
#   LAN namespace: bridge br0
#    ├─ veth ── wgpmd namespace: wgpmd on af_packet:wan0 (WAN 10.99.0.1, answered by wgpmd
#    │          itself: the kernel holds no address on wan0), TUN wgpmd<pid> 10.100.0.1/24
#    └─ veth ── peer<i> namespace (i = 0..3): wireguard-go, eth0 10.99.0.1<i>, tunnel 10.100.0.1<i>
#
# Installs what is missing (apt: wireguard-go wireguard-tools iperf3 iputils-ping iproute2),
# builds wgpmd (cargo build --release -p wgpmd), and exits non-zero if any step fails. Names
# carry this script's PID, so it never clashes with the tests or another run. Everything it
# creates (namespaces, interfaces, processes, sockets, its temporary directory) is removed on
# exit, also on error or Ctrl-C. DEMO_KEEP=1 keeps the temporary directory (configs and logs).
# See docs/OPERATIONS.md for running wgpmd yourself.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly N_PEERS=4
readonly IPERF_SECONDS=5
readonly IPERF_CLIENTS=2
readonly WAN_IP=10.99.0.1 INNER_IP=10.100.0.1 LISTEN_PORT=51820
T0=$SECONDS

if [[ -t 1 ]]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
section() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
say() { printf '   %s\n' "$*"; }
ok() { printf '   %s✓%s %s\n' "$G" "$N" "$*"; }
indent() { sed 's/^/     /'; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

if [[ $EUID -ne 0 ]]; then
    echo "scripts/demo.sh must run as root: it creates network namespaces, veth pairs and a TUN" >&2
    echo "device (nothing outside its own namespaces is touched). Run it as root." >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Cleanup: everything below registers what it creates here; the EXIT trap removes it all.
ID=$$
NS_LAN=wgpmd-demo-$ID-lan
NS_W=wgpmd-demo-$ID-wgpmd
WG_IF=wgpmd$ID          # wgpmd's interface: TUN, /var/run/wireguard/$WG_IF.sock, `wg show $WG_IF`
peer_ns() { echo "wgpmd-demo-$ID-peer$1"; }
peer_if() { echo "wgo${ID}p$1"; }   # ≤ 15 bytes; the UAPI directory is shared by all namespaces
NAMESPACES=()
PIDS=()
NPROCS=0  # started in total
TMP=""
FAILED_STEP=""

started() { PIDS+=("$1"); NPROCS=$((NPROCS + 1)); }
forget() { # a PID we reaped ourselves: never signal it again (it may be reused)
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
running() { # alive and not yet a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [[ ${st:0:1} != Z ]]
}
any_running() {
    local p
    for p; do running "$p" && return 0; done
    return 1
}
stop_pids() { # SIGTERM, SIGKILL what is left after 5 s, then reap (they are our children)
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null
    local p n
    for ((n = 0; n < 50; n++)); do
        any_running "$@" || break
        sleep 0.1
    done
    for p in "$@"; do running "$p" && kill -KILL "$p" 2>/dev/null; done
    wait "$@" 2>/dev/null
}

cleanup() {
    local rc=$?
    trap '' INT TERM   # a second Ctrl-C must not cut the cleanup short (it takes a few seconds)
    trap - EXIT
    set +e
    if ((rc == 130 || rc == 143)); then
        printf '\n%s== %s%s: cleaning up\n' "$R$B" "$FAILED_STEP" "$N"
    elif ((rc != 0)); then
        printf '\n%s== FAILED: %s%s (exit %s)\n' "$R$B" "${FAILED_STEP:-unexpected error}" "$N" "$rc"
        if [[ -n $TMP && -d $TMP ]]; then
            local log text
            for log in "$TMP"/*.log; do
                [[ $log != */build.log || $FAILED_STEP == cargo* ]] || continue
                # wireguard-go's "not required on this kernel" banner says nothing here.
                text=$(grep -v '^[│┌└]' "$log" | strip_ansi | tail -n 12)
                [[ -n $text ]] || continue
                printf '%s----- %s (last lines) -----%s\n%s\n' "$D" "${log##*/}" "$N" "$text"
            done
        fi
    fi
    local live=()
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && live+=("$pid"); done
    stop_pids "${live[@]}"
    # Safety net: only this script starts processes in its namespaces.
    local left
    for ns in "${NAMESPACES[@]}"; do
        mapfile -t left < <(ip netns pids "$ns" 2>/dev/null)
        ((${#left[@]} == 0)) || kill -KILL "${left[@]}" 2>/dev/null
    done
    for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do ip netns del "${NAMESPACES[i]}" 2>/dev/null; done
    # Sockets a killed daemon could not remove (names carry our PID: only ours).
    rm -f "/var/run/wireguard/$WG_IF.sock" "/var/run/wgpmd/$WG_IF.sock"
    for ((i = 0; i < N_PEERS; i++)); do rm -f "/var/run/wireguard/$(peer_if $i).sock"; done
    if [[ -n $TMP ]]; then
        if [[ ${DEMO_KEEP:-0} == 1 ]]; then echo "kept $TMP (holds private keys: remove it when done)"; else rm -rf "$TMP"; fi
    fi
    local left_ns
    left_ns=$(ip netns list | grep -c "^wgpmd-demo-$ID-")
    if ((left_ns > 0)); then
        printf '%scleanup incomplete: %s namespace(s) wgpmd-demo-%s-* remain (ip netns list)%s\n' "$R" "$left_ns" "$ID" "$N"
        ((rc != 0)) || rc=1
    else
        printf 'cleaned up: %s namespaces (with their veths, bridge and TUNs), %s process(es), sockets, temporary files\n' "${#NAMESPACES[@]}" "$NPROCS"
    fi
    exit "$rc"
}
trap cleanup EXIT
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wgpmd-demo-$ID.XXXXXX")
chmod 700 "$TMP"
trap 'FAILED_STEP=${FAILED_STEP:-interrupted}; exit 130' INT
trap 'FAILED_STEP=${FAILED_STEP:-terminated}; exit 143' TERM

die() { FAILED_STEP=$1; exit 1; }
# Poll `cmd` every 0.1 s for up to $1 seconds.
wait_for() {
    local t=$1; shift
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.1
    done
}
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ---------------------------------------------------------------------------------------------
section "Tools"
need_apt=()
{ command -v ip && command -v ss; } >/dev/null || need_apt+=(iproute2)
command -v wireguard-go >/dev/null || need_apt+=(wireguard-go)
command -v wg >/dev/null || need_apt+=(wireguard-tools)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
command -v ping >/dev/null || need_apt+=(iputils-ping)
if ((${#need_apt[@]})); then
    command -v apt-get >/dev/null || die "missing ${need_apt[*]} and no apt-get: install them by hand"
    say "installing ${need_apt[*]} (apt, --no-install-recommends: wireguard-tools would pull in a kernel)"
    apt-get update -qq || die "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
        || die "apt-get install ${need_apt[*]}"
fi
ok "wireguard-go $(wireguard-go --version | sed -n 's/^wireguard-go v//p'), $(wg --version | cut -d' ' -f1-2), $(iperf3 --version | head -n1 | cut -d' ' -f1-2)"

# Build as the invoking user under sudo (keeps target/ theirs, finds their rustup cargo).
build=(cargo build --release -p wgpmd)
if [[ -n ${SUDO_USER:-} && $SUDO_USER != root && $(stat -c %U .) == "$SUDO_USER" ]]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    build=(sudo -u "$SUDO_USER" -H env "PATH=$user_home/.cargo/bin:$PATH" "${build[@]}")
elif ! command -v cargo >/dev/null; then
    [[ -x $HOME/.cargo/bin/cargo ]] || die "cargo not found: install Rust (https://rustup.rs), then run this again"
    PATH=$HOME/.cargo/bin:$PATH
fi
say "building: cargo build --release -p wgpmd"
"${build[@]}" >"$TMP/build.log" 2>&1 || die "cargo build --release -p wgpmd"
grep -E 'Finished' "$TMP/build.log" | indent || true
WGPMD=$PWD/${CARGO_TARGET_DIR:-target}/release/wgpmd
[[ -x $WGPMD ]] || die "no binary at $WGPMD"
ok "$WGPMD"
T_BUILT=$SECONDS

# Cores: up to 4 of those this process may use. 2 cores: both run workers and the control plane
# shares the first (--control-shares-core); 3 or more: the first runs the control plane only.
cpus=()
IFS=, read -ra ranges <<<"$(sed -n 's/^Cpus_allowed_list:\s*//p' /proc/self/status)"
for r in "${ranges[@]}"; do
    for ((c = ${r%-*}; c <= ${r#*-}; c++)); do cpus+=("$c"); done
done
cpus=("${cpus[@]:0:4}")
CORES=$(IFS=,; echo "${cpus[*]}")
CORE_ARGS=(-l "$CORES")
((${#cpus[@]} == 2)) && CORE_ARGS+=(--control-shares-core)

# ---------------------------------------------------------------------------------------------
section "Network: a LAN bridge, wgpmd and $N_PEERS peers, each in its own namespace"
new_ns() {
    ip netns add "$1" || die "ip netns add $1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
}
new_ns "$NS_LAN"
{ ip -n "$NS_LAN" link add br0 type bridge && ip -n "$NS_LAN" link set br0 up; } || die "bridge"
# One veth from the bridge into namespace $1, named $2 there.
attach() {
    local port=$3
    ip -n "$NS_LAN" link add "$port" type veth peer name "$2" netns "$1" || die "veth into $1"
    ip -n "$NS_LAN" link set "$port" master br0 up
    ip -n "$1" link set "$2" up
}
new_ns "$NS_W"
attach "$NS_W" wan0 wgpmd
say "$NS_W: wan0 on the bridge, no kernel address (wgpmd owns $WAN_IP)"
for ((i = 0; i < N_PEERS; i++)); do
    new_ns "$(peer_ns $i)"
    attach "$(peer_ns $i)" eth0 "peer$i"
    ip -n "$(peer_ns $i)" addr add "10.99.0.1$i/24" dev eth0
done
say "$(peer_ns 0) .. peer$((N_PEERS - 1)): eth0 10.99.0.10 .. 10.99.0.1$((N_PEERS - 1))/24"
ok "$((${#NAMESPACES[@]})) namespaces (ip netns list | grep wgpmd-demo-$ID)"

# ---------------------------------------------------------------------------------------------
section "Keys and configuration (in $TMP)"
umask 077
W_KEY=$(wg genkey)
W_PUB=$(wg pubkey <<<"$W_KEY")
{
    printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n' "$W_KEY" "$LISTEN_PORT"
    for ((i = 0; i < N_PEERS; i++)); do
        k=$(wg genkey)
        echo "$k" >"$TMP/peer$i.key"
        printf '\n[Peer]   # peer%s\nPublicKey = %s\nAllowedIPs = 10.100.0.1%s/32\n' "$i" "$(wg pubkey <"$TMP/peer$i.key")" "$i"
    done
} >"$TMP/wgpmd.conf"
for ((i = 0; i < N_PEERS; i++)); do
    printf '[Interface]\nPrivateKey = %s\n\n[Peer]\nPublicKey = %s\nEndpoint = %s:%s\nAllowedIPs = 10.100.0.0/24\n' \
        "$(cat "$TMP/peer$i.key")" "$W_PUB" "$WAN_IP" "$LISTEN_PORT" >"$TMP/peer$i.conf"
done
say "wgpmd.conf: [Interface] PrivateKey, ListenPort $LISTEN_PORT; one [Peer] per peer, AllowedIPs its /32, no Endpoint"
say "            (a concentrator learns endpoints from the peers' handshakes)"
say "peer<i>.conf: wgpmd as the only peer, Endpoint $WAN_IP:$LISTEN_PORT, AllowedIPs 10.100.0.0/24"
ok "wgpmd public key $W_PUB"

# ---------------------------------------------------------------------------------------------
section "Start wgpmd"
cmd=("$WGPMD" -v run "$WG_IF" --config "$TMP/wgpmd.conf" --port af_packet:wan0
    --address "$WAN_IP/24" "${CORE_ARGS[@]}" --poll adaptive)
say "ip netns exec $NS_W \\"
say "  wgpmd ${cmd[*]:1}"
NO_COLOR=1 ip netns exec "$NS_W" "${cmd[@]}" >"$TMP/wgpmd.log" 2>&1 &
WGPMD_PID=$!
started "$WGPMD_PID"
wgpmd_ready() { running "$WGPMD_PID" && [[ -S /var/run/wireguard/$WG_IF.sock ]] && ip -n "$NS_W" link show "$WG_IF"; }
for ((n = 0; n < 100; n++)); do
    wgpmd_ready >/dev/null 2>&1 && break
    running "$WGPMD_PID" || die "wgpmd exited at start (its log is below)"
    sleep 0.1
done
wgpmd_ready >/dev/null 2>&1 || die "wgpmd did not come up within 10 s (its log is below)"
grep -m1 -o "$WG_IF: WAN.*" "$TMP/wgpmd.log" | strip_ansi | indent || true
{ ip -n "$NS_W" addr add "$INNER_IP/24" dev "$WG_IF" && ip -n "$NS_W" link set "$WG_IF" up; } || die "address on $WG_IF"
ok "pid $WGPMD_PID; TUN $WG_IF $INNER_IP/24 (MTU $(ip -n "$NS_W" -o link show "$WG_IF" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')), UAPI /var/run/wireguard/$WG_IF.sock"

# ---------------------------------------------------------------------------------------------
section "Start $N_PEERS wireguard-go peers"
for ((i = 0; i < N_PEERS; i++)); do
    ns=$(peer_ns $i) ifn=$(peer_if $i)
    LOG_LEVEL=error ip netns exec "$ns" wireguard-go -f "$ifn" >"$TMP/$ifn.log" 2>&1 &
    started $!
    pid=$!
    peer_up() { running "$1" && [[ -S /var/run/wireguard/$2.sock ]] && ip -n "$3" link show "$2"; }
    wait_for 10 peer_up "$pid" "$ifn" "$ns" || die "wireguard-go in $ns did not come up"
    wg setconf "$ifn" "$TMP/peer$i.conf" || die "wg setconf $ifn"
    { ip -n "$ns" addr add "10.100.0.1$i/24" dev "$ifn" && ip -n "$ns" link set "$ifn" mtu 1420 up; } || die "address on $ifn"
    say "peer$i: wireguard-go pid $pid, $ifn 10.100.0.1$i/24"
done
ok "$N_PEERS peers configured"

# ---------------------------------------------------------------------------------------------
section "Ping"
# ping_summary NS DST COUNT: "3/3 received, rtt avg 0.31 ms"
ping_summary() {
    local out
    out=$(in_ns "$1" ping -n -q -c "$3" -i 0.2 -W 1 "$2" 2>&1) || { echo "$out" | tail -n 3 >&2; return 1; }
    awk -F'[ /,]+' '/packets transmitted/ {tx = $1; rx = $4} /^rtt/ {avg = $8}
        END {printf "%s/%s received, rtt avg %s ms", rx, tx, avg}' <<<"$out"
}
r=$(ping_summary "$(peer_ns 0)" "$WAN_IP" 3) || die "peer0 → $WAN_IP (WAN: ARP and ICMP echo answered by wgpmd)"
ok "WAN   peer0 → $WAN_IP (wgpmd answers ARP and echo itself): $r"
for ((i = 0; i < N_PEERS; i++)); do
    # The first packet triggers the handshake (the peers initiate): wait for the tunnel.
    wait_for 15 in_ns "$(peer_ns $i)" ping -n -c 1 -W 1 "$INNER_IP" || die "peer$i → $INNER_IP through the tunnel"
    r=$(ping_summary "$(peer_ns $i)" "$INNER_IP" 3) || die "peer$i → $INNER_IP through the tunnel"
    ok "tunnel peer$i (10.100.0.1$i) → wgpmd ($INNER_IP): $r"
done
for ((i = 0; i < N_PEERS; i++)); do
    r=$(ping_summary "$NS_W" "10.100.0.1$i" 3) || die "wgpmd side → peer$i (10.100.0.1$i) through the tunnel"
    ok "tunnel wgpmd ($INNER_IP) → peer$i (10.100.0.1$i): $r"
done
# Peer to peer: wgpmd decrypts into its TUN, the kernel routes back out of it, wgpmd encrypts.
# Forwarding on the TUN only: wan0 belongs to wgpmd, the kernel must not route what arrives there.
in_ns "$NS_W" sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.conf.wan0.forwarding=0 \
    net.ipv4.conf.all.send_redirects=0 "net.ipv4.conf.$WG_IF.send_redirects=0" || die "ip_forward in $NS_W"
r=$(ping_summary "$(peer_ns 0)" 10.100.0.1$((N_PEERS - 1)) 3) || die "peer0 → peer$((N_PEERS - 1)) through wgpmd"
ok "via   peer0 → peer$((N_PEERS - 1)) through wgpmd (kernel forwarding on its TUN): $r"

# ---------------------------------------------------------------------------------------------
section "Throughput: iperf3 (TCP, ${IPERF_SECONDS} s) from $IPERF_CLIENTS peers through the tunnel to the wgpmd side"
cli=()
for ((i = 0; i < IPERF_CLIENTS; i++)); do
    ip netns exec "$NS_W" iperf3 -s -1 -B "$INNER_IP" -p $((5201 + i)) >"$TMP/iperf3-server$i.log" 2>&1 &
    started $!
done
listening() { [[ $(in_ns "$NS_W" ss -Hltn "sport = :$1" | wc -l) -gt 0 ]]; }
for ((i = 0; i < IPERF_CLIENTS; i++)); do wait_for 5 listening $((5201 + i)) || die "iperf3 server on port $((5201 + i))"; done
say "clients: $(for ((i = 0; i < IPERF_CLIENTS; i++)); do printf 'peer%s ' $i; done)→ $INNER_IP, in parallel"
for ((i = 0; i < IPERF_CLIENTS; i++)); do
    ip netns exec "$(peer_ns $i)" iperf3 -c "$INNER_IP" -p $((5201 + i)) -t "$IPERF_SECONDS" -f m >"$TMP/iperf3-peer$i.log" 2>&1 &
    started $!
    cli+=($!)
done
for ((i = 0; i < IPERF_CLIENTS; i++)); do
    rc=0
    wait "${cli[i]}" || rc=$?
    forget "${cli[i]}"
    ((rc == 0)) || die "iperf3 from peer$i (log below)"
done
total=0
rates=()
for ((i = 0; i < IPERF_CLIENTS; i++)); do
    m=$(awk '/receiver/ {for (f = 1; f <= NF; f++) if ($f == "Mbits/sec") print $(f - 1)}' "$TMP/iperf3-peer$i.log")
    [[ -n $m ]] || die "no receiver line in iperf3 output of peer$i"
    rates+=("peer$i $m")
    total=$(awk -v a="$total" -v b="$m" 'BEGIN {print a + b}')
done
printf -v each '%s, ' "${rates[@]}"
THROUGHPUT="$total Mbit/s total (${each%, } Mbit/s; TCP, ${IPERF_SECONDS} s)"
ok "$THROUGHPUT"

# ---------------------------------------------------------------------------------------------
section "wg show $WG_IF   (the stock wg tool, over wgpmd's UAPI socket)"
wg show "$WG_IF" | indent || die "wg show $WG_IF"

section "wgpmd log   (-v: the wg(4) debug messages)"
grep -i 'handshake' "$TMP/wgpmd.log" | strip_ansi | sed -E 's/^[0-9T:.-]+Z +[A-Z]+ +[a-z_:]+: //' | tail -n 8 | indent

section "wgpmd stats $WG_IF   (non-zero counters)"
"$WGPMD" stats "$WG_IF" >"$TMP/stats.txt" || die "wgpmd stats $WG_IF"
# Two columns: the first half of the non-zero lines on the left, the rest on the right.
grep -v '=0$' "$TMP/stats.txt" | awk '{l[NR] = $0} END {h = int((NR + 1) / 2); for (i = 1; i <= h; i++) printf "%-44s %s\n", l[i], l[i + h]}' | indent

# ---------------------------------------------------------------------------------------------
section "Stop wgpmd (SIGTERM: clean stop)"
kill -TERM "$WGPMD_PID"
for ((n = 0; n < 100; n++)); do running "$WGPMD_PID" || break; sleep 0.1; done
running "$WGPMD_PID" && die "wgpmd did not stop within 10 s of SIGTERM"
rc=0
wait "$WGPMD_PID" || rc=$?
forget "$WGPMD_PID"
[[ $rc == 0 ]] || die "wgpmd exited with status $rc after SIGTERM"
[[ ! -e /var/run/wireguard/$WG_IF.sock && ! -e /var/run/wgpmd/$WG_IF.sock ]] || die "wgpmd left its sockets behind"
ip -n "$NS_W" link show "$WG_IF" >/dev/null 2>&1 && die "wgpmd left its TUN $WG_IF behind"
ok "exit status 0; UAPI and stats sockets removed, TUN $WG_IF gone"

# ---------------------------------------------------------------------------------------------
section "Summary"
ok "wgpmd (af_packet WAN, TUN inner, cores $CORES${CORE_ARGS[2]:+ with --control-shares-core}, --poll adaptive)"
ok "$N_PEERS wireguard-go peers: handshakes, ping both ways, peer to peer through wgpmd"
ok "throughput $THROUGHPUT"
ok "$((T_BUILT - T0)) s tools and build, $((SECONDS - T_BUILT)) s demo"

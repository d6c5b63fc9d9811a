# Scenarios of the wgpmd QEMU test guest, sourced by /init (busybox sh). Each sc_<name> prints exactly one
# "SCENARIO <name> PASS|FAIL <detail>" line (through pass/fail). Addresses: see /init.
ip() { /usr/local/bin/ip "$@"; }   # busybox sh would run its own ip applet before searching PATH
export WG_COLOR_MODE=never
up() { cut -d' ' -f1 /proc/uptime; }
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}"; return;; esac; done; echo "$2"; }
log() { echo "  [$NAME] $*"; }
result() { echo "SCENARIO $NAME $1 $2"; echo "$NAME $1" >> /tmp/scenario.results; }
pass() { result PASS "$*"; }
fail() { result FAIL "$*"; return 1; }
run_scenario() {
    NAME=$1
    if ! type sc_$1 >/dev/null 2>&1; then fail "no such scenario"; return; fi
    sc_$1
    grep -q "^$NAME " /tmp/scenario.results 2>/dev/null || fail "sc_$NAME ended without a verdict"
}

A_BDF=0000:00:02.0             # NIC A: the first PCI NIC of both boots
A_MAC=52:54:00:12:34:56
B_MAC=52:54:00:12:34:57
BAD_IOVA_ENV=WGPMD_VFIO_TEST_BAD_IOVA
HUGEPAGES=$(arg hugepages 64)   # 2 MiB pages reserved for the vfio runs
BULKKB=$(arg bulkkb 1024)

nic_by_mac() { for n in /sys/class/net/*; do [ "$(cat $n/address 2>/dev/null)" = "$1" ] && { basename $n; return; }; done; }
drv_of() { basename "$(readlink /sys/bus/pci/devices/$1/driver 2>/dev/null)" 2>/dev/null; }
meminfo() { awk -v k="$1:" '$1==k{print $2}' /proc/meminfo; }
vfio_fds() { n=0; for f in /proc/[0-9]*/fd/*; do case "$(readlink $f 2>/dev/null)" in /dev/vfio*) n=$((n+1));; esac; done; echo $n; }
tailog() { tail -n ${2:-15} "$1" | sed 's/^/    | /'; }

# --- boot setups (run once by /init) ---------------------------------------------------------------------
setup_local() {
    ip link set lo up
    A=$(nic_by_mac $A_MAC); B=$(nic_by_mac $B_MAC)
    echo "INIT: NIC A=$A ($A_BDF, driver $(drv_of $A_BDF)), NIC B=$B"
    ip link set $A up
    ip netns add peer
    ip -n peer link set lo up
    ip link set $B netns peer
    ip -n peer addr add 10.50.0.2/24 dev $B
    ip -n peer link set $B up
    ip -n peer link add wg1 type wireguard      # created inside the netns: its UDP socket lives there
    ip netns exec peer wg set wg1 private-key /wgkeys/b.key listen-port 51820 \
        peer "$(cat /wgkeys/a.pub)" allowed-ips 10.60.0.0/24 endpoint 10.50.0.1:51820
    ip -n peer addr add 10.60.0.2/24 dev wg1
    ip -n peer link set wg1 up
    for i in $(seq 1 50); do [ "$(ip netns exec peer cat /sys/class/net/$B/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
    { echo "[Interface]"; echo "PrivateKey = $(cat /wgkeys/a.key)"; echo "ListenPort = 51820"
      echo "[Peer]"; echo "PublicKey = $(cat /wgkeys/b.pub)"; echo "AllowedIPs = 10.60.0.2/32"
      echo "Endpoint = 10.50.0.2:51820"; } > /tmp/wgpmd.conf
    echo "$A" > /tmp/nic_a
}

setup_vhu() {
    ip link set lo up
    A=$(nic_by_mac $A_MAC)
    echo "INIT: NIC A=$A ($A_BDF, driver $(drv_of $A_BDF)), on vhost-user"
    ip link set $A up
    ip addr add 10.100.0.50/24 dev $A
    echo "$A" > /tmp/nic_a
}

# boot=vhu: the guest's virtio-net is wgpmd's vhost-user inner port; the host's wireguard-go peer is
# 10.100.0.10 behind the tunnel (wgpmd answers the guest's ARP for it).
sc_vhu_ping() {
    A=$(cat /tmp/nic_a)
    n=0
    for i in $(seq 1 30); do ping -c 1 -W 2 10.100.0.10 >/dev/null 2>&1 && break; done
    out=$(ping -c 10 -i 0.3 -W 3 10.100.0.10 2>&1)
    n=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    log "$(echo "$out" | tail -2 | tr '\n' ' ')"
    log "ARP: $(ip neigh show dev $A | tr '\n' ' ')"
    if [ "${n:-0}" -ge 8 ]; then pass "$n of 10 pings to the wireguard-go peer answered through wgpmd's vhost-user port"
    else fail "$n of 10 pings answered"; fi
}

setup_mq() {
    ip link set lo up
    A=$(nic_by_mac $A_MAC)
    echo "INIT: NIC A=$A ($A_BDF, driver $(drv_of $A_BDF), $(ls /sys/class/net/$A/queues 2>/dev/null | tr '\n' ' '))"
    ip link set $A up
    { echo "[Interface]"; echo "PrivateKey = $(cat /wgkeys/a.key)"; echo "ListenPort = 51820"
      i=0; while [ $i -lt $MQPEERS ]; do
        echo "[Peer]"; echo "PublicKey = $(cat /wgkeys/h$i.pub)"; echo "AllowedIPs = 10.61.$i.2/32"
        echo "Endpoint = 10.50.0.2:$((52000 + i))"; i=$((i + 1)); done; } > /tmp/wgpmd.conf
    echo "$A" > /tmp/nic_a
}

# --- wgpmd helpers ---------------------------------------------------------------------------------------
# wgpmd_start PORT LCORES [ENV=VALUE...]: starts `wgpmd run` (name wg0, WAN 10.50.0.1/24) in the background,
# waits for its UAPI and stats sockets and its TUN; WPID, /tmp/wgpmd-$NAME.log. WGPMD_ARGS: more options.
wgpmd_start() {
    local port lcores i
    port=$1; lcores=$2; shift 2
    WLOG=/tmp/wgpmd-$NAME.log
    log "wgpmd run --port $port -l $lcores $*"
    env "$@" NO_COLOR=1 /usr/local/bin/wgpmd -v run wg0 --config /tmp/wgpmd.conf --port $port \
        --address 10.50.0.1/24 -l $lcores --control-shares-core --poll adaptive $WGPMD_ARGS > $WLOG 2>&1 &
    WPID=$!
    for i in $(seq 1 600); do
        if ! kill -0 $WPID 2>/dev/null; then wait $WPID; log "wgpmd exited (rc=$?) while starting:"; tailog $WLOG 30; return 1; fi
        [ -S /var/run/wireguard/wg0.sock ] && [ -S /var/run/wgpmd/wg0.sock ] && [ -e /sys/class/net/wg0 ] && break
        sleep 0.1
    done
    [ -e /sys/class/net/wg0 ] || { log "wgpmd: no sockets/TUN after 60 s:"; tailog $WLOG 30; return 1; }
    log "wgpmd up (pid $WPID) at uptime $(up) s"
}

# wgpmd_stop: SIGTERM; must exit 0 within 30 s and remove its sockets and TUN.
wgpmd_stop() {
    local i rc f
    kill -TERM $WPID
    for i in $(seq 1 300); do kill -0 $WPID 2>/dev/null || break; sleep 0.1; done
    if kill -0 $WPID 2>/dev/null; then log "wgpmd ignored SIGTERM for 30 s"; tailog $WLOG; kill -KILL $WPID; return 1; fi
    wait $WPID; rc=$?
    [ $rc = 0 ] || { log "wgpmd exited $rc on SIGTERM:"; tailog $WLOG; return 1; }
    for f in /var/run/wireguard/wg0.sock /var/run/wgpmd/wg0.sock /sys/class/net/wg0; do
        [ -e $f ] && { log "wgpmd left $f behind"; return 1; }
    done
    return 0
}

# wgpmd_expect_fail PORT "REGEX" [ENV=VALUE...]: `wgpmd run` must exit non-zero within $FAILWAIT s (default
# 60) and its
# error must match REGEX (grep -iE). ERRLINE is its last stderr line.
wgpmd_expect_fail() {
    local port re rc
    port=$1; re=$2; shift 2
    WLOG=/tmp/wgpmd-$NAME.log
    env "$@" NO_COLOR=1 timeout -s KILL ${FAILWAIT:-60} /usr/local/bin/wgpmd run wg0 --config /tmp/wgpmd.conf \
        --port $port --address 10.50.0.1/24 -l 0 --control-shares-core --poll adaptive > $WLOG 2>&1
    rc=$?
    ERRLINE=$(grep -v '^\s*$' $WLOG | tail -n 1)
    [ $rc = 137 ] && { log "wgpmd still running after ${FAILWAIT:-60} s (killed)"; tailog $WLOG; return 1; }
    [ $rc != 0 ] || { log "wgpmd exited 0"; tailog $WLOG; return 1; }
    grep -qiE "$re" $WLOG || { log "exit $rc, but no /$re/ in its output:"; tailog $WLOG; return 1; }
    log "exit $rc: $ERRLINE"
}

# nothing_left BDF DRIVER HP_FREE_BEFORE: the device is still on DRIVER, every hugepage is free again and
# no process holds a /dev/vfio file.
nothing_left() {
    [ "$(drv_of $1)" = "$2" ] || { log "$1 is on driver '$(drv_of $1)', expected $2"; return 1; }
    [ "$(meminfo HugePages_Free)" = "$3" ] || { log "HugePages_Free $(meminfo HugePages_Free), was $3"; return 1; }
    [ "$(vfio_fds)" = 0 ] || { log "$(vfio_fds) open /dev/vfio file(s)"; return 1; }
}

stat_sum() { awk -F= -v k="$1" '{n=split($1,p,"."); if (p[1] ~ /^worker/ && substr($1, length(p[1])+2) == k) s += $2} END{print s+0}' /tmp/stats-$NAME; }
stat() { awk -F= -v k="$1" '$1==k{print $2}' /tmp/stats-$NAME; }

# ping_ok [ip netns exec NS] -- DST: the first ping may wait for the handshake; then 3 of 3 must come back
ping_ok() {
    local ns dst ok i out
    ns=""; [ "$1" != "--" ] && { ns="ip netns exec $1"; }; shift; [ "$1" = "--" ] && shift
    dst=$1
    ok=0
    for i in 1 2 3; do $ns ping -c 1 -W 10 $dst > /dev/null 2>&1 && { ok=1; break; }; done
    [ $ok = 1 ] || { log "no reply from $dst ${ns:+($ns)} in 3 tries"; return 1; }
    out=$($ns ping -c 3 -W 5 $dst 2>&1)
    echo "$out" | grep -q "3 packets received" || { log "ping $dst ${ns:+($ns)}:"; echo "$out" | sed 's/^/    | /'; return 1; }
    log "ping $dst ${ns:+($ns)}: $(echo "$out" | grep round-trip)"
}

# bulk_to_peer: $BULKKB KiB of random bytes from the root netns to nc in netns peer over the tunnel; the
# md5 of what arrived must equal the md5 of what was sent.
bulk_to_peer() {
    local t0 t1 want got s1 s2 i
    dd if=/dev/urandom of=/tmp/bulk.bin bs=1024 count=$BULKKB 2>/dev/null
    rm -f /tmp/bulk.rx
    # the receiver's stdin must stay open (busybox nc half-closes on stdin EOF, and the sender then stops)
    ip netns exec peer sh -c 'sleep 300 | nc -l -p 5001 > /tmp/bulk.rx' &
    # wait until it listens (port 5001 = 0x1389, state 0A) rather than a fixed time: on a loaded machine
    # the guest is slow and the sender was refused
    for i in $(seq 1 100); do
        ip netns exec peer cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qE ':1389 0+:0000 0A' && break
        sleep 0.1
    done
    t0=$(up)
    nc -w 20 10.60.0.2 5001 < /tmp/bulk.bin || log "sending nc exited $?"
    want=$((BULKKB * 1024))
    for i in $(seq 1 200); do [ "$(wc -c < /tmp/bulk.rx 2>/dev/null)" = $want ] && break; sleep 0.1; done
    t1=$(up)
    got=$(wc -c < /tmp/bulk.rx)
    s1=$(md5sum < /tmp/bulk.bin | cut -d' ' -f1); s2=$(md5sum < /tmp/bulk.rx | cut -d' ' -f1)
    [ "$got" = "$want" ] && [ "$s1" = "$s2" ] || { log "bulk: sent $want bytes md5 $s1, received $got bytes md5 $s2"; return 1; }
    BULKMSG="bulk ${BULKKB} KiB md5 equal in $(awk -v a=$t0 -v b=$t1 -v k=$BULKKB 'BEGIN{printf "%.1f s (%.0f KiB/s)", b-a, k/(b-a)}')"
    log "$BULKMSG"
}

# traffic_local: the checks shared by the af_packet and vfio runs of boot=local
traffic_local() {
    ip addr add 10.60.0.1/24 dev wg0 && ip link set wg0 up || return 1
    ping_ok -- 10.60.0.2 || return 1                 # root netns -> kernel WireGuard peer through wgpmd
    ping_ok peer -- 10.60.0.1 || return 1            # and back: peer netns -> wgpmd's TUN
    bulk_to_peer || return 1
    /usr/local/bin/wgpmd stats wg0 > /tmp/stats-$NAME || { log "wgpmd stats failed"; return 1; }
    grep -v '=0$' /tmp/stats-$NAME | grep -v 'drop\.' | tr '\n' ' ' | sed 's/^/  stats: /'; echo
    rx=$(stat_sum data_rx); tx=$(stat_sum data_tx)
    [ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ] || { log "stats: data_rx=$rx data_tx=$tx"; return 1; }
    STATMSG="data_rx=$rx data_tx=$tx"
}

# --- scenarios -------------------------------------------------------------------------------------------
# boot=local, NIC A on its kernel driver through AF_PACKET (needs no VFIO driver)
sc_afp_local() {
    A=$(cat /tmp/nic_a)
    ip addr flush dev $A
    wgpmd_start af_packet:$A 0 || { fail "wgpmd did not start"; return; }
    if ! traffic_local; then kill -KILL $WPID; fail "traffic (see the lines above)"; return; fi
    wgpmd_stop || { fail "shutdown"; return; }
    pass "af_packet:$A: pings both ways, $BULKMSG, $STATMSG, SIGTERM exit 0"
}

sc_vfio_nodev() {
    hp=$(meminfo HugePages_Free)
    wgpmd_expect_fail vfio:0000:00:1f.6 '0000:00:1f.6.*(not exist|no such|not found|no pci device)|(not exist|no such|not found|no pci device).*0000:00:1f.6' \
        || { fail "no clear error for a BDF that does not exist"; return; }
    nothing_left $A_BDF virtio-pci $hp || { fail "left something behind"; return; }
    pass "$ERRLINE"
}

sc_vfio_kdrv() {
    [ "$(drv_of $A_BDF)" = virtio-pci ] || { fail "precondition: $A_BDF on '$(drv_of $A_BDF)', not virtio-pci"; return; }
    hp=$(meminfo HugePages_Free)
    wgpmd_expect_fail vfio:$A_BDF 'virtio-pci|vfio-pci|bind' || { fail "no clear error for a device on its kernel driver"; return; }
    nothing_left $A_BDF virtio-pci $hp || { fail "left something behind"; return; }
    [ -e /sys/class/net/$(cat /tmp/nic_a) ] || { fail "the kernel interface $(cat /tmp/nic_a) is gone"; return; }
    pass "$ERRLINE"
}

sc_vfio_status() {
    out=$(/usr/local/bin/wgpmd status 2>&1); rc=$?
    echo "$out" | sed 's/^/    | /'
    [ $rc = 0 ] || { fail "wgpmd status exited $rc"; return; }
    echo "$out" | grep -q "$A_BDF" || { fail "wgpmd status does not list $A_BDF"; return; }
    pass "lists $A_BDF: $(echo "$out" | grep "$A_BDF" | head -1)"
}

sc_vfio_bind() {
    out=$(/usr/local/bin/wgpmd bind $A_BDF 2>&1); rc=$?
    echo "$out" | sed 's/^/    | /'
    [ $rc = 0 ] || { fail "wgpmd bind exited $rc"; return; }
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "driver after bind: '$(drv_of $A_BDF)'"; return; }
    grp=$(basename "$(readlink /sys/bus/pci/devices/$A_BDF/iommu_group)")
    [ -e /dev/vfio/$grp ] || { fail "no /dev/vfio/$grp"; return; }
    pass "$A_BDF on vfio-pci, /dev/vfio/$grp"
}

sc_vfio_nohuge() {
    echo 0 > /proc/sys/vm/nr_hugepages
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "precondition: $A_BDF on '$(drv_of $A_BDF)', not vfio-pci (vfio_bind)"; return; }
    wgpmd_expect_fail vfio:$A_BDF 'huge ?page' || { fail "no clear error without hugepages"; return; }
    nothing_left $A_BDF vfio-pci 0 || { fail "left something behind"; return; }
    pass "$ERRLINE"
}

# vfio_run_checks [ENV=VALUE...]: wgpmd on vfio:NIC A (bound to vfio-pci) with the afp_local traffic checks,
# its driver counters, SIGTERM, and nothing left behind. RUNMSG: the summary.
vfio_run_checks() {
    echo $HUGEPAGES > /proc/sys/vm/nr_hugepages
    hp=$(meminfo HugePages_Free)
    [ "$hp" -gt 0 ] || { log "could not reserve hugepages"; return 1; }
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { log "precondition: $A_BDF on '$(drv_of $A_BDF)', not vfio-pci"; return 1; }
    wgpmd_start vfio:$A_BDF 0 "$@" || { log "wgpmd did not start"; return 1; }
    if [ "$BOOT" = noiommu ]; then
        # no-IOMMU mode: wgpmd says so, and its DMA addresses are the physical ones from /proc/self/pagemap
        grep -E 'no-IOMMU' $WLOG | head -4 | sed 's/^/    | /'
        grep -q 'no-IOMMU mode' $WLOG || { kill -KILL $WPID; log "wgpmd did not log no-IOMMU mode"; return 1; }
        grep -qE 'no-IOMMU DMA memory: .* at physical address 0x[0-9a-f]+' $WLOG \
            || { kill -KILL $WPID; log "wgpmd logged no physical address of its DMA memory"; return 1; }
    else
        # what the guest kernel reports as usable IOVA ranges (VFIO_IOMMU_GET_INFO), as wgpmd logged it
        grep -E 'IOVA ranges|default window' $WLOG | head -2 | sed 's/^/    | /'
        grep -qE 'IOVA ranges|default window' $WLOG || { kill -KILL $WPID; log "wgpmd logged no IOVA window"; return 1; }
    fi
    if ! traffic_local; then kill -KILL $WPID; tailog $WLOG 20; log "traffic (see the lines above)"; return 1; fi
    # the control core's handshake messages come from a plain pool: the port copies them into DMA memory
    copied=$(stat_sum wan_queue_tx_copied)
    [ "$copied" -gt 0 ] || { kill -KILL $WPID; log "wan_queue_tx_copied=0: the handshake went out uncopied or not at all"; return 1; }
    # the virtio STATUS feature: the link is up, and the driver's own checks found nothing to refuse
    [ "$(stat wan_link_up)" = 1 ] || { kill -KILL $WPID; log "wan_link_up='$(stat wan_link_up)', expected 1"; return 1; }
    for k in wan_queue_iova_refused wan_queue_bad_used_id wan_queue_bad_used_len wan_queue_bad_used_idx; do
        [ "$(stat_sum $k)" = 0 ] || { kill -KILL $WPID; log "$k=$(stat_sum $k), expected 0"; return 1; }
    done
    wgpmd_stop || { log "shutdown failed"; return 1; }
    nothing_left $A_BDF vfio-pci $hp || { log "after SIGTERM: left something behind"; return 1; }
    RUNMSG="vfio:$A_BDF: pings both ways, $BULKMSG, $STATMSG, tx_copied=$copied, wan_link_up=1, rx_no_buffers=$(stat_sum wan_queue_rx_no_buffers), SIGTERM exit 0, hugepages and /dev/vfio released"
}

sc_vfio_run() {
    vfio_run_checks || { fail "see the lines above"; return; }
    pass "$RUNMSG"
}

# --- boot=noiommu: VFIO without an IOMMU (/dev/vfio/noiommu-N, the kernel taints itself) -----------------
setup_noiommu() {
    setup_local
    echo "INIT: vfio enable_unsafe_noiommu_mode=$(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode 2>/dev/null)"
}

sc_noiommu_bind() {
    [ "$(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode 2>/dev/null)" = Y ] \
        || { fail "vfio has no enable_unsafe_noiommu_mode=Y (not the rebuilt modules?)"; return; }
    [ -e /sys/bus/pci/devices/$A_BDF/iommu_group ] && { fail "$A_BDF has an IOMMU group before bind: is there an IOMMU?"; return; }
    dmesg -c > /dev/null
    out=$(/usr/local/bin/wgpmd bind $A_BDF 2>&1); rc=$?
    echo "$out" | sed 's/^/    | /'
    [ $rc = 0 ] || { fail "wgpmd bind exited $rc"; return; }
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "driver after bind: '$(drv_of $A_BDF)'"; return; }
    grp=$(basename "$(readlink /sys/bus/pci/devices/$A_BDF/iommu_group)")
    [ -e /dev/vfio/noiommu-$grp ] || { fail "no /dev/vfio/noiommu-$grp ($(ls /dev/vfio | tr '\n' ' '))"; return; }
    [ -e /dev/vfio/$grp ] && { fail "/dev/vfio/$grp exists: not a no-IOMMU group"; return; }
    taint=$(dmesg | grep -i 'taint.*vfio-noiommu' | head -1)
    echo "    | $taint"
    [ -n "$taint" ] || { fail "no 'Adding kernel taint for vfio-noiommu' line in dmesg"; return; }
    pass "$A_BDF on vfio-pci, /dev/vfio/noiommu-$grp, kernel: ${taint#*] }"
}

# without WGPMD_VFIO_NOIOMMU=1, wgpmd must refuse a no-IOMMU group and say how to allow it
sc_noiommu_refuse() {
    echo $HUGEPAGES > /proc/sys/vm/nr_hugepages
    hp=$(meminfo HugePages_Free)
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "precondition: $A_BDF on '$(drv_of $A_BDF)', not vfio-pci (noiommu_bind)"; return; }
    wgpmd_expect_fail vfio:$A_BDF 'noiommu-[0-9]+.*WGPMD_VFIO_NOIOMMU=1' || { fail "no clear refusal of the no-IOMMU group"; return; }
    nothing_left $A_BDF vfio-pci $hp || { fail "left something behind"; return; }
    pass "$ERRLINE"
}

sc_noiommu_run() {
    vfio_run_checks WGPMD_VFIO_NOIOMMU=1 || { fail "see the lines above"; return; }
    pass "no-IOMMU, $RUNMSG"
}

sc_vfio_unbind() {
    out=$(/usr/local/bin/wgpmd unbind $A_BDF 2>&1); rc=$?
    echo "$out" | sed 's/^/    | /'
    [ $rc = 0 ] || { fail "wgpmd unbind exited $rc"; return; }
    [ "$(drv_of $A_BDF)" = virtio-pci ] || { fail "driver after unbind: '$(drv_of $A_BDF)'"; return; }
    for i in $(seq 1 100); do n=$(nic_by_mac $A_MAC); [ -n "$n" ] && break; sleep 0.1; done
    [ -n "$n" ] || { fail "no kernel interface with $A_MAC 10 s after unbind"; return; }
    ip link set $n up || { fail "cannot bring $n up"; return; }
    echo $n > /tmp/nic_a
    pass "$A_BDF back on virtio-pci, interface $n ($A_MAC) is back and comes up"
}

# badiova HOOK REGEX: wgpmd with $BAD_IOVA_ENV=HOOK must exit non-zero in bounded time with an error matching
# REGEX, after a DMAR fault at the IOVA it says it posted.
badiova() {
    local hook=$1 re=$2 hp t0 t1 EPID rc iova
    # the hook exists only in a wgpmd built with --features test-hooks (the host test checks it before booting)
    strings /usr/local/bin/wgpmd | grep -q $BAD_IOVA_ENV || { fail "this wgpmd has no test hooks: build it with --features test-hooks"; return; }
    echo $HUGEPAGES > /proc/sys/vm/nr_hugepages
    [ "$(drv_of $A_BDF)" = vfio-pci ] || /usr/local/bin/wgpmd bind $A_BDF > /dev/null 2>&1
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "cannot bind $A_BDF"; return; }
    hp=$(meminfo HugePages_Free)
    dmesg -c > /dev/null
    t0=$(up)
    # started like a real run: it must come up, hit the fault when it first sends, and then exit non-zero
    # the watchdog's errors: an IOMMU fault of the device in the kernel log, device status NEEDS_RESET / not
    # responding / reset, or transmit completions stalled
    FAILWAIT=$(arg badiova_wait 30)
    wgpmd_expect_fail vfio:$A_BDF "$re" $BAD_IOVA_ENV=$hook > /tmp/bad.why &
    EPID=$!
    sleep 5; ip netns exec peer ping -c 3 -W 1 10.50.0.1 > /dev/null 2>&1   # underlay traffic to NIC A
    wait $EPID; rc=$?
    t1=$(up)
    ERRLINE=$(grep -v '^\s*$' /tmp/wgpmd-$NAME.log | tail -n 1)
    cat /tmp/bad.why
    dmesg | grep -i dmar | head -3 | sed 's/^/    | /'
    if [ $rc != 0 ]; then
        if dmesg | grep -qi 'DMAR.*fault' && grep -q 'still running' /tmp/bad.why 2>/dev/null; then
            # Measured with QEMU 7.2: a single bad segment of at most 4 KiB is read through QEMU's one bounce
            # buffer (from unassigned memory) and completed normally; only a mapping that needs a second
            # bounce (a segment > 4 KiB, or two bad segments) makes QEMU call virtio_error -> NEEDS_RESET.
            fail "DMAR fault seen, but wgpmd kept running: the device never reported it (QEMU completes a bad single segment of <= 4 KiB through its bounce buffer without setting NEEDS_RESET; post a bad segment > 4 KiB)"
        else
            fail "wgpmd with $BAD_IOVA_ENV=$hook: see above"
        fi
        return
    fi
    dmesg | grep -qi 'DMAR.*fault' || { fail "no DMAR fault in dmesg"; return; }
    # the fault is the hook's descriptor: the IOVA wgpmd says it posted is the address the IOMMU refused
    iova=$(sed -n 's/.*posted one transmit descriptor at IOVA \(0x[0-9a-f]*\).*/\1/p' /tmp/wgpmd-$NAME.log | head -1)
    [ -n "$iova" ] || { fail "wgpmd did not say which IOVA it posted"; return; }
    dmesg | grep -i 'DMAR' | grep -q "fault addr $iova " || { fail "no DMAR fault at the posted IOVA $iova"; return; }
    nothing_left $A_BDF vfio-pci $hp || { fail "left something behind"; return; }
    pass "$BAD_IOVA_ENV=$hook: DMAR fault at the posted IOVA $iova, wgpmd exited non-zero after $(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.1f", b-a}') s: $ERRLINE"
}

# one bad transmit segment of frame size: QEMU 7.2 completes it (no NEEDS_RESET); the driver sees the IOMMU
# fault in the kernel log
sc_vfio_badiova() {
    badiova 1 'IOMMU blocked|NEEDS_RESET|not responding|reset or failed|stalled'
}

# an 8 KiB bad segment: QEMU 7.2 fails the mapping (virtio_error) and sets DEVICE_NEEDS_RESET
sc_vfio_badiova_big() {
    badiova big 'NEEDS_RESET'
}

# boot=mq: wgpmd with two workers on NIC A, wireguard-go peers h0..h(N-1) on the host side of the TAP.
# traffic_mq BULKBASE: ping every peer; send $BULKKB/4 KiB to each peer's nc on port BULKBASE+i (the host
# test compares what arrived with the "BULK" lines).
traffic_mq() {
    local p kb w k
    p=0; while [ $p -lt $MQPEERS ]; do ip addr add 10.61.$p.1/24 dev wg0 || return 1; p=$((p + 1)); done
    ip link set wg0 up || return 1
    p=0; while [ $p -lt $MQPEERS ]; do ping_ok -- 10.61.$p.2 || return 1; p=$((p + 1)); done
    kb=$((BULKKB / 4))
    p=0; while [ $p -lt $MQPEERS ]; do
        dd if=/dev/urandom of=/tmp/bulk.$p bs=1024 count=$kb 2>/dev/null
        nc -w 20 10.61.$p.2 $(($1 + p)) < /tmp/bulk.$p || { log "nc to 10.61.$p.2:$(($1 + p)) exited $?"; return 1; }
        echo "BULK $NAME $p $((kb * 1024)) $(md5sum < /tmp/bulk.$p | cut -d' ' -f1)"
        p=$((p + 1))
    done
    /usr/local/bin/wgpmd stats wg0 > /tmp/stats-$NAME || { log "wgpmd stats failed"; return 1; }
    grep -v '=0$' /tmp/stats-$NAME | grep -v 'drop\.' | tr '\n' ' ' | sed 's/^/  stats: /'; echo
    STATMSG=""
    for w in 0 1; do
        for k in wan_queue_rx_packets wan_queue_tx_packets data_rx data_tx; do STATMSG="$STATMSG w$w.$k=$(stat worker$w.$k)"; done
    done
}

sc_mq_afp() {
    A=$(cat /tmp/nic_a)
    wgpmd_start af_packet:$A 0-1 || { fail "wgpmd did not start"; return; }
    if ! traffic_mq 5100; then kill -KILL $WPID; fail "traffic (see the lines above)"; return; fi
    [ "$(stat worker1.wan_rx)" != "" ] || { kill -KILL $WPID; fail "wgpmd has no second worker"; return; }
    wgpmd_stop || { fail "shutdown"; return; }
    pass "af_packet:$A, 2 workers, $MQPEERS wireguard-go peers pinged, bulk sent to each,$STATMSG"
}

sc_mq_vfio() {
    echo $HUGEPAGES > /proc/sys/vm/nr_hugepages
    hp=$(meminfo HugePages_Free)
    /usr/local/bin/wgpmd bind $A_BDF || { fail "wgpmd bind $A_BDF"; return; }
    wgpmd_start vfio:$A_BDF 0-1 || { fail "wgpmd did not start"; return; }
    if ! traffic_mq 5200; then kill -KILL $WPID; tailog $WLOG 20; fail "traffic (see the lines above)"; return; fi
    for w in 0 1; do
        for k in wan_queue_rx_packets wan_queue_tx_packets; do
            [ "$(stat worker$w.$k)" -gt 0 ] 2>/dev/null || { kill -KILL $WPID; fail "queue $w carried no traffic: worker$w.$k=$(stat worker$w.$k);$STATMSG"; return; }
        done
    done
    copied=$(stat_sum wan_queue_tx_copied)
    [ "$copied" -ge $MQPEERS ] || { kill -KILL $WPID; fail "wan_queue_tx_copied=$copied, expected a copied handshake message per peer"; return; }
    wgpmd_stop || { fail "shutdown"; return; }
    nothing_left $A_BDF vfio-pci $hp || { fail "after SIGTERM: left something behind"; return; }
    /usr/local/bin/wgpmd unbind $A_BDF || { fail "wgpmd unbind"; return; }
    pass "vfio:$A_BDF, 2 queue pairs, $MQPEERS wireguard-go peers pinged, bulk sent to each, tx_copied=$copied, both queues rx+tx:$STATMSG"
}

# --- the virtio device reset under traffic ----------------------------------------------------------------
# Another agent resets NIC A while wgpmd drives it through VFIO: the scenario writes 0 to the device's
# device_status through the virtio PCI configuration access window (the VIRTIO_PCI_CAP_PCI_CFG capability,
# virtio 1.2 §4.1.4.9), i.e. through PCI configuration space (sysfs `config`, which vfio-pci leaves open to
# root), not through wgpmd's BAR mapping. QEMU runs its full device reset (virtio_pci_reset: status 0, every
# queue disabled and forgotten), as a host-side reset would. docs/TESTING.md says why this method.
cfg_u8() { dd if=/sys/bus/pci/devices/$1/config bs=1 skip=$2 count=1 2>/dev/null | od -An -tu1 | tr -d ' \n'; }
cfg_le32() { echo $(( $(cfg_u8 $1 $2) | $(cfg_u8 $1 $(($2 + 1))) << 8 | $(cfg_u8 $1 $(($2 + 2))) << 16 | $(cfg_u8 $1 $(($2 + 3))) << 24 )); }
# cfg_put BDF OFFSET BYTE...: writes the bytes (decimal) at OFFSET of BDF's configuration space
cfg_put() {
    local bdf off s b
    bdf=$1; off=$2; shift 2
    s=""; for b in "$@"; do s="$s\\$(printf %03o $b)"; done
    printf "$s" | dd of=/sys/bus/pci/devices/$bdf/config bs=1 seek=$off count=$# conv=notrunc 2>/dev/null
}
cs() { echo $(( ${1%.*} * 100 + 1${1#*.} - 100 )); }   # /proc/uptime seconds (2 decimals) -> centiseconds
le32_bytes() { echo "$(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255))"; }
# virtio_caps BDF: finds the common configuration (VCOMMON_BAR, VCOMMON_OFF) and the PCI configuration access
# capability (VCFG_CAP: its offset in configuration space) among the vendor capabilities (id 9)
virtio_caps() {
    local p n
    VCOMMON_OFF=""; VCFG_CAP=""
    p=$(cfg_u8 $1 52); n=0   # capabilities pointer at 0x34
    while [ "${p:-0}" -ne 0 ] && [ $n -lt 48 ]; do
        if [ "$(cfg_u8 $1 $p)" = 9 ]; then
            case "$(cfg_u8 $1 $((p + 3)))" in
            1) [ -z "$VCOMMON_OFF" ] && { VCOMMON_BAR=$(cfg_u8 $1 $((p + 4))); VCOMMON_OFF=$(cfg_le32 $1 $((p + 8))); } ;;
            5) [ -z "$VCFG_CAP" ] && VCFG_CAP=$p ;;
            esac
        fi
        p=$(cfg_u8 $1 $((p + 1))); n=$((n + 1))
    done
    [ -n "$VCOMMON_OFF" ] && [ -n "$VCFG_CAP" ]
}
# vcfg_window BDF BAR OFFSET LEN: points the window at LEN bytes of BAR at OFFSET (cap.bar, cap.offset, cap.length)
vcfg_window() {
    cfg_put $1 $((VCFG_CAP + 4)) $2
    cfg_put $1 $((VCFG_CAP + 8)) $(le32_bytes $3)
    cfg_put $1 $((VCFG_CAP + 12)) $(le32_bytes $4)
}
# device_status read through the window (common configuration + 20, one byte: virtio 1.2 §4.1.4.3)
vstatus_read() { vcfg_window $1 $VCOMMON_BAR $((VCOMMON_OFF + 20)) 1; cfg_u8 $1 $((VCFG_CAP + 16)); }

# wgpmd on vfio:NIC A with pings through the tunnel every 0.1 s; the device is reset under it. The documented
# behaviour (docs/OPERATIONS.md, "Faults while running"): the watchdog sees device_status lose DRIVER_OK, the
# worker logs `worker 0: WAN port failed: vfio:BDF: the device was reset or failed under us (status 0x00)`,
# and wgpmd exits 1 with `wgpmd: stopped: WAN port: ...` within reset_wait=S s (default 30), leaving nothing
# behind (sockets, TUN, hugepages, /dev/vfio files; the device stays on vfio-pci). Restarted (what a
# supervisor does), wgpmd initialises the device again and traffic through the tunnel is back.
sc_vfio_reset() {
    local hp st t0 t1 t2 t3 rc i n0 n1 wait_s
    wait_s=$(arg reset_wait 30)
    echo $HUGEPAGES > /proc/sys/vm/nr_hugepages
    [ "$(drv_of $A_BDF)" = vfio-pci ] || /usr/local/bin/wgpmd bind $A_BDF > /dev/null 2>&1
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "cannot bind $A_BDF"; return; }
    hp=$(meminfo HugePages_Free)
    virtio_caps $A_BDF || { fail "$A_BDF: no common configuration or PCI configuration access capability"; return; }
    log "common configuration: BAR $VCOMMON_BAR offset $VCOMMON_OFF; PCI configuration access capability at config offset $VCFG_CAP"
    log "kernel reset methods of $A_BDF: '$(cat /sys/bus/pci/devices/$A_BDF/reset_method 2>/dev/null)' (reset file: $([ -e /sys/bus/pci/devices/$A_BDF/reset ] && echo present || echo absent))"
    wgpmd_start vfio:$A_BDF 0 || { fail "wgpmd did not start"; return; }
    ip addr add 10.60.0.1/24 dev wg0 && ip link set wg0 up || { kill -KILL $WPID; fail "TUN setup"; return; }
    ping_ok -- 10.60.0.2 || { kill -KILL $WPID; tailog $WLOG; fail "no traffic before the reset"; return; }
    st=$(vstatus_read $A_BDF)
    # ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK: the window reads the register wgpmd initialised
    [ "$st" = 15 ] || { kill -KILL $WPID; fail "device_status through the window reads $st, expected 15 (0x0f)"; return; }
    ping -i 0.1 -W 1 10.60.0.2 > /tmp/reset.ping 2>&1 &
    PINGPID=$!
    sleep 1
    n0=$(grep -c 'bytes from' /tmp/reset.ping)
    [ "$n0" -gt 0 ] || { kill $PINGPID; kill -KILL $WPID; fail "the pings under way got no reply before the reset"; return; }
    vcfg_window $A_BDF $VCOMMON_BAR $((VCOMMON_OFF + 20)) 1   # the window is set up before the clock starts
    n0=$(grep -c 'bytes from' /tmp/reset.ping)
    cfg_put $A_BDF $((VCFG_CAP + 16)) 0
    # the clock starts when the write that resets the device has returned; the wait loop uses shell builtins
    # only, so that on a slow guest it does not add its own forks to the measurement
    read t0 i < /proc/uptime
    t1=$t0
    while kill -0 $WPID 2>/dev/null && [ $(( $(cs $t1) - $(cs $t0) )) -lt $((wait_s * 100)) ]; do
        sleep 0.05; read t1 i < /proc/uptime
    done
    read t1 i < /proc/uptime
    kill $PINGPID 2>/dev/null; wait $PINGPID 2>/dev/null
    n1=$(grep -c 'bytes from' /tmp/reset.ping)
    if kill -0 $WPID 2>/dev/null; then
        log "device_status now $(vstatus_read $A_BDF)"; tailog $WLOG
        kill -KILL $WPID; wait $WPID 2>/dev/null
        fail "wgpmd still running $wait_s s after the device was reset under it"; return
    fi
    wait $WPID; rc=$?
    tailog $WLOG 4
    [ $rc = 1 ] || { fail "wgpmd exited $rc after the reset, expected 1"; return; }
    grep -q "worker 0: WAN port failed: vfio:$A_BDF: the device was reset or failed under us (status 0x00)" $WLOG \
        || { fail "no 'worker 0: WAN port failed: vfio:$A_BDF: the device was reset ... (status 0x00)' line"; return; }
    ERRLINE=$(grep -v '^\s*$' $WLOG | tail -n 1)
    echo "$ERRLINE" | grep -q "^wgpmd: stopped: WAN port: vfio:$A_BDF: the device was reset or failed under us" \
        || { fail "last line is not 'wgpmd: stopped: WAN port: vfio:$A_BDF: the device was reset ...': $ERRLINE"; return; }
    for f in /var/run/wireguard/wg0.sock /var/run/wgpmd/wg0.sock /sys/class/net/wg0; do
        [ -e $f ] && { fail "wgpmd left $f behind"; return; }
    done
    nothing_left $A_BDF vfio-pci $hp || { fail "left something behind"; return; }
    # recovery is a restart: the device comes up again and the tunnel carries traffic
    t2=$(up)
    wgpmd_start vfio:$A_BDF 0 || { fail "wgpmd did not start again after the reset"; return; }
    ip addr add 10.60.0.1/24 dev wg0 && ip link set wg0 up || { kill -KILL $WPID; fail "TUN setup (restart)"; return; }
    ping_ok -- 10.60.0.2 || { kill -KILL $WPID; tailog $WLOG; fail "no traffic after the restart"; return; }
    t3=$(up)
    wgpmd_stop || { fail "shutdown after the restart"; return; }
    nothing_left $A_BDF vfio-pci $hp || { fail "after the restart's SIGTERM: left something behind"; return; }
    RESETMSG=$(awk -v a=$t0 -v b=$t1 -v r=$t2 -v s=$t3 \
        'BEGIN{printf "wgpmd detected it and exited 1 %.2f s after the reset; restarted, traffic back %.2f s after the restart", b-a, s-r}')
    pass "device_status 0x0f -> 0 through the PCI config window under pings ($n0 replies before it, $((n1 - n0)) after): $RESETMSG; $ERRLINE; nothing left behind"
}

# boot=mq: the WAN exception path with a vfio: WAN port. wgpmd (one worker) on NIC A with
# `--exception tap:exc0 --exception-rate $EXC_RATE`; the guest kernel holds the WAN address 10.50.0.1 (shared
# with wgpmd) and an address of its own, 10.50.0.3, on the TAP. The host test drives the LAN side once it
# sees "EXC READY" on the console: iperf3 from wireguard-go peer h0 to the guest's iperf3 server on
# 10.61.0.1 through the tunnel and, meanwhile, 256 KiB with nc to 10.50.0.3:7001 and pings to 10.50.0.3;
# then a flood of UDP to 10.50.0.1:9 (not WireGuard: each frame is for the kernel) with pings through the
# tunnel. Last it sends "DONE <nc bytes> <nc md5> <flood frames sent> <flood seconds>" (or "ABORT <why>") to
# 10.50.0.3:7999, through the exception path too. The guest checks what nc received and the counters.
EXC_RATE=$(arg excrate 500)
sc_mq_vfio_exc() {
    local hp rx md5 done0 sent fsecs passed dropped allowed to0 dr0 st
    echo $HUGEPAGES > /proc/sys/vm/nr_hugepages
    hp=$(meminfo HugePages_Free)
    [ "$(drv_of $A_BDF)" = vfio-pci ] || /usr/local/bin/wgpmd bind $A_BDF > /dev/null 2>&1
    [ "$(drv_of $A_BDF)" = vfio-pci ] || { fail "cannot bind $A_BDF"; return; }
    WGPMD_ARGS="--exception tap:exc0 --exception-rate $EXC_RATE" wgpmd_start vfio:$A_BDF 0 \
        || { fail "wgpmd did not start"; return; }
    [ -e /sys/class/net/exc0 ] || { kill -KILL $WPID; fail "no exception TAP exc0"; return; }
    [ "$(cat /sys/class/net/exc0/address)" = $A_MAC ] \
        || { kill -KILL $WPID; fail "exc0 has MAC $(cat /sys/class/net/exc0/address), not the WAN's $A_MAC"; return; }
    echo 1 > /proc/sys/net/ipv6/conf/exc0/disable_ipv6 2>/dev/null
    ip addr add 10.50.0.1/24 dev exc0 && ip addr add 10.50.0.3/24 dev exc0 && ip link set exc0 up \
        && ip addr add 10.61.0.1/24 dev wg0 && ip link set wg0 up || { kill -KILL $WPID; fail "addresses"; return; }
    ping_ok -- 10.61.0.2 || { kill -KILL $WPID; fail "no tunnel to wireguard-go peer h0"; return; }
    rm -f /tmp/exc.rx /tmp/exc.done
    iperf3 -s -1 -B 10.61.0.1 > /tmp/iperf3-s.log 2>&1 &
    IPID=$!
    ( sleep 200 | nc -l -p 7001 > /tmp/exc.rx ) &
    ( timeout 200 nc -l -p 7999 > /tmp/exc.done ) &
    DPID=$!
    sleep 0.5
    /usr/local/bin/wgpmd stats wg0 > /tmp/stats-$NAME || { kill -KILL $WPID; fail "wgpmd stats failed"; return; }
    to0=$(stat_sum exception_to_kernel); dr0=$(stat_sum exception_rate_dropped)
    echo "EXC READY"
    wait $DPID
    done0=$(cat /tmp/exc.done)
    log "host: $done0"
    kill $IPID 2>/dev/null
    tailog /tmp/iperf3-s.log 4
    case "$done0" in DONE*) ;; *) kill -KILL $WPID; fail "the host side did not finish: '$done0'"; return;; esac
    set -- $done0
    rx=$(wc -c < /tmp/exc.rx); md5=$(md5sum < /tmp/exc.rx | cut -d' ' -f1)
    [ "$rx" = "$2" ] && [ "$md5" = "$3" ] \
        || { kill -KILL $WPID; fail "nc to the kernel's 10.50.0.3: host sent $2 bytes md5 $3, got $rx bytes md5 $md5"; return; }
    sent=$4; fsecs=$5
    /usr/local/bin/wgpmd stats wg0 > /tmp/stats-$NAME || { kill -KILL $WPID; fail "wgpmd stats failed"; return; }
    grep -E 'exception|data_|wan_drop' /tmp/stats-$NAME | grep -v '=0$' | tr '\n' ' ' | sed 's/^/  stats: /'; echo
    passed=$(($(stat_sum exception_to_kernel) - to0)); dropped=$(($(stat_sum exception_rate_dropped) - dr0))
    # counted from EXC READY (the nc and ping traffic before the flood included): the rate over the flood and
    # the 3 s around it, plus the burst (a tenth of a second) and slack
    allowed=$(awk -v r=$EXC_RATE -v s=$fsecs 'BEGIN{printf "%d", r * (s + 3) + r / 10 + 100}')
    st="flood: $sent UDP frames in $fsecs s, $passed to the kernel (at most $allowed), $dropped dropped by the rate"
    log "$st"
    [ "$passed" -le "$allowed" ] || { kill -KILL $WPID; fail "$st: too many reached the kernel"; return; }
    [ "$dropped" -ge $((sent / 3)) ] || { kill -KILL $WPID; fail "$st: too few counted as rate drops"; return; }
    [ "$(stat exception.tap_tx)" -gt 0 ] && [ "$(stat_sum exception_from_kernel)" -gt 0 ] \
        || { kill -KILL $WPID; fail "exception.tap_tx=$(stat exception.tap_tx) exception_from_kernel=$(stat_sum exception_from_kernel)"; return; }
    [ "$(stat exception.from_kernel_full)" = 0 ] || { kill -KILL $WPID; fail "exception.from_kernel_full=$(stat exception.from_kernel_full)"; return; }
    ping_ok -- 10.61.0.2 || { kill -KILL $WPID; fail "the tunnel after the flood"; return; }
    wgpmd_stop || { fail "shutdown"; return; }
    [ -e /sys/class/net/exc0 ] && { fail "exc0 left behind after SIGTERM"; return; }
    nothing_left $A_BDF vfio-pci $hp || { fail "after SIGTERM: left something behind"; return; }
    /usr/local/bin/wgpmd unbind $A_BDF > /dev/null || { fail "wgpmd unbind"; return; }
    pass "vfio:$A_BDF with --exception tap:exc0: nc $2 bytes and pings from the LAN to the kernel's 10.50.0.3 while iperf3 ran through the tunnel (md5 equal); $st; tunnel pings after it; exception_from_kernel=$(stat_sum exception_from_kernel)"
}

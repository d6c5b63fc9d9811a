#!/bin/sh
# Usage: tests/guest/run-vm.sh local|mq|noiommu|vhu INITRAMFS KERNEL_CACHE "KERNEL CMDLINE EXTRA"
# Boots the wgpmd test guest under QEMU TCG (PVH entry of the uncompressed vmlinux from kernel.sh) with the
# serial console on stdout. Run it inside a network namespace of its own (ip netns exec NS ...): QEMU's
# loopback UDP sockets (boot local) and the TAP (boot mq) live there.
#   local: NIC A virtio-net-pci (modern, behind intel-iommu) and NIC B e1000e, cross-wired by two
#          -netdev socket,udp= endpoints on 127.0.0.1:47101/47102; -smp 1
#   mq:    NIC A virtio-net-pci with 2 queue pairs on the multiqueue TAP $TAP (default wgtap0, created by the
#          caller in this netns); -smp 2, multi-threaded TCG
#   noiommu: the local topology without a vIOMMU: no intel-iommu device, NIC A without iommu_platform/ats,
#          no intel_iommu=on (the initramfs must carry the rebuilt vfio modules: noiommu-modules.sh)
#   vhu:   NIC A virtio-net-pci on a vhost-user netdev whose backend (wgpmd on the host) serves the unix
#          socket $VHU_SOCK; the guest's memory a shared memfd (vhost-user needs it); no vIOMMU; -smp 1;
#          NIC A without MSI-X (vectors=0, the guest uses INTx): with MSI-X, QEMU 7.2 under TCG dies with
#          SIGSEGV when the guest's driver starts a vhost-user device (docs/TESTING.md)
# Env: TIMEOUT (seconds, default 300; QEMU is SIGKILLed after it), MEM (default 1G).
# One guest at a time on a machine: holds /tmp/wgpmd-qemu.lock (flock -F: QEMU keeps this script's PID).
set -eu
BOOT=${1:?usage: run-vm.sh local|mq|noiommu|vhu INITRAMFS KERNEL_CACHE "CMDLINE"}
INITRD=$2; KCACHE=$3; EXTRA=${4:-}
NIC_A="virtio-net-pci,disable-legacy=on,iommu_platform=on,ats=on,mac=52:54:00:12:34:56"
IOMMU="-device intel-iommu,intremap=on,caching-mode=on"
KIOMMU=intel_iommu=on
MEMDEV=""
case $BOOT in
noiommu|vhu)
    NIC_A="virtio-net-pci,disable-legacy=on,mac=52:54:00:12:34:56"
    IOMMU=""; KIOMMU=""
    ;;
esac
[ "$BOOT" = vhu ] && NIC_A="$NIC_A,vectors=0"
case $BOOT in
local|noiommu)
    SMP=1; ACCEL=tcg
    NET="-netdev socket,id=na,udp=127.0.0.1:47102,localaddr=127.0.0.1:47101 -device $NIC_A,netdev=na
         -netdev socket,id=nb,udp=127.0.0.1:47101,localaddr=127.0.0.1:47102 -device e1000e,netdev=nb,mac=52:54:00:12:34:57" ;;
mq)
    SMP=2; ACCEL=tcg,thread=multi
    NET="-netdev tap,id=na,ifname=${TAP:-wgtap0},script=no,downscript=no,vhost=off,queues=2
         -device $NIC_A,netdev=na,mq=on,vectors=6" ;;
vhu)
    SMP=1; ACCEL=tcg
    MEMDEV="-object memory-backend-memfd,id=mem,size=${MEM:-1G},share=on -numa node,memdev=mem"
    NET="-chardev socket,id=c0,path=${VHU_SOCK:?VHU_SOCK: the vhost-user socket} -netdev vhost-user,id=na,chardev=c0
         -device $NIC_A,netdev=na" ;;
*) echo "run-vm.sh: boot must be local, mq, noiommu or vhu" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086
exec flock -F /tmp/wgpmd-qemu.lock timeout -s KILL "${TIMEOUT:-300}" qemu-system-x86_64 \
    -accel $ACCEL -cpu max -machine q35 -smp $SMP -m "${MEM:-1G}" -nographic -no-reboot -net none \
    -kernel "$KCACHE/vmlinux" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check $KIOMMU boot=$BOOT $EXTRA" \
    $MEMDEV $IOMMU $NET

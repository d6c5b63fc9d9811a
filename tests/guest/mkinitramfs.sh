#!/bin/sh
# Usage: tests/guest/mkinitramfs.sh KERNEL_CACHE WGPMD_BIN OUT_DIR [NOIOMMU_MODULES_DIR]
# Builds OUT_DIR/initramfs.cpio.gz for the QEMU guest tests (docs/TESTING.md, "Guest tests (VFIO)"):
#   busybox-static, /init and /scenarios.sh (from this folder), the kernel modules the scenarios need
#   (resolved with modprobe --show-depends against the unpacked kernel in KERNEL_CACHE, see kernel.sh),
#   iproute2 `ip`, wireguard-tools `wg`, `iperf3` and the given wgpmd binary with the shared libraries ldd names,
#   and fresh WireGuard keys made with `wg genkey` (also left in OUT_DIR/keys/ for the host-side peers).
#   NOIOMMU_MODULES_DIR: the five vfio modules rebuilt with CONFIG_VFIO_NOIOMMU (noiommu-modules.sh) replace
#   the stock ones (for boot=noiommu).
set -eu
KCACHE=${1:?usage: mkinitramfs.sh KERNEL_CACHE WGPMD_BIN OUT_DIR}
WGPMD=${2:?usage: mkinitramfs.sh KERNEL_CACHE WGPMD_BIN OUT_DIR}
OUT=${3:?usage: mkinitramfs.sh KERNEL_CACHE WGPMD_BIN OUT_DIR}
NOIOMMU=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
KCACHE=$(cd "$KCACHE" && pwd)
KV=$(cat "$KCACHE/kver")
KPKG=$KCACHE/kpkg
for t in busybox cpio gzip wg ip iperf3 depmod modprobe ldd; do
    command -v $t >/dev/null 2>&1 || { echo "mkinitramfs.sh: $t not found (scripts/test.sh installs it)" >&2; exit 1; }
done
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "mkinitramfs.sh: $BUSYBOX is dynamically linked: install busybox-static" >&2; exit 1
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
R=$OUT/rootfs
rm -rf "$R" "$OUT/keys"
mkdir -p "$R/bin" "$R/usr/local/bin" "$R/lib/modules/$KV" "$R/wgkeys" "$R/var/run/netns" "$R/run" "$R/tmp" "$OUT/keys"
cp "$BUSYBOX" "$R/bin/busybox"
cp "$HERE/init" "$R/init"
cp "$HERE/scenarios.sh" "$R/scenarios.sh"
chmod +x "$R/init" "$R/scenarios.sh"

# keys: a = wgpmd / NIC A side, b = the guest kernel WireGuard peer, h0..h7 = wireguard-go peers on the host
umask 077
for k in a b h0 h1 h2 h3 h4 h5 h6 h7; do
    wg genkey > "$OUT/keys/$k.key"
    wg pubkey < "$OUT/keys/$k.key" > "$OUT/keys/$k.pub"
done
umask 022
cp "$OUT"/keys/* "$R/wgkeys/"

# kernel modules and their dependencies (busybox modprobe ignores softdeps: /init loads vfio_iommu_type1 itself)
MODS="virtio_net virtio_pci e1000e wireguard tun vfio-pci vfio_iommu_type1"
for f in $(for m in $MODS; do modprobe -d "$KPKG" -S "$KV" --show-depends $m; done | awk '/^insmod/{print $2}' | sort -u); do
    rel=${f#$KPKG/}
    mkdir -p "$R/$(dirname "$rel")"
    cp "$f" "$R/$rel"
done
if [ -n "$NOIOMMU" ]; then
    for m in vfio.ko vfio_iommu_type1.ko vfio_virqfd.ko vfio-pci-core.ko vfio-pci.ko; do
        dst=$(find "$R/lib/modules/$KV" -name "$m" | head -1)
        [ -n "$dst" ] && [ -f "$NOIOMMU/$m" ] || { echo "mkinitramfs.sh: cannot replace $m with $NOIOMMU/$m" >&2; exit 1; }
        cp "$NOIOMMU/$m" "$dst"
    done
fi
cp "$KPKG/lib/modules/$KV/modules.order" "$KPKG"/lib/modules/$KV/modules.builtin* "$R/lib/modules/$KV/"
depmod -b "$R" "$KV"

# dynamically linked programs with their libraries (the host's glibc; the guest kernel is new enough)
cp "$(command -v wg)" "$(command -v ip)" "$(command -v iperf3)" "$R/usr/local/bin/"
if command -v strip >/dev/null 2>&1; then strip -o "$R/usr/local/bin/wgpmd" "$WGPMD"; else cp "$WGPMD" "$R/usr/local/bin/wgpmd"; fi
for bin in "$R/usr/local/bin/wg" "$R/usr/local/bin/ip" "$R/usr/local/bin/iperf3" "$R/usr/local/bin/wgpmd"; do
    for lib in $(ldd "$bin" | awk '/=>/{print $3} /ld-linux/{print $1}'); do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
done
mkdir -p "$R/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"

(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
rm -rf "$R"
echo "mkinitramfs.sh: $OUT/initramfs.cpio.gz ($(du -k "$OUT/initramfs.cpio.gz" | cut -f1) KiB, kernel $KV${NOIOMMU:+, vfio modules from $NOIOMMU})"

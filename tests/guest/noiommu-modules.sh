#!/bin/sh
# Usage: tests/guest/noiommu-modules.sh KERNEL_CACHE OUT_DIR
# Builds the guest kernel's VFIO modules with no-IOMMU support for the guest test `guest_noiommu_boot`
# (docs/TESTING.md, "Guest tests (VFIO)"). Debian builds its kernels without CONFIG_VFIO_NOIOMMU, so vfio.ko
# has no `enable_unsafe_noiommu_mode` parameter and vfio-pci refuses a device without an IOMMU group. The five
# modules vfio.ko vfio_iommu_type1.ko vfio_virqfd.ko vfio-pci-core.ko vfio-pci.ko are rebuilt out of tree from
# the Debian kernel source (only drivers/vfio is extracted) against the headers of the guest kernel, with
# -DCONFIG_VFIO_NOIOMMU=1 (the only code that depends on it is inside these modules).
#   KERNEL_CACHE   what kernel.sh made (kver: the release, kpkgver: the linux-image package version)
#   OUT_DIR/KVER-PKGVER/*.ko   the result (stripped), reused while the kernel stays the same
# Installs (apt-get, --no-install-recommends) linux-headers-KVER and linux-source-MAJOR.MINOR, both at the
# linux-image package's version (the source version the guest kernel was built from), unless OUT_DIR already
# holds the modules. Needs root for apt-get, plus make, xz and gcc (the headers package depends on the
# compiler the kernel was built with).
set -eu
KCACHE=${1:?usage: noiommu-modules.sh KERNEL_CACHE OUT_DIR}
OUT=${2:?usage: noiommu-modules.sh KERNEL_CACHE OUT_DIR}
KCACHE=$(cd "$KCACHE" && pwd)
[ -s "$KCACHE/kver" ] && [ -s "$KCACHE/kpkgver" ] || { echo "noiommu-modules.sh: no kernel in $KCACHE: run tests/guest/kernel.sh $KCACHE first" >&2; exit 1; }
KV=$(cat "$KCACHE/kver")              # 6.1.0-56-amd64
VER=$(cat "$KCACHE/kpkgver")          # 6.1.192-2
MM=$(echo "$KV" | cut -d. -f1-2)      # 6.1
MODS="vfio.ko vfio_iommu_type1.ko vfio_virqfd.ko vfio-pci-core.ko vfio-pci.ko"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEST=$OUT/$KV-$VER
done_=1
for m in $MODS; do [ -f "$DEST/$m" ] || done_=0; done
if [ $done_ = 1 ]; then echo "noiommu-modules.sh: modules for $KV ($VER) cached in $DEST"; exit 0; fi

t0=$(date +%s)
pkgver() { dpkg-query -W -f '${Status} ${Version}\n' "$1" 2>/dev/null | awk '$3=="installed"{print $4}'; }
HDR=linux-headers-$KV
SRC=linux-source-$MM
need=""
[ "$(pkgver "$HDR")" = "$VER" ] || need="$need $HDR=$VER"
[ "$(pkgver "$SRC")" = "$VER" ] || need="$need $SRC=$VER"
command -v make >/dev/null 2>&1 || need="$need make"
command -v xz >/dev/null 2>&1 || need="$need xz-utils"
if [ -n "$need" ]; then
    echo "noiommu-modules.sh: apt-get install$need"
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends --allow-downgrades $need > "$OUT/apt.log" 2>&1; then
        tail -n 15 "$OUT/apt.log" >&2
        echo "noiommu-modules.sh: cannot install$need: the guest kernel $KV is linux-image version $VER; the headers and the source must be that version too (apt-cache policy $HDR $SRC shows what the archive has; after a kernel update run apt-get update, then kernel.sh)" >&2
        exit 1
    fi
fi
# the versions must match the kernel's: modules built from another source release may not load, or misbehave
for p in "$HDR" "$SRC"; do
    v=$(pkgver "$p")
    [ "$v" = "$VER" ] || { echo "noiommu-modules.sh: $p is version '${v:-not installed}', but the guest kernel $KV is $VER: the source/headers must match the kernel package" >&2; exit 1; }
done
TARBALL=/usr/src/linux-source-$MM.tar.xz
KDIR=/usr/src/linux-headers-$KV
[ -f "$TARBALL" ] || { echo "noiommu-modules.sh: $TARBALL missing (package $SRC)" >&2; exit 1; }
[ -d "$KDIR" ] || { echo "noiommu-modules.sh: $KDIR missing (package $HDR)" >&2; exit 1; }

W=$OUT/build
rm -rf "$W" "$DEST.tmp"
mkdir -p "$W" "$DEST.tmp"
tar -C "$W" -xJf "$TARBALL" "linux-source-$MM/drivers/vfio"
D=$W/linux-source-$MM/drivers/vfio
echo "noiommu-modules.sh: building $D against $KDIR with -DCONFIG_VFIO_NOIOMMU=1"
if ! make -C "$KDIR" M="$D" KCFLAGS=-DCONFIG_VFIO_NOIOMMU=1 -j"$(nproc)" modules > "$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log" >&2
    echo "noiommu-modules.sh: the module build failed (whole log: $OUT/build.log)" >&2
    exit 1
fi
for m in $MODS; do
    f=$(find "$D" -name "$m" | head -1)
    [ -n "$f" ] || { echo "noiommu-modules.sh: the build made no $m" >&2; exit 1; }
    cp "$f" "$DEST.tmp/$m"
done
strip --strip-debug "$DEST.tmp"/*.ko
# the point of the exercise: the rebuilt vfio.ko has the no-IOMMU switch, and they are for this kernel
modinfo -p "$DEST.tmp/vfio.ko" | grep -q '^enable_unsafe_noiommu_mode' \
    || { echo "noiommu-modules.sh: the rebuilt vfio.ko has no enable_unsafe_noiommu_mode parameter" >&2; exit 1; }
for m in $MODS; do
    mv_=$(modinfo -F vermagic "$DEST.tmp/$m" | cut -d' ' -f1)
    [ "$mv_" = "$KV" ] || { echo "noiommu-modules.sh: $m has vermagic '$mv_', expected $KV" >&2; exit 1; }
done
rm -rf "$DEST" "$W"
mv "$DEST.tmp" "$DEST"
echo "noiommu-modules.sh: $MODS for $KV ($VER) in $DEST ($(($(date +%s) - t0)) s)"

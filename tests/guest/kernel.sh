#!/bin/sh
# Usage: tests/guest/kernel.sh CACHE_DIR
# Fetches the Debian guest kernel for the QEMU guest tests into CACHE_DIR (git-ignored, reused):
#   CACHE_DIR/kpkg/             the unpacked linux-image package (NOT installed on the host), depmod run
#   CACHE_DIR/vmlinux           the uncompressed kernel, booted by QEMU through its PVH entry (~2 s under TCG)
#   CACHE_DIR/kver              the kernel release (e.g. 6.1.0-56-amd64)
#   CACHE_DIR/kpkgver           the linux-image package's version (e.g. 6.1.192-2: the version of the Debian
#                               linux source it was built from; noiommu-modules.sh matches headers and source to it)
# The version is whatever linux-image-amd64 depends on today (never pinned: old versions leave the archive).
# Needs: apt-get (download only), dpkg-deb, depmod (kmod), xz (xz-utils), grep.
set -eu
CACHE=${1:?usage: kernel.sh CACHE_DIR}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$PKG" ]; then
    if [ -f "$CACHE/kver" ] && [ -f "$CACHE/vmlinux" ]; then
        echo "kernel.sh: apt-cache knows no linux-image-amd64 (no apt lists?): using the cached $(cat "$CACHE/kver")"
        exit 0
    fi
    echo "kernel.sh: apt-cache knows no linux-image-amd64 dependency: run apt-get update" >&2
    exit 1
fi
KV=${PKG#linux-image-}
if [ -f "$CACHE/kver" ] && [ "$(cat "$CACHE/kver")" = "$KV" ] && [ -f "$CACHE/vmlinux" ] && [ -s "$CACHE/kpkgver" ] && [ -d "$CACHE/kpkg/lib/modules/$KV" ]; then
    echo "kernel.sh: $KV cached in $CACHE"
    exit 0
fi
echo "kernel.sh: fetching $PKG into $CACHE"
rm -rf "$CACHE/kpkg" "$CACHE/vmlinux" "$CACHE/kver" "$CACHE/kpkgver" "$CACHE"/dl
mkdir -p "$CACHE/dl"
(cd "$CACHE/dl" && apt-get download -q "$PKG")
dpkg-deb -x "$CACHE"/dl/"$PKG"_*.deb "$CACHE/kpkg"
dpkg-deb -f "$CACHE"/dl/"$PKG"_*.deb Version > "$CACHE/kpkgver.tmp"
rm -rf "$CACHE/dl"
depmod -b "$CACHE/kpkg" "$KV"   # the package ships no modules.dep
# The bzImage carries the kernel as an xz stream: cut it out at the xz magic and decompress it (xz complains
# about the bytes after the stream; the ELF check below is what counts).
VMLINUZ="$CACHE/kpkg/boot/vmlinuz-$KV"
OFF=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | head -1 | cut -d: -f1)
[ -n "$OFF" ] || { echo "kernel.sh: no xz stream in $VMLINUZ" >&2; exit 1; }
tail -c +$((OFF + 1)) "$VMLINUZ" | xz -dcq > "$CACHE/vmlinux.tmp" 2>/dev/null || true
if [ "$(head -c 4 "$CACHE/vmlinux.tmp" | od -An -c | tr -d ' ')" != "177ELF" ]; then
    echo "kernel.sh: decompressing $VMLINUZ did not give an ELF file" >&2
    exit 1
fi
mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
mv "$CACHE/kpkgver.tmp" "$CACHE/kpkgver"
echo "$KV" > "$CACHE/kver"
echo "kernel.sh: $KV ready in $CACHE"

#!/usr/bin/env bash
# Build the Debian package: target/debian/wgpmd_<version>-1_<arch>.deb.
#
#   scripts/package.sh            the binary with the `dist` profile (LTO, one codegen unit),
#                                 man pages and completions from `wgpmd assets`, cargo-deb
#   CARGO_DEB=/path/to/cargo-deb  use that cargo-deb (default: .tools/cargo-deb/bin/cargo-deb,
#                                 installed there if missing)
#   WGPMD_DEB_PROFILE=release     package the `release` build instead (no LTO; reuses an existing
#                                 `cargo build --release -p wgpmd`, for quick local checks)
#
# The package holds /usr/bin/wgpmd (default features: no bench references, no test hooks, no
# DPDK), the systemd unit wgpmd@.service, man pages, bash and zsh completions, and examples
# under /usr/share/doc/wgpmd/examples. docs/OPERATIONS.md, "Debian package".
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_DEB="${CARGO_DEB:-$PWD/.tools/cargo-deb/bin/cargo-deb}"
if [[ "$("$CARGO_DEB" --version 2>/dev/null || true)" != *"$CARGO_DEB_VERSION"* ]]; then
    echo "== installing cargo-deb $CARGO_DEB_VERSION into .tools/cargo-deb"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root .tools/cargo-deb
    CARGO_DEB="$PWD/.tools/cargo-deb/bin/cargo-deb"
fi

profile="${WGPMD_DEB_PROFILE:-dist}"
echo "== cargo build -p wgpmd --profile $profile"
cargo build -p wgpmd --profile "$profile"
rm -rf target/deb-assets
"target/$profile/wgpmd" assets target/deb-assets >/dev/null
echo "== cargo deb (no rebuild)"
"$CARGO_DEB" -p wgpmd --profile "$profile" --no-build --no-strip

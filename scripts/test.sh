#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Installs what the tests need.
#
#   scripts/test.sh          everything (unit, interop, robustness, fuzz-target build, quick benches)
#   QUICK_BENCH=0 scripts/test.sh   skip the quick benchmark run
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v ip >/dev/null || need_apt+=(iproute2)   # nic-backends tests: netns, veth
if ((${#need_apt[@]})); then
    echo "== installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

echo "== build (release: the tests run crypto in loops of a million inputs)"
cargo build --workspace --release --all-targets

echo "== tests"
cargo test --workspace --release

echo "== fuzz targets build on stable (cargo-fuzz itself needs nightly: see fuzz/README.md)"
(cd fuzz && cargo build --release --bins)

if [[ "${QUICK_BENCH:-1}" == 1 ]]; then
    echo "== benchmarks, quick mode (full runs: cargo bench -p wgpmd; see docs/PERFORMANCE.md)"
    WGPMD_BENCH_QUICK=1 cargo bench -p wgpmd
fi
echo "== all tests passed"

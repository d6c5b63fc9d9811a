#!/usr/bin/env bash
# The soak (tests/tests/soak.rs) for a chosen duration: wgpmd with three real peers (wireguard-go,
# boringtun-cli) moving two-way TCP and UDP, peers added and removed every 3 s, a roaming peer,
# handshake floods and junk bursts, RSS/counters/throughput sampled every 5 s (docs/TESTING.md).
#
#   scripts/soak.sh [--duration SECS] [--min-rate RATIO]      (as root)
#
# Default 120 s (scripts/test.sh runs 80 s). The recorded long run: --duration 3600. The samples
# are written to soak-samples.csv in the test's log directory (printed when it fails; kept with
# WGPMD_E2E_KEEP=1 otherwise, see docs/TESTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=120
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --min-rate) export WGPMD_SOAK_MIN_RATE="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cargo build --release -p wgpmd
[[ -x .tools/bin/boringtun-cli ]] && export WGPMD_E2E_BORINGTUN="${WGPMD_E2E_BORINGTUN:-$PWD/.tools/bin/boringtun-cli}"
WGPMD_SOAK_SECS="$duration" cargo test --release -p wgpmd-e2e --test soak -- --nocapture

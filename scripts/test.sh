#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Installs what the tests need.
#
#   scripts/test.sh          everything (unit, interop, robustness, e2e in network namespaces,
#                            fuzz-target build, quick benches); run as root
#   QUICK_BENCH=0 scripts/test.sh   skip the quick benchmark run
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's header carries the wall-clock seconds since the start, so a slow step shows in the log.
SECONDS=0
step() { printf '== [%4d s] %s\n' "$SECONDS" "$*"; }

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# End-to-end tests (crate wgpmd-e2e in tests/, docs/TESTING.md): real WireGuard peers in network
# namespaces. --no-install-recommends matters: wireguard-tools recommends a kernel image.
{ command -v ip && command -v ss; } >/dev/null || need_apt+=(iproute2)
command -v sysctl >/dev/null || need_apt+=(procps)
command -v wireguard-go >/dev/null || need_apt+=(wireguard-go)
command -v wg >/dev/null || need_apt+=(wireguard-tools)  # also the UAPI socket tests (stock wg)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)  # captures in the behaviour tests
# --- Exception path and vhost-user (tests/tests/exception.rs, dpdk.rs, vhost_user.rs) ---------------------------
command -v nc >/dev/null || need_apt+=(netcat-openbsd)  # TCP through the exception TAP
command -v nft >/dev/null || need_apt+=(nftables)       # keeps the kernel off the (af_packet, dpdk net_af_packet) WAN veth
command -v bird >/dev/null || need_apt+=(bird2)         # BGP over the exception TAP
command -v dpdk-testpmd >/dev/null || need_apt+=(dpdk-dev)  # the vhost-user frontend (virtio-user)
# --- Operations: the Debian package test (scripts/deb-test.sh): systemd-analyze verifies the unit, man renders
# the man page ---
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v man >/dev/null || need_apt+=(man-db)
# The metrics tests (tests/tests/metrics.rs): a real Prometheus server scrapes wgpmd, promtool checks
# the endpoint's output (the package's service is not started: the test runs the binary), curl asks both.
{ command -v prometheus && command -v promtool; } >/dev/null || need_apt+=(prometheus)
command -v curl >/dev/null || need_apt+=(curl)
command -v qemu-x86_64 >/dev/null || need_apt+=(qemu-user)  # crypto tests on a CPU without BMI2/ADX/AVX (below)
# --- Guest tests (tests/tests/guest.rs, tests/guest/; docs/TESTING.md "Guest tests (VFIO)") --------------
# A QEMU TCG guest with a vIOMMU runs wgpmd's VFIO driver. The guest kernel is a Debian linux-image package
# that tests/guest/kernel.sh downloads (apt-get download, not installed) into .tools/guest/kernel/.
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)  # pulls seabios and ipxe-qemu (NIC ROMs)
# the initramfs needs a static busybox (the dynamic `busybox` package cannot run in it)
if ! command -v busybox >/dev/null || ldd "$(command -v busybox)" >/dev/null 2>&1; then need_apt+=(busybox-static); fi
command -v cpio >/dev/null || need_apt+=(cpio)
{ command -v depmod && command -v modprobe; } >/dev/null || need_apt+=(kmod)
command -v xz >/dev/null || need_apt+=(xz-utils)    # kernel.sh unpacks the vmlinux for QEMU's PVH entry
command -v flock >/dev/null || need_apt+=(util-linux) # one guest at a time (/tmp/wgpmd-qemu.lock)
command -v md5sum >/dev/null || need_apt+=(coreutils)
command -v make >/dev/null || need_apt+=(make)        # noiommu-modules.sh (kernel headers/source: it installs them)
# --- end of the guest tests' packages ---------------------------------------------------------------------
# --- AF_XDP backend (docs/OPERATIONS.md "AF_XDP"): nic-backends/build.rs compiles bpf/xdp_steer.c with
# clang -target bpf against libbpf's bpf_helpers.h and the kernel UAPI headers; the af_xdp e2e tests use nc
# (TCP to the kernel's own address) and taskset (one wireguard-go per CPU).
command -v clang >/dev/null || need_apt+=(clang)
[[ -f /usr/include/bpf/bpf_helpers.h ]] || need_apt+=(libbpf-dev)
[[ -f /usr/include/linux/bpf.h ]] || need_apt+=(linux-libc-dev)
command -v nc >/dev/null || need_apt+=(netcat-openbsd)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v python3 >/dev/null || need_apt+=(python3)   # the offloads test's UDP_SEGMENT sender
# --- end AF_XDP ----------------------------------------------------------------------------------
# --- DPDK backend (docs/OPERATIONS.md "Running on a DPDK NIC") ----------------------------------
# The dpdk feature builds nic-backends/dpdk-sys: bindgen over the system's DPDK 22.11 headers
# (libdpdk-dev, with the PMD plugins net_af_packet/net_tap/net_ring/net_null the tests use; libclang for
# bindgen). ethtool turns veth offloads off in the DPDK e2e tests. All builds and tests below use
# WORKSPACE_FEATURES, so target/release/wgpmd is the DPDK-enabled binary the e2e tests run.
pkg-config --exists libdpdk 2>/dev/null || need_apt+=(libdpdk-dev dpdk)
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || need_apt+=(libclang-dev clang)
command -v ethtool >/dev/null || need_apt+=(ethtool)
command -v mount >/dev/null || need_apt+=(mount)
WORKSPACE_FEATURES="wgpmd/dpdk,nic-backends/dpdk,wgpmd-e2e/dpdk"
# --- end DPDK ----------------------------------------------------------------------------------
# Test hooks (wgpmd/test-hooks -> nic-backends/test-hooks): fault injection the guest tests use
# (WGPMD_VFIO_TEST_BAD_IOVA) and the worker panic of tests/tests/ops.rs (WGPMD_TEST_PANIC_WORKER). Only in
# the featured test build; the release check below builds without them and makes sure none is in the binary.
WORKSPACE_FEATURES="$WORKSPACE_FEATURES,wgpmd/test-hooks"
# Names of the test hooks: not one may appear in a plain release binary.
TEST_HOOKS=(WGPMD_VFIO_TEST_BAD_IOVA WGPMD_TEST_PANIC_WORKER)
# boringtun as a reference in `wgpmd bench` (and its smoke test): opt-in, not a default feature.
WORKSPACE_FEATURES="$WORKSPACE_FEATURES,wgpmd/bench-boringtun"
# libipsec-mb's one-message ChaCha20-Poly1305 as a reference in `wgpmd bench` (and its smoke test, which
# checks its columns): opt-in, not a default feature; the library and its header at build time.
[[ -f /usr/include/intel-ipsec-mb.h ]] || need_apt+=(libipsec-mb-dev)
WORKSPACE_FEATURES="$WORKSPACE_FEATURES,wgpmd/bench-ipsec-mb"

if ((${#need_apt[@]})); then
    step "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# --- Guest tests: the guest kernel (kernel.sh resolves linux-image-amd64's dependency, downloads and unpacks
# it into .tools/guest/kernel/, reused while the version stays the same; a fresh machine needs apt's lists) ---
if ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]'; then apt-get update -qq; fi
step "guest kernel for the QEMU guest tests"
tests/guest/kernel.sh .tools/guest/kernel
# --- end of the guest tests' kernel ---
# --- Guest tests: vfio modules with no-IOMMU support for guest_noiommu_boot (Debian's kernel lacks
# CONFIG_VFIO_NOIOMMU). noiommu-modules.sh apt-get installs linux-headers-<guest kernel> and linux-source-<x.y>
# at the guest kernel package's version, rebuilds the 5 vfio modules from drivers/vfio with
# -DCONFIG_VFIO_NOIOMMU=1 into .tools/guest/noiommu/<kver>-<version>/ (cached); ~20 s when nothing is cached ---
step "no-IOMMU vfio modules for the QEMU guest tests"
tests/guest/noiommu-modules.sh .tools/guest/kernel .tools/guest/noiommu
# --- end of the guest tests' no-IOMMU modules ---

# boringtun-cli, the second peer implementation of the e2e tests: built once into .tools/
# (git-ignored; about a minute), reused while the installed version matches.
BORINGTUN_VERSION=0.7.1
if [[ "$(.tools/bin/boringtun-cli --version 2>/dev/null)" != "boringtun $BORINGTUN_VERSION" ]]; then
    step "installing boringtun-cli $BORINGTUN_VERSION into .tools/"
    cargo install boringtun-cli --version "$BORINGTUN_VERSION" --locked --root .tools
fi
export WGPMD_E2E_BORINGTUN="$PWD/.tools/bin/boringtun-cli"

# rust-version (Cargo.toml) is honest only if the suite builds with exactly that toolchain.
rust_version="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
step "rust-version $rust_version: the suite builds with that toolchain"
if [[ "$(rustc --version)" == "rustc $rust_version."* ]]; then
    echo "default toolchain: $(rustc --version)"
elif rustup run "$rust_version" rustc --version >/dev/null 2>&1; then
    echo "building with rustup toolchain $rust_version as well"
    cargo "+$rust_version" check --workspace --all-targets
else
    echo "rust-version $rust_version: no such toolchain here ($(rustc --version)); change rust-version or install it" >&2
    exit 1
fi

step "formatting (rustfmt.toml)"
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check
    (cd fuzz && cargo fmt --check)
else
    echo "rustfmt is not installed with this toolchain: formatting not checked"
fi

step "clippy (warnings are errors)"
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --release --features "$WORKSPACE_FEATURES" -- -D warnings
    # and the release configuration: no test hooks, no dpdk (code under cfg is linted only when on)
    cargo clippy --release -p nic-backends -p wgpmd --all-targets -- -D warnings
    # The fuzz crate is a workspace of its own; linted in the main target directory, it re-checks
    # only what its own features change (a minute less than its own directory from scratch).
    (cd fuzz && CARGO_TARGET_DIR=../target cargo clippy --release --bins -- -D warnings)
else
    echo "clippy is not installed with this toolchain: lints not checked"
fi

step "release build without test hooks (cargo build --release -p wgpmd, as an operator builds it)"
cargo build --release -p wgpmd
for hook in "${TEST_HOOKS[@]}"; do
    n=$(grep -c "$hook" target/release/wgpmd || true)
    echo "checked: grep -c $hook target/release/wgpmd -> $n (must be 0: test hooks exist only with --features test-hooks)"
    if [[ "$n" != 0 ]]; then
        echo "FAIL: the release binary contains the test hook $hook" >&2
        exit 1
    fi
done
# nor the opt-in bench references: the plain binary neither links libipsec-mb nor carries boringtun.
features="$(target/release/wgpmd --version | sed -n 's/^features: //p')"
echo "checked: target/release/wgpmd --version -> features: $features (must be none)"
if [[ "$features" != none ]] || grep -q IPSec_MB <(ldd target/release/wgpmd); then
    echo "FAIL: the release binary is built with optional features ($features) or links libIPSec_MB" >&2
    exit 1
fi

step "build (release: the tests run crypto in loops of a million inputs; with the test hooks)"
cargo build --workspace --release --all-targets --features "$WORKSPACE_FEATURES"

step "tests"
# The whole suite runs: a guest test whose prerequisite is missing fails (docs/TESTING.md); the
# opt-out for runs by hand is not honoured here.
unset WGPMD_GUEST_ALLOW_SKIP
# Includes the e2e tests (wgpmd-e2e): they need root, and serialise themselves (one lock per
# test binary), so the default test threads are fine. Only them: cargo test -p wgpmd-e2e --release
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
# One closing line for the whole suite, summed over every test binary's "test result" line.
summary() {
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
}
# --no-fail-fast: a failing test binary does not hide the ones after it; the suite stops here,
# with every failure listed, if any failed.
status=0
# The soak runs 80 s here (tests/tests/soak.rs defaults to two minutes; the hour-long run is by
# hand, scripts/soak.sh, recorded in docs/TESTING.md): after its 30 s warm-up, three 15 s windows
# for the rate check (two compared with the first) and four floods (at 10, 30, 50 and 70 s),
# each followed by a sample.
export WGPMD_SOAK_SECS="${WGPMD_SOAK_SECS:-80}"
cargo test --workspace --release --no-fail-fast --features "$WORKSPACE_FEATURES" 2>&1 | tee "$results" || status=$?
if ((status)); then
    step "failed tests:"
    grep -E '^test .* FAILED$' "$results" || true
    grep -E -A30 '^error: [0-9]+ targets? failed' "$results" || true
    summary
    exit "$status"
fi

# X25519 (aws-lc) and ChaCha20-Poly1305 (ring) choose their code at run time from the CPU's features. The
# crypto unit tests run again on an emulated CPU that has none of the optional ones (QEMU user mode, TCG,
# -cpu qemu64: no BMI2/ADX, AVX or AVX-512; an instruction it lacks would kill the test), so the generic
# paths stay tested as well (docs/PERFORMANCE.md, "X25519: which implementation, by the numbers").
# They are the test executables the suite just ran (built with the suite's features: a `cargo test -p`
# here would rebuild them with other features, about 100 s), found through cargo's JSON messages.
test_exes="$(mktemp)"
trap 'rm -f "$results" "$test_exes"' EXIT
cargo test --workspace --release --features "$WORKSPACE_FEATURES" --no-run --quiet --message-format=json |
    python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.basename(os.path.dirname(m["manifest_path"])), m["target"]["kind"][0], m["target"]["name"], m["executable"], sep="\t")
' >"$test_exes"
# test_exe DIR KIND NAME: the test executable of target NAME (KIND lib or test) of the package in DIR.
test_exe() {
    local exe
    exe="$(awk -F'\t' -v d="$1" -v k="$2" -v n="$3" '$1 == d && $2 == k && $3 == n { print $4 }' "$test_exes")"
    if [[ ! -x "$exe" ]]; then
        echo "no test executable for $1 $2 $3 (cargo test --no-run --message-format=json)" >&2
        exit 1
    fi
    echo "$exe"
}
qemu64=(qemu-x86_64 -cpu qemu64)
step "crypto unit tests on a CPU without BMI2/ADX/AVX (qemu-x86_64 -cpu qemu64)"
exe="$(test_exe wgpmd-proto lib wgpmd_proto)"
(cd wgpmd-proto && "${qemu64[@]}" "$exe" crypto::) 2>&1 | tee -a "$results"
# The multi-lane X25519 crate the same way: there its dispatch must pick the portable backend (its
# dispatch test checks that against CPUID), and the RFC 7748 and differential tests run on that backend
# (5,000 random pairs against x25519-dalek instead of 100,000: emulation is slow; about 4 s).
step "wgpmd-x25519 tests on a CPU without AVX-512 (qemu-x86_64 -cpu qemu64): the portable backend"
for target in "lib wgpmd_x25519" "test rfc7748" "test differential"; do
    # shellcheck disable=SC2086 # two words: kind and name
    exe="$(test_exe x25519-lanes $target)"
    (cd x25519-lanes && WGPMD_X25519_PAIRS=5000 "${qemu64[@]}" "$exe") 2>&1 | tee -a "$results"
done

# The fuzz crate is checked on stable by the clippy step above (type and borrow checks of every
# target); the binaries themselves are built once, by cargo-fuzz on nightly, below.

# Every fuzz target runs briefly under libFuzzer (nightly + cargo-fuzz), from its committed corpus
# and dictionary; a crash fails the suite (docs/TESTING.md, "Fuzzing"). cargo-fuzz is installed
# once into .tools/ (git-ignored), the nightly toolchain with rustup if it is missing.
CARGO_FUZZ_VERSION=0.13.2
if [[ "$(.tools/bin/cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    step "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root .tools
fi
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
step "fuzz targets, ${FUZZ_SECONDS:-3} s each (scripts/fuzz.sh; campaigns by hand: docs/TESTING.md)"
PATH="$PWD/.tools/bin:$PATH" scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-3}"

if [[ "${QUICK_BENCH:-1}" == 1 ]]; then
    # Shorter still than the quick mode the docs quote (0.1 s warm-up, 0.3 s measurement, 10 samples:
    # criterion's own options, which override each bench's configuration): here the benches must build,
    # run, and pass their own checks (each handshake answered or completed as expected, no DH for a bad
    # MAC1, each X25519 candidate agreeing with RFC 7748 and x25519-dalek before it is timed); the numbers
    # the docs quote come from full or quick runs by hand.
    step "benchmarks, shortest mode (full runs: cargo bench -p wgpmd-proto; see docs/PERFORMANCE.md)"
    # (the protocol crate's four, by name, built with the suite's features: `-p wgpmd-proto` alone
    # would rebuild the crate with others; a bench added there must be added here, checked first)
    proto_benches="$(sed -n 's/^name = "\(.*\)"/\1/p' <(sed -n '/^\[\[bench\]\]/,/^$/p' wgpmd-proto/Cargo.toml) | sort | tr '\n' ' ')"
    if [[ "$proto_benches" != "allowedips crypto handshake x25519 " ]]; then
        echo "wgpmd-proto's benches are now: $proto_benches; update the list below" >&2
        exit 1
    fi
    WGPMD_BENCH_QUICK=1 cargo bench --workspace --features "$WORKSPACE_FEATURES" \
        --bench crypto --bench handshake --bench x25519 --bench allowedips \
        -- --warm-up-time 0.1 --measurement-time 0.3 --sample-size 10
    step "wgpmd bench --quick (the worker pipeline over mem ports; references: ring, libipsec-mb, multi-lane AEAD, boringtun)"
    target/release/wgpmd bench --quick
    step "wgpmd bench --quick --peers 16,100000 (cheap peers at scale; rates compared in the same run; fails on lost, damaged or reordered packets)"
    target/release/wgpmd bench --quick --peers 16,100000 --sizes 64 --no-references
    step "wgpmd bench --flood --quick (handshake storm and flood through the worker pipeline; fails on lost or damaged packets, unanswered handshakes, incomplete rekeys)"
    target/release/wgpmd bench --flood --quick
    # DPDK: the backend's per-packet cost next to raw rx/tx bursts (net_ring, --no-huge).
    step "wgpmd dpdk-bench --quick (docs/PERFORMANCE.md)"
    target/release/wgpmd dpdk-bench --quick
fi
# The Debian package (cargo-deb, installed into .tools/cargo-deb by scripts/package.sh), installed with
# dpkg -i, the unit verified, `wgpmd --version` and `man wgpmd` checked, purged. CI packages a release
# build (WGPMD_DEB_PROFILE=release: only the wgpmd crate is rebuilt, with the default features) rather
# than rebuild everything with the dist profile's LTO, which scripts/package.sh uses by default for a
# real package. It runs last: it replaces target/release/wgpmd (the tests' featured binary).
step "Debian package: build, dpkg -i, systemd-analyze verify, --version, man, dpkg -r/-P (scripts/deb-test.sh)"
WGPMD_DEB_PROFILE="${WGPMD_DEB_PROFILE:-release}" scripts/deb-test.sh

summary
step "done"

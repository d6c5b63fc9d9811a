#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in fuzz/ with cargo-fuzz (libFuzzer, nightly).
#
#   scripts/fuzz.sh [--runs N | --seconds S] [--jobs J] [--sanitizer none|address] [TARGET...]
#   scripts/fuzz.sh --cmin [TARGET...]
#
# Runs each target (all of them when none is named) for N executions or S seconds, one after the
# other, and prints one line per target: executions, coverage (libFuzzer's `cov`: edges, and
# `ft`: features), corpus size and crashes. Exits 1 if any target crashed (or failed to run); the
# crashing input is in fuzz/artifacts/<target>/.
#
# Inputs: the committed seeds fuzz/corpus/<target>/ (read, never written) and the dictionary
# fuzz/dict/<target>.dict when there is one. New inputs go to fuzz/work/<target>/ (git-ignored),
# which persists between runs; `cargo fuzz cmin` turns it into a committed corpus (docs/TESTING.md).
# `--cmin` does that: it minimizes the committed corpus together with fuzz/work/<target>
# (`cargo fuzz cmin`, libFuzzer's -merge) back into fuzz/corpus/<target>/, keeping the inputs
# named regression-* (crashes found, replayed by name in the tests) as they are.
# cargo-fuzz is taken from PATH, else from .tools/bin (scripts/test.sh installs it there).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=""
seconds=""
jobs=1
sanitizer=none
cmin=0
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --sanitizer) sanitizer="$2"; shift 2 ;;
        --cmin) cmin=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [[ -z "$runs" && -z "$seconds" ]]; then
    seconds=30
fi
if ! command -v cargo-fuzz >/dev/null; then
    export PATH="$PWD/.tools/bin:$PATH"
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not found (cargo install cargo-fuzz --locked --root .tools)" >&2; exit 1; }
all_targets=$(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^wgpmd-fuzz$')
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets <<<"$all_targets"
fi

# The longest input worth trying, per target (frames: a jumbo-less MTU; messages: an initiation
# plus room; recipes: their longest; text: a few peers' worth).
max_len() {
    case "$1" in
        wire_frame|wan_frame) echo 1600 ;;
        wireguard_message|device_message) echo 400 ;;
        handshake_batch) echo 160 ;;
        device_live) echo 257 ;;
        aead_lanes) echo 512 ;;
        blake2s_lanes) echo 65 ;;
        uapi_request|wg_conf) echo 4096 ;;
        virtio_rings) echo 1024 ;;
        *) echo 4096 ;;
    esac
}

if [[ "$cmin" == 1 ]]; then
    for t in "${targets[@]}"; do
        tmp=$(mktemp -d)
        cp -p fuzz/corpus/"$t"/* "$tmp"/ 2>/dev/null || true
        [[ -d "fuzz/work/$t" ]] && find "fuzz/work/$t" -type f -exec cp -p {} "$tmp"/ \;
        before=$(find "$tmp" -type f | wc -l)
        cargo +nightly fuzz cmin -s "$sanitizer" --release "$t" "$tmp" -- -max_len="$(max_len "$t")" >"fuzz/work/$t.cmin.log" 2>&1
        mkdir -p "fuzz/corpus/$t"
        find "fuzz/corpus/$t" -type f ! -name 'regression-*' -delete
        cp -p "$tmp"/* "fuzz/corpus/$t"/
        # the regression inputs keep their names (a copy under a hash name is redundant)
        for r in fuzz/corpus/"$t"/regression-*; do
            [[ -e "$r" ]] || continue
            h=$(sha1sum "$r" | cut -d' ' -f1)
            rm -f "fuzz/corpus/$t/$h"
        done
        rm -rf "$tmp"
        echo "$t: $before inputs -> $(find "fuzz/corpus/$t" -type f | wc -l) ($(du -sb "fuzz/corpus/$t" | cut -f1) bytes)"
    done
    exit 0
fi

echo "== building ${targets[*]} (cargo +nightly fuzz build -s $sanitizer --release)"
for t in "${targets[@]}"; do
    cargo +nightly fuzz build -s "$sanitizer" --release "$t" >/dev/null
done

failed=0
summary=()
for t in "${targets[@]}"; do
    work="fuzz/work/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    seeds=()
    [[ -d "fuzz/corpus/$t" ]] && seeds=("fuzz/corpus/$t")
    args=(-max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/")
    [[ -f "fuzz/dict/$t.dict" ]] && args+=(-dict="fuzz/dict/$t.dict")
    [[ -n "$runs" ]] && args+=(-runs="$runs")
    [[ -n "$seconds" ]] && args+=(-max_total_time="$seconds")
    log="fuzz/work/$t.log"
    echo "== $t: cargo +nightly fuzz run -s $sanitizer --release $t $work ${seeds[*]} -- ${args[*]}"
    rc=0
    touch "$log.start"
    if [[ "$jobs" -gt 1 ]]; then
        args+=(-fork="$jobs")
    fi
    cargo +nightly fuzz run -s "$sanitizer" --release "$t" "$work" "${seeds[@]}" -- "${args[@]}" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(find "$work" -type f | wc -l)
    crashes=$(find "fuzz/artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) -newer "$log.start" 2>/dev/null | wc -l || true)
    line="$t: executions ${execs:-?} cov ${cov:-?} ft ${ft:-?} corpus $corp exit $rc"
    if [[ "$rc" != 0 ]]; then
        failed=1
        line="$line crashes $crashes CRASH (see $log and fuzz/artifacts/$t/)"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -5 || true
    else
        line="$line crashes 0"
    fi
    echo "$line"
    summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"

#!/usr/bin/env bash
# Builds petrel's fuzz targets (fuzz/) and runs each for a bounded time.
#
#   resources/fuzz.sh                 # every target, FUZZ_SECONDS (default 60) each
#   resources/fuzz.sh blk_request     # only the named targets
#   FUZZ_SECONDS=600 resources/fuzz.sh
#
# Environment:
#   FUZZ_SECONDS     seconds of fuzzing per target (default 60)
#   FUZZ_SANITIZER   address (default) or none (faster, finds only panics and aborts)
#   FUZZ_TARGET_DIR  cargo target dir (default fuzz/target)
#   FUZZ_MAX_LEN     largest input in bytes (default 4096; 65536 for snapshot_stream, whose
#                    seeds are whole snapshot states)
#   FUZZ_ARGS        extra libFuzzer arguments
#   FUZZ_KEEP_GOING  1: keep fuzzing after a crash or hang (libFuzzer fork mode); every crash
#                    input is kept and the target still counts as failed
#
# Before fuzzing, every input under fuzz/regressions/<target>/ is replayed: those are the
# crashes found so far, and each must pass once its bug is fixed. Corpora are kept in
# fuzz/corpus/<target>/ (not committed) and grow from run to run, starting from the committed
# seeds in fuzz/seeds/<target>/ (real requests and snapshots: fuzz/seeds/make-seeds.py); a
# crash input is written to
# fuzz/artifacts/<target>/. Exits non-zero if any target crashed, hung or failed to build,
# after printing where the input is and how to reproduce it.
#
# Tooling: cargo-fuzz (installed here if missing) with libFuzzer from the libfuzzer-sys crate
# (built from source, so a C++ compiler is needed). cargo-fuzz passes nightly-only rustc
# flags (-Zsanitizer, sancov); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$root/fuzz
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
target_dir=${FUZZ_TARGET_DIR:-$fuzz_dir/target}
max_len=${FUZZ_MAX_LEN:-4096}
export RUSTC_BOOTSTRAP=1

log() { printf '\n=== %s\n' "$*"; }

if ! command -v c++ >/dev/null 2>&1; then
    log "installing a C++ compiler (libFuzzer is C++)"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq g++
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq g++
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$root"
mapfile -t all_targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

log "building ${targets[*]} (sanitizer: $sanitizer)"
for t in "${targets[@]}"; do
    cargo fuzz build --fuzz-dir "$fuzz_dir" --target-dir "$target_dir" -s "$sanitizer" "$t"
done
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release

failed=()
for t in "${targets[@]}"; do
    bin=$bin_dir/$t
    corpus=$fuzz_dir/corpus/$t
    artifacts=$fuzz_dir/artifacts/$t
    regressions=$fuzz_dir/regressions/$t
    mkdir -p "$corpus" "$artifacts"

    if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
        log "$t: replaying $(ls "$regressions" | wc -l) regression input(s)"
        for input in "$regressions"/*; do
            if ! "$bin" -timeout=10 "$input" >"$artifacts/regression.log" 2>&1; then
                grep -m1 -A1 'panicked at' "$artifacts/regression.log" || tail -5 "$artifacts/regression.log"
                echo "REGRESSION FAILS: $input"
                echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $t $input"
                failed+=("$t (regression $(basename "$input"))")
            fi
        done
    fi

    seeds=()
    if [ -d "$fuzz_dir/seeds/$t" ]; then
        seeds=("$fuzz_dir/seeds/$t")
    fi
    len=$max_len
    if [ -z "${FUZZ_MAX_LEN:-}" ] && [ "$t" = snapshot_stream ]; then
        len=65536
    fi
    log "$t: fuzzing for ${seconds}s"
    before=$(ls "$artifacts" | grep -v '\.log$' | sort || true)
    mode=()
    if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
        mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    set +e
    # shellcheck disable=SC2086
    "$bin" "$corpus" "${seeds[@]}" -max_total_time="$seconds" -max_len="$len" -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 "${mode[@]}" ${FUZZ_ARGS:-} \
        >"$artifacts/fuzz.log" 2>&1
    rc=$?
    set -e
    grep -E 'cov: ' "$artifacts/fuzz.log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$artifacts/fuzz.log" || true
    if [ "${#mode[@]}" -gt 0 ] && [ -n "$(comm -13 <(echo "$before") <(ls "$artifacts" | grep -v '\.log$' | sort || true))" ]; then
        rc=1
    fi
    if [ "$rc" != 0 ]; then
        grep -m1 -A1 'panicked at' "$artifacts/fuzz.log" || grep -m3 -E 'ERROR|SUMMARY' "$artifacts/fuzz.log" || true
        new=$(comm -13 <(echo "$before") <(ls "$artifacts" | grep -v '\.log$' | sort || true) | head -1 || true)
        echo "CRASH in $t (exit $rc); log: $artifacts/fuzz.log"
        if [ -n "$new" ]; then
            echo "  input: $artifacts/$new"
            echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $t $artifacts/$new"
            echo "  decoded:   RUSTC_BOOTSTRAP=1 cargo fuzz fmt --fuzz-dir fuzz $t $artifacts/$new"
        fi
        failed+=("$t")
    fi
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds}s each without a crash"

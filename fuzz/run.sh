#!/usr/bin/env bash
# Builds the fuzz targets on stable Rust and runs each for SECONDS (default
# 60) on a copy of its committed seed corpus; exits non-zero if any target
# finds a crash (reproducer kept under fuzz/artifacts/). Prints each
# target's executions and coverage from libFuzzer's final stats.
#   ./fuzz/run.sh [SECONDS]        PYTHON=... selects the Python (with pyquant installed)
#   FUZZ_JOBS=N                     targets run N at a time (default: number of cores, at most 2)
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${1:-60}
PYTHON=${PYTHON:-python3}
ATHERIS_VERSION=3.0.0  # the newest release with a CPython 3.11 wheel
export PATH="$HOME/.cargo/bin:$PATH"

# --- what the build and the Python target need ------------------------------
if ! compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-$(uname -m).a" >/dev/null \
        && [ -z "${LIBFUZZER_LIB:-}" ]; then
    echo "fuzz/run.sh: installing libclang-rt-14-dev (libFuzzer runtime)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq libclang-rt-14-dev >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq libclang-rt-14-dev >/dev/null; }
fi
if ! "$PYTHON" -c "import atheris, sys, importlib.metadata as m; sys.exit(m.version('atheris') != '$ATHERIS_VERSION')" 2>/dev/null; then
    echo "fuzz/run.sh: installing atheris $ATHERIS_VERSION"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "atheris==$ATHERIS_VERSION"
fi
"$PYTHON" -c "import pyquant" 2>/dev/null \
    || { echo "fuzz/run.sh: pyquant is not importable by $PYTHON (pip install -e . first)" >&2; exit 1; }

# --- build (stable rustc, sanitizer coverage, debug assertions, panic=abort)
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks -Cpanic=abort"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
build_start=$(date +%s)
cargo build --locked --release --quiet --target "$host" --target-dir target
echo "fuzz/run.sh: built in $(( $(date +%s) - build_start ))s"
bin="target/$host/release"

# --- run ---------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p artifacts
flags=(-max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
       -artifact_prefix="$PWD/artifacts/")
run_target() {  # name, command...
    local name=$1; shift
    mkdir -p "$work/corpus/$name"
    cp corpus/"$name"/* "$work/corpus/$name/"
    if "$@" "${flags[@]}" "$work/corpus/$name" >"$work/$name.log" 2>&1; then
        echo 0 >"$work/$name.rc"
    else
        echo $? >"$work/$name.rc"
    fi
}
targets=(quantize batch arrow ggml safetensors_header gguf_header)
jobs=${FUZZ_JOBS:-$(( $(nproc) < 2 ? 1 : 2 ))}
run_start=$(date +%s)
for name in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
    if [ "$name" = safetensors_header ]; then
        run_target "$name" "$PYTHON" safetensors_header.py -dict=safetensors.dict &
    elif [ "$name" = gguf_header ]; then
        run_target "$name" "$PYTHON" gguf_header.py &
    else
        run_target "$name" "$bin/$name" &
    fi
done
wait
echo "fuzz/run.sh: ran ${#targets[@]} targets x ${SECONDS_PER_TARGET}s, $jobs at a time, in $(( $(date +%s) - run_start ))s"

failed=0
printf '%-20s %12s %10s %8s %8s  %s\n' target executions exec/s cov ft result
for name in "${targets[@]}"; do
    log="$work/$name.log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    rc=$(cat "$work/$name.rc")
    result=ok
    if [ "$rc" != 0 ]; then
        result="CRASH (exit $rc)"
        failed=1
    fi
    printf '%-20s %12s %10s %8s %8s  %s\n' "$name" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
    if [ "$rc" != 0 ]; then
        echo "---- $name: last lines of the log ----"
        grep -vE '^#[0-9]+' "$log" | tail -40
        echo "----"
    fi
done
ok=0
for name in "${targets[@]}"; do [ "$(cat "$work/$name.rc")" = 0 ] && ok=$((ok + 1)); done
echo "fuzz: $ok passed, $(( ${#targets[@]} - ok )) failed"
if [ "$failed" != 0 ]; then
    echo "fuzz/run.sh: crash found; reproducers in fuzz/artifacts/ (rerun: fuzz/target/$host/release/TARGET FILE)" >&2
    exit 1
fi

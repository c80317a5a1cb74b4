#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, builds the
# package (cargo release build + CFFI extension), checks cargo fmt and clippy
# (-D warnings), then runs the Rust unit tests and the pytest suite (which also
# builds and runs the C host tests, under valgrind too, and checks the
# committed headers against a fresh cbindgen run), and the pytest suite again against a build of the library with debug
# assertions and overflow checks on, and finally the fuzz targets (fuzz/run.sh,
# 45 s each on the committed seed corpora).
# Extra arguments go to pytest, e.g. ./test.sh -k bad_inputs
set -euo pipefail
cd "$(dirname "$0")"

CBINDGEN_VERSION=0.29.4  # keep in step with tests/test_header.py
PYTHON=${PYTHON:-python3}
export PATH="$HOME/.cargo/bin:$PATH"
# Every build here has the test-only exports (pq_debug_panic,
# pq_arrow_live_exports; tests/c/pyquant_test.h): setup.py passes the feature
# to cargo and build_ffi.py declares them. One feature set for every cargo
# command, so that they share (and do not overwrite) target/release.
export PYQUANT_CARGO_FEATURES=test-ffi

command -v cargo >/dev/null || { echo "test.sh: cargo (Rust) is required" >&2; exit 1; }
command -v cc >/dev/null || { echo "test.sh: a C compiler (cc) is required" >&2; exit 1; }
if ! command -v valgrind >/dev/null && command -v apt-get >/dev/null; then
    echo "test.sh: installing valgrind (the memcheck tests)"
    apt-get install -y -qq valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
fi

if ! command -v cmake >/dev/null && command -v apt-get >/dev/null; then
    # tests/llamacpp_build/build.py: llama.cpp's llama-quantize and llama-simple, built once into
    # ~/.cache/pyquant/llama.cpp-build-<version>/ (tests/test_gguf_file.py compares against them)
    echo "test.sh: installing cmake (the llama.cpp build the GGUF tests compare against)"
    apt-get install -y -qq cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake >/dev/null; }
fi

if ! cbindgen --version 2>/dev/null | grep -qF "$CBINDGEN_VERSION"; then
    echo "test.sh: installing cbindgen $CBINDGEN_VERSION (for the header drift check)"
    cargo install cbindgen --version "=$CBINDGEN_VERSION" --locked --quiet
fi

if ! command -v java >/dev/null && command -v apt-get >/dev/null; then
    # tests/test_engines.py runs the Spark example in local mode (PySpark 4 needs Java 17 or newer)
    echo "test.sh: installing a Java runtime (the Spark example)"
    apt-get install -y -qq openjdk-17-jre-headless >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
fi

"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-engines-nodeps.txt
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .

echo "== cargo fmt, clippy =="
(cd rust && cargo fmt --check && cargo clippy --locked --quiet --all-targets --all-features -- -D warnings)

echo "== cargo test =="
(cd rust && cargo test --release --locked --quiet --features "$PYQUANT_CARGO_FEATURES")

echo "== pytest =="
"$PYTHON" -m pytest "$@"

echo "== pytest against the library built with debug assertions and overflow checks =="
(cd rust && cargo build --profile checked --locked --lib --quiet --features "$PYQUANT_CARGO_FEATURES")
checked=$(mktemp -d)
trap 'rm -rf "$checked"' EXIT
cp -r pyquant "$checked/"
rm -f "$checked"/pyquant/_native*.so
PYQUANT_STATIC_LIB="$PWD/rust/target/checked/libpyquant.a" "$PYTHON" build_ffi.py "$checked" >/dev/null
# Run from the copy's directory, so that it (not the source tree) is `pyquant`.
(
    cd "$checked"
    "$PYTHON" -c "import pyquant, sys; sys.exit(not pyquant.__file__.startswith('$checked'))" \
        || { echo "test.sh: the checked build is not the one imported" >&2; exit 1; }
    # The engine examples (about 90 s of engine start-up) ran in the first pass; so did the other-architecture
    # GGUF files (about 3.5 min of llama-quantize runs; their kernels are the ones test_gguf_file.py checks here).
    PYQUANT_ENGINE_EXAMPLES=0 "$PYTHON" -m pytest -q -p no:cacheprovider -c "$OLDPWD/pyproject.toml" --rootdir "$OLDPWD" \
        --ignore="$OLDPWD/tests/test_c_host.py" --ignore="$OLDPWD/tests/test_valgrind.py" \
        --ignore="$OLDPWD/tests/test_gguf_archs.py" "$OLDPWD/tests" "$@"
)

echo "== fuzzing (fuzz/run.sh: 6 targets x 45 s) =="
PYTHON="$PYTHON" ./fuzz/run.sh 45

"""The C side: build the example host and the C ABI test against the static
library, run them, and check that the header is also valid C++."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "include"
HEADER = INCLUDE / "pyquant.h"
LIB = ROOT / "rust" / "target" / "release" / "libpyquant.a"
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{INCLUDE}"]
SYSTEM_LIBS = ["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"]
# Keep the expected panic of pq_debug_panic to one line of stderr.
RUN_ENV = {**os.environ, "RUST_BACKTRACE": "0"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` not found on PATH: it is needed to build the C tests")
    return path


def static_lib() -> Path:
    if not LIB.is_file():
        pytest.fail(f"{LIB} does not exist: build it with `pip install -e .` from {ROOT}")
    return LIB


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)


def show(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


def build(source: Path, out: Path) -> Path:
    proc = run([require("cc"), *CFLAGS, "-o", out, source, static_lib(), *SYSTEM_LIBS])
    assert proc.returncode == 0, "compilation failed\n" + show(proc)
    return out


def test_example_host_runs(tmp_path):
    exe = build(ROOT / "examples" / "c" / "host.c", tmp_path / "host")
    proc = run([exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)
    assert "max abs error" in proc.stdout and "rejected" in proc.stdout, show(proc)


def test_example_makefile_builds(tmp_path):
    """`make -C examples/c` works, run on a copy so the repo stays clean."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not found")
    static_lib()
    work = tmp_path / "examples" / "c"
    work.mkdir(parents=True)
    for name in ("Makefile", "host.c"):
        shutil.copy(ROOT / "examples" / "c" / name, work / name)
    (tmp_path / "include").symlink_to(INCLUDE)
    (tmp_path / "rust").symlink_to(ROOT / "rust")
    proc = run([make, "-C", work])
    assert proc.returncode == 0, show(proc)
    proc = run([work / "host"], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)


def test_c_abi(tmp_path):
    exe = build(ROOT / "tests" / "c" / "test_abi.c", tmp_path / "test_abi")
    proc = run([exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    match = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert match and int(match.group(1)) > 0, show(proc)


def test_c_arrow(tmp_path):
    """Arrow round trip from C with hand-built structs; release counting."""
    exe = build(ROOT / "tests" / "c" / "test_arrow.c", tmp_path / "test_arrow")
    proc = run([exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    match = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert match and int(match.group(1)) > 0, show(proc)


def test_c_threads(tmp_path):
    """pthreads calling pq_quantize and pq_quantize_batch at once on a shared
    read-only input get the serial call's bytes."""
    exe = build(ROOT / "tests" / "c" / "test_threads.c", tmp_path / "test_threads")
    proc = run([exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.strip().splitlines()[-1] == "120 passed, 0 failed", show(proc)


def test_header_is_valid_cxx():
    proc = run([require("g++"), "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++", HEADER])
    assert proc.returncode == 0, show(proc)


def test_header_is_valid_c11_and_c23_alone():
    """The header compiles on its own, both with the uint32_t typedefs (C11)
    and with the fixed-type enums (C23, when the compiler supports it)."""
    cc = require("cc")
    proc = run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c", HEADER])
    assert proc.returncode == 0, show(proc)
    probe = run([cc, "-std=c2x", "-fsyntax-only", "-x", "c", "/dev/null"])
    if probe.returncode == 0:
        proc = run([cc, "-std=c2x", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c", HEADER])
        assert proc.returncode == 0, show(proc)


@pytest.mark.parametrize("source", ["examples/c/host.c", "tests/c/test_abi.c", "tests/c/test_arrow.c",
                                    "tests/c/test_threads.c"])
def test_c_programs_under_valgrind(tmp_path, source):
    """No invalid reads or writes and no definite leaks, from C through the
    whole library (panics, error paths and Arrow releases included)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.skip("valgrind not found")
    exe = build(ROOT / source, tmp_path / Path(source).stem)
    proc = run([valgrind, "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)
    assert " 0 failed" in proc.stdout or "rejected as expected" in proc.stdout, show(proc)

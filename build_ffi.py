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


ffibuilder = FFI()
with open(HEADER, encoding="utf-8") as f:
    ffibuilder.cdef(cdef_from_header(f.read()))
ffibuilder.set_source(
    "pyquant._native",
    '#include "pyquant.h"',
    include_dirs=[os.path.join(ROOT, "include")],
    extra_objects=[STATIC_LIB],
    libraries=SYSTEM_LIBS,
)

if __name__ == "__main__":
    # `python build_ffi.py DIR` builds pyquant/_native into DIR (test.sh's checked build).
    import sys

    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=False)

"""Every committed generated header is exactly what the pinned cbindgen generates:
include/pyquant.h (the shipped C ABI) and tests/c/pyquant_test.h (the test-only
exports of the `test-ffi` cargo feature)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CBINDGEN_VERSION = "0.29.4"  # keep in step with test.sh

# (committed header, cbindgen arguments after --config/--output, run in rust/)
HEADERS = {
    "include/pyquant.h": ["--config", "cbindgen.toml", "--crate", "pyquant", "."],
    "tests/c/pyquant_test.h": ["--config", "cbindgen-test.toml", "src/ffi/test_ffi.rs"],
}


@pytest.mark.parametrize("header", sorted(HEADERS))
def test_header_has_no_drift(tmp_path, header):
    exe = shutil.which("cbindgen")
    assert exe, f"cbindgen {CBINDGEN_VERSION} is not installed; test.sh installs it"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert CBINDGEN_VERSION in version, f"need cbindgen {CBINDGEN_VERSION}, found {version.strip()}"
    fresh = tmp_path / "fresh.h"
    args = HEADERS[header]
    subprocess.run([exe, *args[:-1], "--output", str(fresh), args[-1]], cwd=ROOT / "rust", check=True,
                   capture_output=True)
    committed = (ROOT / header).read_text()
    assert fresh.read_text() == committed, (
        f"{header} is out of date: regenerate it with "
        f"`cd rust && cbindgen {' '.join(args[:-1])} --output ../{header} {args[-1]}`"
    )


def test_shipped_header_has_no_test_exports():
    shipped = (ROOT / "include" / "pyquant.h").read_text()
    for name in ("pq_debug_panic", "pq_arrow_live_exports"):
        assert name not in shipped
        assert name in (ROOT / "tests" / "c" / "pyquant_test.h").read_text()

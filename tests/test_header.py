"""The committed include/pyquant.h is exactly what the pinned cbindgen generates."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
CBINDGEN_VERSION = "0.29.4"  # keep in step with test.sh


def test_header_has_no_drift(tmp_path):
    exe = shutil.which("cbindgen")
    assert exe, f"cbindgen {CBINDGEN_VERSION} is not installed; test.sh installs it"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert CBINDGEN_VERSION in version, f"need cbindgen {CBINDGEN_VERSION}, found {version.strip()}"
    fresh = tmp_path / "pyquant.h"
    subprocess.run(
        [exe, "--config", "cbindgen.toml", "--crate", "pyquant", "--output", str(fresh), "."],
        cwd=ROOT / "rust", check=True, capture_output=True,
    )
    committed = (ROOT / "include" / "pyquant.h").read_text()
    assert fresh.read_text() == committed, (
        "include/pyquant.h is out of date: regenerate it with "
        "`cd rust && cbindgen --config cbindgen.toml --crate pyquant --output ../include/pyquant.h .`"
    )

"""The Python workload (tests/valgrind/workload.py) under valgrind memcheck:
no invalid read or write, no use of uninitialised memory and no definite
leak in pyquant's own code (frames of the Rust library or its exported
pq_* functions). The interpreter, numpy, pyarrow and the dynamic loader
report errors of their own under memcheck; those are counted but not ours
to fix, so errors are attributed by their stack. PYTHONMALLOC=malloc lets
memcheck see every allocation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def ours(frame: ET.Element) -> bool:
    fn = frame.findtext("fn") or ""
    return "pyquant::" in fn or fn.startswith("pq_") or "_ZN7pyquant" in fn


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not found")
def test_python_workload_under_memcheck(tmp_path):
    xml = tmp_path / "memcheck.xml"
    env = {**os.environ, "PYTHONMALLOC": "malloc", "RUST_BACKTRACE": "0"}
    proc = subprocess.run(
        ["valgrind", "--xml=yes", f"--xml-file={xml}", "--leak-check=full", "--show-leak-kinds=definite",
         "--errors-for-leak-kinds=definite", "--num-callers=40", sys.executable, str(HERE / "valgrind" / "workload.py")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0 and "workload ok, live exports 0" in proc.stdout, proc.stdout + proc.stderr
    errors = ET.parse(xml).getroot().findall("error")
    mine = []
    for e in errors:
        frames = e.findall("./stack/frame")
        if any(ours(f) for f in frames):
            where = " <- ".join(f.findtext("fn") or "?" for f in frames[:8])
            mine.append(f"{e.findtext('kind')}: {where}")
    assert errors is not None  # the XML was written and parsed
    assert not mine, "\n".join(mine)

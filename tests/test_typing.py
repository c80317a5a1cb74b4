"""The package type-checks with ``mypy --strict`` (settings in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mypy_strict_passes():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "pyquant"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


USAGE = '''
from typing import Any

from typing_extensions import assert_type  # typing has it from 3.11; mypy targets 3.10

import numpy as np
import pyquant

w = np.ones((4, 128), np.float32)
assert_type(pyquant.quantize_ptr(w), pyquant.QuantizedTensor)
assert_type(pyquant.quantize_batch({"a": w}), dict[str, pyquant.QuantizedTensor])
assert_type(pyquant.quantize_batch([w]), list[pyquant.QuantizedTensor])
q = pyquant.quantize_batch({"a": w})
assert_type(pyquant.dequantize_batch(q), dict[str, np.ndarray[Any, Any]])
assert_type(pyquant.dequantize_batch([q["a"]]), list[np.ndarray[Any, Any]])
assert_type(pyquant.quantize(w), pyquant.QuantizedTensor)
assert_type(pyquant.quantize("m.safetensors", dst="q.safetensors", force=True), pyquant.Summary)
assert_type(pyquant.quantize_file("m.safetensors", "q.safetensors", force=True), pyquant.Summary)
assert_type(pyquant.quantize_arrow_file("w.arrow", "q.arrow", force=True), pyquant.Summary)
assert_type(pyquant.dequantize_file("q.safetensors", "d.safetensors", force=True), pyquant.Summary)
assert_type(pyquant.error_report("m.safetensors", "q.safetensors"), pyquant.Report)
assert_type(pyquant.inspect("q.safetensors"), tuple[list[pyquant.InspectRow], dict[str, str]])
assert_type(pyquant.explain(w), pyquant.PathChoice)
'''


def test_public_functions_have_precise_return_types(tmp_path):
    """A user's code type-checks against the precise types (no Any leaking out)."""
    usage = tmp_path / "usage.py"
    usage.write_text(USAGE)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(usage)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "MYPYPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

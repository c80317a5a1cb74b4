"""The `pyquant` console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyquant import cli, demo


def run(*args):
    return subprocess.run([sys.executable, "-m", "pyquant.cli", *args], capture_output=True, text=True, timeout=300)


def test_demo_prints_a_table_per_bit_width():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    for bits in (8, 4, 2):
        assert f"== {bits}-bit, group size 128 ==" in out.stdout
    tables, files = out.stdout.split("== file pipeline:")
    for name in demo.synthetic_model():
        assert tables.count(name + " ") == 3
        assert files.count(name + " ") == 2  # inspect and report
    assert "layers.0.attn.norm.weight" in files and "dequantize: 17 tensors" in files
    header = "layer shape dtype bits ratio max abs err rel RMSE time ms"
    assert " ".join(out.stdout.split("\n")[1].split()) == header


def test_demo_is_deterministic_and_error_shrinks_with_bits():
    model = demo.synthetic_model(seed=5, d_model=128, d_ff=256, vocab=256, n_layers=1)
    model2 = demo.synthetic_model(seed=5, d_model=128, d_ff=256, vocab=256, n_layers=1)
    for k in model:
        assert model[k].tobytes() == model2[k].tobytes()
    import pyquant

    w = model["lm_head"]
    errs = [pyquant.error_stats(w, pyquant.quantize_ptr(w, bits=b).dequantize()).rel_rmse for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_help_and_bad_arguments():
    assert "demo" in run("--help").stdout
    assert "--group-size" in run("demo", "--help").stdout
    bad = run("demo", "--bits", "3")
    assert bad.returncode == 1 and "pyquant: error: bits must be 2, 4 or 8, got 3" in bad.stderr
    assert "Traceback" not in bad.stderr
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])

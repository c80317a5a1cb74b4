"""The GGML functions of the C ABI from a C host (tests/c/test_ggml.c),
plain and under valgrind."""

import shutil

import pytest
from test_c_host import ROOT, RUN_ENV, build, run, show


def test_c_ggml(tmp_path):
    exe = build(ROOT / "tests" / "c" / "test_ggml.c", tmp_path / "test_ggml")
    proc = run([exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.strip().splitlines()[-1] == "26 passed, 0 failed", show(proc)


def test_c_ggml_under_valgrind(tmp_path):
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.skip("valgrind not found")
    exe = build(ROOT / "tests" / "c" / "test_ggml.c", tmp_path / "test_ggml")
    proc = run([valgrind, "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                exe], env=RUN_ENV)
    assert proc.returncode == 0, show(proc)

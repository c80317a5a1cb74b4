"""The Python examples in examples/ run as they are (each in a fresh process,
importing the same pyquant as the tests) and print their closing line. The C
host in examples/c is run by tests/test_c_host.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pyquant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = {
    "zero_copy_vs_copy.py": "same bytes from ptr and copy: OK",
    "mixed_precision_batch.py": "batch of 7 tensors, overall compression",
    "arrow_round_trip.py": "arrow round trip of 2 tensors: OK",
    "checkpoint_file.py": "checkpoint file round trip: OK",
}


def test_every_example_is_listed():
    found = {f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py")}
    assert found == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path):
    # The directory holding the imported pyquant goes first on the path, so
    # that the example uses the build under test.
    package_parent = os.path.dirname(os.path.dirname(pyquant.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert EXAMPLES[name] in proc.stdout, proc.stdout

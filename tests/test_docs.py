"""Every code example in README.md and docs/*.md works: each ```python block
runs (after a shared set-up that defines the arrays the snippets use), and
each ```c block compiles against include/pyquant.h.

A block that is meant to end in an exception is marked by an HTML comment on
the line before it: ``<!-- docs-test: raises ExceptionName -->``; the test
then checks that it raises exactly that (a pyquant exception class).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import textwrap

import pytest

import pyquant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
BLOCK = re.compile(r"(?:<!-- docs-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.S | re.M)


def blocks(lang: str) -> list:
    found = []
    for path in DOCS:
        text = open(path, encoding="utf-8").read()
        for m in BLOCK.finditer(text):
            if m.group("lang") == lang:
                line = text.count("\n", 0, m.start("code")) + 1
                found.append(pytest.param(m.group("code"), m.group("mark"),
                                          id=f"{os.path.relpath(path, ROOT)}:{line}"))
    return found


# The arrays, Arrow objects and files the snippets use without defining them.
SETUP = textwrap.dedent(
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc
    import pyquant

    _rng = np.random.default_rng(0)
    w = _rng.normal(0, 0.02, size=(256, 512)).astype(np.float32)
    wq = _rng.normal(0, 0.02, size=(512, 512)).astype(np.float32)
    wk = _rng.normal(0, 0.02, size=(128, 512)).astype(np.float32)
    wd = _rng.normal(0, 0.02, size=(512, 1024)).astype(np.float16)
    q, k = wq[:64], wk[:32]
    w1d = _rng.normal(0, 0.02, size=1024).astype(np.float32)
    _batch = pa.record_batch({"name": ["a", "b"], "weights": [wq.ravel(), wk.ravel()],
                              "shape": [list(wq.shape), list(wk.shape)]})
    table = pa.Table.from_batches([_batch, _batch])
    reader = pa.RecordBatchReader.from_batches(_batch.schema, [_batch, _batch])
    with pa.OSFile("weights.arrow", "wb") as _sink, pa.ipc.new_file(_sink, _batch.schema) as _writer:
        _writer.write_batch(_batch)
    from pyquant.safetensors_io import CODE_OF, OutputTensor, writing
    _model = {"embed.weight": wq, "layer.0.mlp.weight": wd, "norm.weight": w1d, "lm_head.weight": wk}
    with writing("model.safetensors", [OutputTensor(n, CODE_OF[str(a.dtype)], a.shape)
                                       for n, a in _model.items()], {}) as _w:
        for _n, _a in _model.items():
            _w.write(_n, _a)
    """
)


def test_the_docs_have_examples():
    assert len(blocks("python")) >= 5 and len(blocks("c")) >= 2


@pytest.mark.parametrize("code,mark", blocks("python"))
def test_python_block_runs(code, mark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the snippets write land here
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(SETUP, "<set-up>", "exec"), namespace)
    program = compile(code, "<docs>", "exec")
    if mark is None:
        exec(program, namespace)
        return
    kind, _, name = mark.partition(" ")
    assert kind == "raises", f"unknown docs-test mark {mark!r}"
    with pytest.raises(getattr(pyquant, name)) as info:
        exec(program, namespace)
    assert type(info.value) is getattr(pyquant, name)


C_PRELUDE = """
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("code,mark", blocks("c"))
def test_c_block_compiles(code, mark, tmp_path):
    """A fragment goes into a function body whose parameters are the names
    the fragments take from their surroundings; it may redeclare them in
    its own block. #include lines stay at file scope."""
    includes = "".join(line + "\n" for line in code.splitlines() if line.startswith("#include"))
    body = "".join(line + "\n" for line in code.splitlines() if not line.startswith("#include"))
    source = (
        C_PRELUDE + includes + '#include "pyquant.h"\n'
        "void snippet(const float *weights, size_t n, size_t row_len, struct ArrowArray in,\n"
        "             struct ArrowSchema in_schema, PqError err) {\n{\n" + body + "}\n}\n"
    )
    (tmp_path / "snippet.c").write_text(source)
    proc = subprocess.run(
        ["cc", "-std=c11", "-fsyntax-only", "-Wall", "-Werror", "-Wno-unused-variable",
         "-Wno-unused-but-set-variable", "-Wno-unused-parameter",
         "-I", os.path.join(ROOT, "include"), str(tmp_path / "snippet.c")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, source + proc.stderr


def test_readme_says_how_long_the_build_takes_and_how_to_watch_it():
    """Issue 12 item 12: pip prints nothing for minutes; the README says how
    long, why, and the verbose install that shows cargo's progress. The
    command it measured is the one setup.py runs."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    text = " ".join(readme.split())
    assert "The build takes a few minutes and prints nothing meanwhile." in text
    assert "pip install -v '.[arrow]'" in text
    measured = re.search(r"\(`(cargo build [^`]*)`\) took (\d+) s", text)
    assert measured and 10 <= int(measured.group(2)) <= 600
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert all(f'"{word}"' in setup for word in measured.group(1).split())

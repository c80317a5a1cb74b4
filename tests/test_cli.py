"""The `pyquant` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import pyquant
from pyquant import cli, demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, module="pyquant.cli"):
    """The command as a user runs it, from the source tree (the installed
    console script may point at another checkout)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


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
    header = "layer shape dtype bits ratio max abs err rel RMSE time ms flag"
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
    bad = run("demo", "--bits", "5")
    assert bad.returncode == 1 and "pyquant: error: bits must be 2, 3, 4 or 8, got 5" in bad.stderr
    assert "Traceback" not in bad.stderr
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])


# --- issue 12: a conventional CLI ----------------------------------------------------------------


def model_file(path, n_small=0):
    rng = np.random.default_rng(3)
    tensors = {"w": rng.normal(0, 0.02, (8, 128)).astype(np.float32), "norm.weight": np.ones(128, np.float32),
               "ids": np.arange(4, dtype=np.int64)}
    tensors.update({f"t{i:05d}": np.ones((1, 8), np.float32) for i in range(n_small)})
    save_file(tensors, str(path))
    return path


def test_python_dash_m_pyquant_is_the_command():
    out = run("--version", module="pyquant")
    assert out.returncode == 0 and out.stdout.startswith("pyquant ")
    assert run("--help", module="pyquant").stdout == run("--help").stdout


def test_broken_pipe_exits_quietly(tmp_path):
    """`pyquant inspect x | head -n 2`: no traceback, no error line."""
    src = model_file(tmp_path / "big.safetensors", n_small=4000)  # ~300 KB of table: more than a pipe holds
    cmd = f"{sys.executable} -m pyquant inspect {src} | head -n 2; echo status=${{PIPESTATUS[0]}} >&2"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert len(out.stdout.splitlines()) == 2
    assert out.stderr.strip() in ("status=141", "status=0"), out.stderr  # 0: everything fit before head closed
    assert out.stderr.strip() == "status=141"  # with 4000 rows the pipe does close early


def test_every_positional_argument_has_help_and_help_ends_with_examples():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    for name, sub in [("pyquant", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if not action.option_strings and not isinstance(action, cli.argparse._SubParsersAction):
                assert action.help, f"{name} {action.dest} has no help"
        text = run(*([] if name == "pyquant" else [name]), "--help").stdout
        tail = text.rstrip().split("\n\n")[-1].splitlines()
        assert tail[0] == "examples:" and 2 <= len(tail) - 1 <= 3, (name, tail)


def test_inspect_json_and_report_say_why_each_tensor_was_kept(tmp_path):
    src, dst = model_file(tmp_path / "m.safetensors"), tmp_path / "q.safetensors"
    assert run("quantize", src, dst, "--group-size", "64").returncode == 0
    data = json.loads(run("inspect", dst, "--json").stdout)
    why = {t["name"]: t["kept_because"] for t in data["tensors"]}
    assert why == {"w": None, "norm.weight": "1-D (bias or norm)",
                   "ids": "dtype I64 is not floating point (float32, float16, bfloat16)"}
    assert data["tensors"][0]["bits"] in (4, None)
    text = run("inspect", dst).stdout
    assert "kept norm.weight: 1-D (bias or norm)" in text
    rep = json.loads(run("report", src, dst, "--json").stdout)
    assert {t["name"]: t["kept_because"] for t in rep["tensors"]} == why
    assert "kept ids: dtype I64 is not floating point" in run("report", src, dst).stdout
    # The Arrow format records them too.
    arrow = tmp_path / "q.arrow"
    assert run("quantize", src, arrow, "--group-size", "64").returncode == 0
    assert {t["name"]: t["kept_because"] for t in json.loads(run("inspect", arrow, "--json").stdout)["tensors"]} == why
    # A plain safetensors file carries nothing over: no reasons.
    assert all(t["kept_because"] is None for t in json.loads(run("inspect", src, "--json").stdout)["tensors"])


def test_format_follows_the_extension_unless_forced(tmp_path):
    src = model_file(tmp_path / "m.safetensors")
    out = run("quantize", src, tmp_path / "q.arrow")
    assert out.returncode == 0 and pyquant.formats.is_arrow(tmp_path / "q.arrow")
    for fmt, name in (("arrow", "q.safetensors"), ("safetensors", "q2.arrow")):
        out = run("quantize", src, tmp_path / name, "--format", fmt)
        assert out.returncode == 2 and "is named like a" in out.stderr and "--force-format" in out.stderr
        assert not (tmp_path / name).exists()
    out = run("quantize", src, tmp_path / "q.safetensors", "--format", "arrow", "--force-format")
    assert out.returncode == 0 and pyquant.formats.is_arrow(tmp_path / "q.safetensors")
    out = run("quantize", src, tmp_path / "q.bin", "--format", "arrow")  # no known extension: as asked
    assert out.returncode == 0 and pyquant.formats.is_arrow(tmp_path / "q.bin")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dequantize_dtype_option(tmp_path, dtype):
    src, dst, back = model_file(tmp_path / "m.safetensors"), tmp_path / "q.safetensors", tmp_path / "d.safetensors"
    assert run("quantize", src, dst, "--group-size", "64").returncode == 0
    out = run("dequantize", dst, back, "--dtype", dtype)
    assert out.returncode == 0, out.stderr
    with pyquant.safetensors_io.SafetensorsFile(back) as f:
        w = f.array("w")
        assert str(w.dtype) == dtype
        want = pyquant.load_quantized(dst)["w"].dequantize(dtype)
        assert w.tobytes() == want.tobytes()
        assert f.array("ids").dtype == np.int64  # carried over as it was
    assert run("dequantize", dst, back, "--dtype", "int8").returncode == 2


@pytest.mark.parametrize("content,expect", [
    (b"hello, this is a text file\n", "not a safetensors file: it starts with text"),
    (b'{"weights": [1, 2, 3]}', "not a safetensors file: it starts with text"),
    (b"", "not a safetensors file: it is empty"),
    (b"PK\x03\x04" + bytes(40), "it is a zip archive (a PyTorch .bin/.pt checkpoint?"),
    (b"\x80\x02" + bytes(40), "it is a Python pickle"),
    (bytes(range(200, 216)), "not a safetensors file (its first 8 bytes, read as the header length"),
])
def test_messages_in_the_users_terms(tmp_path, content, expect):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    for args in (("inspect", path), ("quantize", path, tmp_path / "q.safetensors")):
        out = run(*args)
        assert out.returncode == 1 and expect in out.stderr, out.stderr
        assert "8031924123371070824" not in out.stderr and "limit)" not in out.stderr.replace("MB limit)", "")


def test_demo_and_report_flag_high_error(tmp_path):
    """2-bit tensors are flagged (!!) with a line saying what it means; 8-bit ones are not."""
    from pyquant.metrics import HIGH_REL_RMSE

    out = run("demo", "--bits", "8", "2", "--no-files")
    eight, two = out.stdout.split("== 2-bit")
    assert "!!" not in eight and "flagged" not in eight
    flagged = [line for line in two.splitlines() if line.rstrip().endswith("!!")]
    assert len(flagged) == len(demo.synthetic_model())
    assert f"!! = relative RMSE >= {HIGH_REL_RMSE}" in two and "likely to break the model" in two
    src = model_file(tmp_path / "m.safetensors")
    for bits, marked in ((2, True), (8, False)):
        dst = tmp_path / f"q{bits}.safetensors"
        assert run("quantize", src, dst, "--bits", str(bits), "--group-size", "64").returncode == 0
        text = run("report", src, dst).stdout
        assert (" !!" in text and "1 of 1 quantized tensors flagged" in text) == marked, text
        rep = json.loads(run("report", src, dst, "--json").stdout)
        assert rep["summary"]["high_error"] == (["w"] if marked else [])
        assert rep["summary"]["high_error_threshold"] == HIGH_REL_RMSE
        assert [t["high_error"] for t in rep["tensors"] if t["name"] == "w"] == [marked]


def test_a_tampered_kept_list_is_an_error_and_reasons_print_escaped(tmp_path):
    """pyquant.kept comes from the file: a wrong type is a one-line error,
    and a reason holding escape sequences is printed inert."""
    from pyquant.safetensors_io import SafetensorsFile

    src, dst = model_file(tmp_path / "m.safetensors"), tmp_path / "q.safetensors"
    assert run("quantize", src, dst, "--group-size", "64").returncode == 0
    with SafetensorsFile(dst) as f:
        tensors = {n: np.array(f.array(n)) for n in f.tensors}
        meta = dict(f.metadata)
    for kept, expect in (('{"why": "norm.weight"}', "pyquant.kept must be a JSON object of string lists"),
                         ("[1]", "pyquant.kept must be a JSON object of string lists")):
        bad = tmp_path / "bad.safetensors"
        save_file(tensors, str(bad), {**meta, "pyquant.kept": kept})
        out = run("inspect", bad)
        assert out.returncode == 1 and expect in out.stderr, out.stderr
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd), {**meta, "pyquant.kept": json.dumps({"\x1b[31mred": ["norm.weight", "ids"]})})
    out = run("inspect", odd)
    assert out.returncode == 0 and "\x1b" not in out.stdout and "kept ids: \\x1b[31mred" in out.stdout

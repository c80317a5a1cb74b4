"""GGUF, second round (issue 14): llama-quantize's --allow-requantize,
--override-kv and --include/--exclude-weights against llama-quantize itself,
the Python API on GGUF files (inspect, error_report, dequantize to
safetensors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.numpy

import pyquant
from pyquant import gguf as pg
from pyquant import gguf_file, pipeline
from pyquant.cli import main
from pyquant.pipeline import dequantize_gguf, quantize_gguf

sys.path.insert(0, str(Path(__file__).parent))

from test_gguf_file import _llama_quantize, llama_bin, make_imatrix, make_model, written  # noqa: E402,F401


@pytest.fixture(scope="module")
def f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("opts") / "f16.gguf", "F16", seed=11)


@pytest.fixture(scope="module")
def imatrix(f16: Path) -> Path:
    return make_imatrix(f16.with_suffix(".imatrix.gguf"), f16, seed=4)


def _same(llama_bin: Path, src: Path, tmp_path: Path, preset: str, cli: list[str], **kw: object) -> None:
    """pyquant's file (API and CLI) is llama-quantize's, byte for byte."""
    ref, mine, by_cli = tmp_path / "ref.gguf", tmp_path / "mine.gguf", tmp_path / "cli.gguf"
    _llama_quantize(llama_bin, src, ref, preset, *cli)
    quantize_gguf(src, mine, preset=preset, **kw)  # type: ignore[arg-type]
    assert main(["quantize", str(src), str(by_cli), "--type", preset, "--quiet", *cli]) == 0
    want = ref.read_bytes()
    assert mine.read_bytes() == want
    assert by_cli.read_bytes() == want


@pytest.mark.parametrize("first,then", [("Q8_0", "Q4_K_M"), ("Q4_K_M", "Q4_0"), ("Q6_K", "IQ4_XS"),
                                        ("Q5_1", "Q3_K_M")])
def test_requantize_as_llama_quantize(llama_bin: Path, f16: Path, tmp_path: Path, first: str, then: str) -> None:
    quantized = tmp_path / "first.gguf"
    _llama_quantize(llama_bin, f16, quantized, first)
    with pytest.raises(pyquant.CheckpointError, match="requantizing from type .* is disabled.*allow"):
        quantize_gguf(quantized, tmp_path / "no.gguf", preset=then)
    assert not (tmp_path / "no.gguf").exists()
    _same(llama_bin, quantized, tmp_path, then, ["--allow-requantize"], allow_requantize=True)


def test_requantize_same_type_copies(f16: Path, tmp_path: Path) -> None:
    """Tensors already of the target type are copied, so no flag is needed."""
    q = tmp_path / "q8.gguf"
    quantize_gguf(f16, q, preset="Q8_0")
    again = tmp_path / "again.gguf"
    s = quantize_gguf(q, again, preset="Q8_0")
    assert s.quantized == 0 and again.read_bytes() == q.read_bytes()


OVERRIDES = ["general.name=str:pyquant test", "llama.context_length=int:-256", "test.scale=float:0.1",
             "test.flag=bool:true", "general.file_type=int:99"]


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["", "imatrix"])
def test_override_kv_as_llama_quantize(llama_bin: Path, f16: Path, imatrix: Path, tmp_path: Path,
                                       with_imatrix: bool) -> None:
    cli = [a for o in OVERRIDES for a in ("--override-kv", o)]
    kw: dict[str, object] = {"override_kv": OVERRIDES}
    if with_imatrix:  # the imatrix keys come after the user's overrides, also one set by both
        cli += ["--imatrix", str(imatrix), "--override-kv", "quantize.imatrix.file=str:mine"]
        kw.update(imatrix=str(imatrix), override_kv=OVERRIDES + ["quantize.imatrix.file=str:mine"])
    _same(llama_bin, f16, tmp_path, "Q4_K_M", cli, **kw)
    r = gguf.GGUFReader(str(tmp_path / "mine.gguf"))
    assert r.fields["general.name"].contents() == "pyquant test"
    assert r.fields["llama.context_length"].contents() == 256  # u32 of the absolute value, as llama.cpp
    assert r.fields["general.file_type"].contents() == 99


@pytest.mark.parametrize("spec", ["novalue", "=int:1", "k=int", "k=int:x", "k=float:", "k=bool:yes",
                                  "k=str:" + "x" * 128, "k=list:1", "k" * 128 + "=int:1"])
def test_bad_override_kv_is_one_error(f16: Path, tmp_path: Path, spec: str) -> None:
    with pytest.raises(pyquant.QuantizeError, match="override_kv"):
        quantize_gguf(f16, tmp_path / "out.gguf", preset="Q4_0", override_kv=[spec])
    assert main(["quantize", str(f16), str(tmp_path / "out.gguf"), "--type", "Q4_0", "--override-kv", spec]) == 1
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("option,names", [
    ("include", ["ffn_down", "attn_v"]),
    ("exclude", ["blk.1.", "token_embd"]),
    ("exclude", ["weight"]),  # nothing left: no imatrix at all (no keys, no promotions)
])
@pytest.mark.parametrize("preset", ["Q4_0", "Q4_K_M", "IQ4_XS"])
def test_include_exclude_weights_as_llama_quantize(llama_bin: Path, f16: Path, imatrix: Path, tmp_path: Path,
                                                   option: str, names: list[str], preset: str) -> None:
    cli = ["--imatrix", str(imatrix)] + [a for n in names for a in (f"--{option}-weights", n)]
    _same(llama_bin, f16, tmp_path, preset, cli, imatrix=str(imatrix), **{f"{option}_weights": names})


def test_include_and_exclude_together_is_an_error(f16: Path, imatrix: Path, tmp_path: Path) -> None:
    with pytest.raises(pyquant.QuantizeError, match="together"):
        quantize_gguf(f16, tmp_path / "o.gguf", preset="Q4_0", imatrix=imatrix, include_weights=["a"],
                      exclude_weights=["b"])
    with pytest.raises(pyquant.QuantizeError, match="imatrix"):
        quantize_gguf(f16, tmp_path / "o.gguf", preset="Q4_0", include_weights=["a"])


# --- the Python API on GGUF files ---------------------------------------------

def test_inspect_gguf(f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = tmp_path / "q.gguf"
    quantize_gguf(f16, q, preset="Q4_K_M")
    rows, meta = pyquant.inspect(q)
    assert meta["format"] == "gguf" and meta["general.architecture"] == "llama" and meta["general.file_type"] == "15"
    by = {r.name: r for r in rows}
    r = by["blk.0.attn_q.weight"]
    assert (r.dtype, r.shape, r.stored_bytes, r.bits_per_weight) == ("Q4_K", (256, 256), 256 * 144, 4.5)
    assert r.original_bytes == 256 * 256 * 4
    norm = by["blk.0.attn_norm.weight"]
    assert (norm.dtype, norm.shape, norm.bits_per_weight, norm.original_bytes) == ("F32", (256,), 32.0, 1024)
    with gguf_reader(q) as names:
        assert [r.name for r in rows] == names
    assert main(["inspect", str(q), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["container"] == "gguf" and doc["tensors"][0]["bits_per_weight"] > 0


class gguf_reader:
    """The tensor names of a GGUF file, by gguf-py."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> list[str]:
        return [t.name for t in gguf.GGUFReader(str(self.path)).tensors]

    def __exit__(self, *exc: object) -> None:
        pass


def test_error_report_takes_gguf(f16: Path, tmp_path: Path) -> None:
    q = tmp_path / "q.gguf"
    quantize_gguf(f16, q, preset="Q4_0")
    seen = []
    rep = pyquant.error_report(f16, q, progress=seen.append)
    s = rep.summary()
    assert (s["quantized"], s["kept"]) == (30, 9)
    assert {t.bits for t in rep.tensors if t.dtype == "Q4_0"} == {4.5}
    assert 0.05 < s["mean_rel_rmse"] < 0.2
    assert seen[-1].done_tensors == seen[-1].tensors == len(rep.tensors)


def test_error_report_of_safetensors_to_gguf(tmp_path: Path) -> None:
    """A GGUF file made from safetensors, against the safetensors source."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    tensors = {"a.weight": rng.normal(size=(64, 512)).astype(np.float16),
               "b.weight": rng.normal(size=(32, 256)).astype(np.float32),
               "c.bias": rng.normal(size=(512,)).astype(np.float32), "ids": np.arange(4, dtype=np.int32)}
    src, q = tmp_path / "m.safetensors", tmp_path / "m.gguf"
    save_file(tensors, str(src))
    pyquant.safetensors_to_gguf(src, q, qtype="Q8_0")
    rep = pyquant.error_report(src, q)
    by = {t.name: t for t in rep.tensors}
    assert by["a.weight"].bits == by["b.weight"].bits == 8.5 and by["c.bias"].bits is by["ids"].bits is None
    assert by["a.weight"].shape == (512, 64) and 0 < by["a.weight"].stats.rel_rmse < 0.01
    other = tmp_path / "other.safetensors"
    save_file({**tensors, "c.bias": tensors["c.bias"] + 1}, str(other))
    with pytest.raises(pyquant.CheckpointError, match="carried-over tensor 'c.bias' differs"):
        pyquant.error_report(other, q)
    save_file({"a.weight": tensors["a.weight"]}, str(other))
    with pytest.raises(pyquant.CheckpointError, match="different tensors"):
        pyquant.error_report(other, q)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_dequantize_gguf_to_safetensors(f16: Path, tmp_path: Path, dtype: str) -> None:
    from safetensors.numpy import load_file

    q = tmp_path / "q.gguf"
    quantize_gguf(f16, q, preset="Q4_K_M")
    out = tmp_path / "back.safetensors"
    assert main(["dequantize", str(q), str(out), "--dtype", dtype, "--quiet"]) == 0
    got = load_file(str(out)) if dtype != "BF16" else None
    # the same values as the GGUF way back, in numpy order
    ref = tmp_path / "back.gguf"
    dequantize_gguf(q, ref, dtype=dtype)
    for t in gguf.GGUFReader(str(ref)).tensors:
        with pyquant.safetensors_io.Checkpoint(out) as ck:
            x = ck.array(t.name)
            assert x.shape == tuple(reversed([int(d) for d in t.shape]))
            assert x.tobytes() == t.data.tobytes(), t.name
    if got is not None:
        assert got["blk.0.attn_q.weight"].dtype == {"F32": np.float32, "F16": np.float16}[dtype]


def test_dequantize_to_safetensors_refuses_types_without_a_dequantizer(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "tq.gguf"), "llama")
    w.add_tensor("a.weight", np.zeros((2, 54), np.uint8), raw_dtype=gguf.GGMLQuantizationType.TQ1_0)
    written(w, tmp_path / "tq.gguf")
    with pytest.raises(pyquant.CheckpointError, match="TQ1_0"):
        dequantize_gguf(tmp_path / "tq.gguf", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    dequantize_gguf(tmp_path / "tq.gguf", tmp_path / "out.gguf")  # a GGUF output copies it
    assert "TQ1_0" not in pg.SUPPORTED_TYPES and (tmp_path / "out.gguf").exists()


# --- split models: NAME-00001-of-0000N.gguf in, one file or --keep-split out ----

@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("split")
    make_model(d / "model.gguf", "F16", seed=12, split_max_tensors=15)
    return d / "model-00001-of-00003.gguf"


def _outputs(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("keep_split", [False, True], ids=["one-file", "keep-split"])
@pytest.mark.parametrize("preset", ["Q4_0", "Q4_K_M"])
def test_split_model_as_llama_quantize(llama_bin: Path, split: Path, f16: Path, tmp_path: Path, preset: str,
                                       keep_split: bool) -> None:
    for src in (split, f16):  # a split model, and (with --keep-split: one split of one) a single file
        ref, mine = tmp_path / "ref", tmp_path / "mine"
        for d in (ref, mine):
            d.mkdir(exist_ok=True)
            for p in d.iterdir():
                p.unlink()
        extra = ["--keep-split"] if keep_split else []
        _llama_quantize(llama_bin, src, ref / "q.gguf", preset, *extra)
        assert main(["quantize", str(src), str(mine / "q.gguf"), "--type", preset, "--quiet", *extra]) == 0
        got, want = _outputs(mine), _outputs(ref)
        assert list(got) == list(want), src
        if keep_split:
            assert len(got) == (3 if src == split else 1) and all("-of-0000" in n for n in got)
        assert got == want, src


def test_bad_split_models_are_one_line_errors(split: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "m"
    d.mkdir()
    for p in split.parent.glob("model-0000*"):
        shutil.copy(p, d / p.name)
    first, second = d / split.name, d / "model-00002-of-00003.gguf"
    with pytest.raises(pyquant.CheckpointError, match="split.no 1: give the first file"):
        quantize_gguf(second, tmp_path / "o.gguf", preset="Q4_0")
    renamed = d / "renamed.gguf"
    shutil.copy(first, renamed)
    with pytest.raises(pyquant.CheckpointError, match="does not end in -00001-of-00003.gguf"):
        quantize_gguf(renamed, tmp_path / "o.gguf", preset="Q4_0")
    (d / "model-00003-of-00003.gguf").unlink()
    with pytest.raises(pyquant.CheckpointError, match="model-00003-of-00003.gguf"):
        quantize_gguf(first, tmp_path / "o.gguf", preset="Q4_0")
    shutil.copy(second, d / "model-00003-of-00003.gguf")  # split.no 1 where 2 belongs
    with pytest.raises(pyquant.CheckpointError, match="split.no is 1, expected 2"):
        quantize_gguf(first, tmp_path / "o.gguf", preset="Q4_0")
    assert not (tmp_path / "o.gguf").exists()


def test_cli_refuses_options_the_run_cannot_use(f16: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.numpy import save_file

    st = tmp_path / "m.safetensors"
    save_file({"a.weight": np.ones((4, 256), np.float32)}, str(st))
    for argv, says in [
        ([str(st), str(tmp_path / "o.gguf"), "--type", "Q4_K", "--pure", "--keep-split"],
         "--pure --keep-split: only for a GGUF input"),
        ([str(st), str(tmp_path / "o.safetensors"), "--override-kv", "a=int:1"], "--override-kv: only for a GGUF"),
        ([str(f16), str(tmp_path / "o.gguf"), "--type", "Q4_0", "--arch", "flux"], "--arch: only for a safetensors"),
    ]:
        assert main(["quantize", *argv]) == 1
        assert says in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


def test_dequantize_a_split_model(split: Path, tmp_path: Path) -> None:
    """--keep-split parts dequantize (given the first) to one file of every tensor, without split keys."""
    q = tmp_path / "q.gguf"
    quantize_gguf(split, q, preset="Q4_K_M", keep_split=True)
    parts = sorted(tmp_path.glob("q-0000*-of-00003.gguf"))
    assert len(parts) == 3 and not q.exists()
    whole, back = tmp_path / "whole.gguf", tmp_path / "back.gguf"
    quantize_gguf(split, whole, preset="Q4_K_M")
    dequantize_gguf(parts[0], back)
    got = {t.name: t.data.tobytes() for t in gguf.GGUFReader(str(back)).tensors}
    dequantize_gguf(whole, tmp_path / "back-whole.gguf")
    r = gguf.GGUFReader(str(tmp_path / "back-whole.gguf"))
    assert got == {t.name: t.data.tobytes() for t in r.tensors}
    assert not any(k.startswith("split.") for k in gguf.GGUFReader(str(back)).fields)
    rows, _ = pyquant.inspect(parts[0])
    assert len(rows) == len(r.tensors)


@pytest.mark.parametrize("alignment", [64, 256])
def test_general_alignment_as_llama_quantize(llama_bin: Path, tmp_path: Path, alignment: int) -> None:
    src = make_model(tmp_path / "m.gguf", "F16", seed=13, alignment=alignment)
    _same(llama_bin, src, tmp_path, "Q4_K_M", [])
    assert gguf.GGUFReader(str(tmp_path / "mine.gguf")).alignment == alignment


def test_tensor_type_file_as_llama_quantize(llama_bin: Path, f16: Path, tmp_path: Path) -> None:
    """Entries of the file and --tensor-type options count in command-line order (the first match wins)."""
    types = tmp_path / "types.txt"
    types.write_text("ffn_down=q8_0\nattn_v=Q5_1   blk\\.0\\.ffn_up=q6_k\n")
    cli = ["--tensor-type", "blk\\.1\\..*=q4_1", "--tensor-type-file", str(types), "--tensor-type", "attn_.*=q5_0"]
    _same(llama_bin, f16, tmp_path, "Q4_K_M", cli,
          tensor_types=[("blk\\.1\\..*", "q4_1"), ("ffn_down", "q8_0"), ("attn_v", "Q5_1"), ("blk\\.0\\.ffn_up", "q6_k"),
                        ("attn_.*", "q5_0")])
    rows = {r.name: r.dtype for r in pyquant.inspect(tmp_path / "mine.gguf")[0]}
    assert (rows["blk.1.ffn_down.weight"], rows["blk.2.ffn_down.weight"], rows["blk.2.attn_v.weight"],
            rows["blk.0.ffn_up.weight"], rows["blk.2.attn_q.weight"]) == ("Q4_1", "Q8_0", "Q5_1", "Q6_K", "Q5_0")
    types.write_text("ffn_down=q8_0 nonsense\n")
    assert main(["quantize", str(f16), str(tmp_path / "bad.gguf"), "--type", "Q4_0", "--tensor-type-file",
                 str(types)]) == 1
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.parametrize("prune", ["1", "0,2", "3", "2,1,9"])
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["", "imatrix"])
def test_prune_layers_as_llama_quantize(llama_bin: Path, f16: Path, imatrix: Path, tmp_path: Path, prune: str,
                                        with_imatrix: bool) -> None:
    blocks = [int(i) for i in prune.split(",")]
    cli = ["--prune-layers", prune] + (["--imatrix", str(imatrix)] if with_imatrix else [])
    _same(llama_bin, f16, tmp_path, "Q4_K_M", cli, prune_layers=blocks,
          **({"imatrix": str(imatrix)} if with_imatrix else {}))
    r = gguf.GGUFReader(str(tmp_path / "mine.gguf"))
    left = 4 - len([b for b in set(blocks) if b < 4])
    assert r.fields["llama.block_count"].contents() == left
    assert {t.name.split(".")[1] for t in r.tensors if t.name.startswith("blk.")} == {str(i) for i in range(left)}


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M", "IQ4_XS"])
def test_dry_run_writes_nothing_and_sizes_as_llama_quantize(llama_bin: Path, f16: Path, tmp_path: Path,
                                                            preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    import re
    import subprocess

    proc = subprocess.run([str(llama_bin / "llama-quantize"), "--dry-run", str(f16), preset, "1"],
                          capture_output=True, text=True, check=True)
    mib = float(re.search(r"quant size\s*=\s*([\d.]+) MiB", proc.stdout + proc.stderr).group(1))  # type: ignore[union-attr]
    s = quantize_gguf(f16, tmp_path / "never.gguf", preset=preset, dry_run=True)
    assert f"{s.output_bytes / 2**20:.2f}" == f"{mib:.2f}"
    real = tmp_path / "real.gguf"
    done = quantize_gguf(f16, real, preset=preset)
    assert (s.quantized, s.kept, s.output_bytes) == (done.quantized, done.kept, done.output_bytes)
    assert main(["quantize", str(f16), str(tmp_path / "never.gguf"), "--type", preset, "--dry-run"]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert not (tmp_path / "never.gguf").exists()


# --- third round: chunked quantization written behind the kernels ---------------------------------


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_small_chunks_make_llama_quantizes_bytes(llama_bin: Path, f16: Path, imatrix: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    """Each tensor made a few rows at a time (not a whole number of chunks)
    and written behind: the same file as llama-quantize's."""
    monkeypatch.setattr(pipeline, "_CHUNK_BYTES", 3000)
    for extra in ([], ["--imatrix", str(imatrix)]):
        ref, mine = tmp_path / "ref.gguf", tmp_path / "mine.gguf"
        _llama_quantize(llama_bin, f16, ref, preset, *extra)
        quantize_gguf(f16, mine, preset=preset, imatrix=imatrix if extra else None, force=True)
        assert mine.read_bytes() == ref.read_bytes(), extra


def test_a_failed_write_leaves_nothing(f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in the write-behind thread reaches the caller; no output, no temporary file."""
    real, calls = gguf_file.Writer.part, []

    def failing(self: gguf_file.Writer, data: object) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(gguf_file.Writer, "part", failing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="No space left"):
        quantize_gguf(f16, out / "q.gguf", preset="Q4_0")
    assert list(out.iterdir()) == []


def test_quantize_into_out(f16: Path) -> None:
    with gguf_file.GGUFFile(f16) as f:
        t = next(t for t in f.tensors if len(t.shape) == 2)
        x = f.array(t)
        want = pg.quantize(x, "Q4_K")
        out = np.full(want.shape, 7, np.uint8)
        got = pg.quantize(x, "Q4_K", out=out)
        assert np.shares_memory(got, out) and got.tobytes() == want.tobytes()
        for bad in (np.empty(want.shape, np.int8), np.empty(want.shape[::-1], np.uint8),
                    np.empty((want.shape[0], want.shape[1] * 2), np.uint8)[:, ::2], want.tobytes()):
            with pytest.raises(pyquant.ShapeError, match="out must be"):
                pg.quantize(x, "Q4_K", out=bad)  # type: ignore[arg-type]
        back = pg.dequantize(want, "Q4_K")
        into = np.full(back.shape, np.nan, np.float32)
        assert pg.dequantize(want, "Q4_K", out=into) is into and into.tobytes() == back.tobytes()
        for bad in (np.empty(back.shape, np.float64), np.empty(back.shape[::-1], np.float32),
                    np.empty((back.shape[0], back.shape[1] * 2), np.float32)[:, ::2]):
            with pytest.raises(pyquant.ShapeError, match="out must be"):
                pg.dequantize(want, "Q4_K", out=bad)
        frozen = np.empty(back.shape, np.float32)
        frozen.flags.writeable = False
        with pytest.raises(pyquant.ShapeError, match="writeable"):
            pg.dequantize(want, "Q4_K", out=frozen)
        overlapping = np.zeros(back.size * 4 + want.size, np.uint8)  # the input's bytes inside the output's
        overlapping[:want.size] = want.reshape(-1)
        with pytest.raises(pyquant.QuantizeError, match="overlap"):
            pg.dequantize(overlapping[:want.size].reshape(want.shape), "Q4_K",
                          out=overlapping[:back.size * 4].view(np.float32).reshape(back.shape))


def test_keep_split_publishes_the_parts_as_a_set(split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that cannot be published takes back the parts published before it: no partial set."""
    from pyquant import _atomic

    real, calls = _atomic._publish, []

    def failing(fd: int, named: str | None, dst: str, directory: str, force: bool) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(fd, named, dst, directory, force)

    monkeypatch.setattr(_atomic, "_publish", failing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(pyquant.CheckpointError, match="q-00003-of-00003.gguf: cannot write: No space left"):
        quantize_gguf(split, out / "q.gguf", preset="Q4_0", keep_split=True)
    assert len(calls) == 3 and list(out.iterdir()) == []
    (out / "q-00002-of-00003.gguf").write_bytes(b"old")  # an existing part: refused before anything is written
    monkeypatch.setattr(_atomic, "_publish", real)
    with pytest.raises(pyquant.CheckpointError, match="q-00002-of-00003.gguf: output already exists"):
        quantize_gguf(split, out / "q.gguf", preset="Q4_0", keep_split=True)
    assert [p.name for p in out.iterdir()] == ["q-00002-of-00003.gguf"]
    quantize_gguf(split, out / "q.gguf", preset="Q4_0", keep_split=True, force=True)
    assert sorted(p.name for p in out.iterdir()) == [f"q-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_copy_as_llama_quantize(llama_bin: Path, f16: Path, tmp_path: Path) -> None:
    """llama-quantize's COPY: tensors unchanged, general.file_type the input's (also with
    --threads / llama-quantize's positional nthreads, and prune / override options)."""
    q = tmp_path / "q4km.gguf"
    quantize_gguf(f16, q, preset="Q4_K_M")
    for src in (f16, q):
        ref, mine, by_cli = tmp_path / "ref.gguf", tmp_path / "mine.gguf", tmp_path / "cli.gguf"
        for p in (ref, mine, by_cli):
            p.unlink(missing_ok=True)
        subprocess.run([str(llama_bin / "llama-quantize"), "--prune-layers", "1", str(src), str(ref), "COPY", "1"],
                       check=True, capture_output=True)
        quantize_gguf(src, mine, preset="copy", prune_layers=[1], threads=1)
        assert main(["quantize", str(src), str(by_cli), "--type", "COPY", "--prune-layers", "1", "--threads", "1",
                     "--quiet"]) == 0
        assert mine.read_bytes() == ref.read_bytes() == by_cli.read_bytes(), src


def test_copy_guesses_a_missing_file_type() -> None:
    """No general.file_type: the loader's guess (the first type to reach the top count), marked as guessed."""
    from pyquant.gguf_file import TYPE_IDS
    from pyquant.llama_quant import copy_ftype

    f32, f16, q4k, q8 = (TYPE_IDS[n] for n in ("F32", "F16", "Q4_K", "Q8_0"))
    assert copy_ftype(7, [f32]) == 7
    assert copy_ftype(None, [f32, q4k, q4k, f32]) == 15 | 1024  # Q4_K reached 2 first
    assert copy_ftype(None, [q8, f16, f16]) == 1 | 1024
    assert copy_ftype(None, []) == 0 | 1024


def test_threads_option(f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    want = tmp_path / "all.gguf"
    quantize_gguf(f16, want, preset="Q4_K_M")
    for n in ("1", "2", "0", "-1"):
        out = tmp_path / f"t{n}.gguf"
        assert main(["quantize", str(f16), str(out), "--type", "Q4_K_M", "--threads", n, "--quiet"]) == 0
        assert out.read_bytes() == want.read_bytes()
    st = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"w": np.ones((4, 64), np.float32)}, str(st))
    assert main(["quantize", str(st), str(tmp_path / "m.q.safetensors"), "--threads", "2"]) == 1
    assert "--threads: only for a GGUF input or a .gguf output" in capsys.readouterr().err

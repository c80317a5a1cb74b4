"""GGUF in, GGUF out (issue 14): the reader against gguf-py, the writer's
layout, llama-quantize's type choice, bad files, and the whole file against
llama.cpp's own llama-quantize (built once into a cache by
tests/llamacpp_build/build.py) and loaded by llama.cpp's llama-simple."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import pyquant
from pyquant import gguf as pg
from pyquant.cli import main
from pyquant.gguf_file import GGUFFile
from pyquant.llama_quant import PRESETS, Model, Options, choose_types, find_preset, llama_order
from pyquant.pipeline import quantize_gguf

sys.path.insert(0, str(Path(__file__).parent))


def written(w: gguf.GGUFWriter, path: Path) -> Path:
    """Writes out what ``w`` holds (header, pairs, tensors) and closes it; ``path``."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_model(path: Path, dtype: str = "F32", n_embd: int = 256, n_ff: int = 512, n_layer: int = 4,
               n_vocab: int = 512, n_head: int = 4, n_head_kv: int = 2, tied: bool = False, seed: int = 0,
               split_max_tensors: int = 0, alignment: int | None = None) -> Path:
    """A tiny llama-architecture model with random weights, written by gguf-py
    (with ``split_max_tensors``, split over files ``STEM-0000i-of-0000N.gguf``)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(n_layer)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32}[dtype])
    # A SentencePiece vocabulary llama.cpp can tokenize with: the specials,
    # the 256 byte tokens (type 6) and word pieces.
    w.add_tokenizer_model("llama")
    words = [f"\u2581{chr(97 + i % 26)}{i // 26}".encode() for i in range(n_vocab - 259)]
    w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)] + words)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(words))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(words))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def tensor(name: str, shape: tuple[int, ...], norm: bool = False) -> None:
        a = np.ones(shape, np.float32) if norm else rng.normal(0, 0.05, shape).astype(np.float32)
        if norm or dtype == "F32":
            w.add_tensor(name, a)
        elif dtype == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            bits = (a.view(np.uint32) >> 16).astype(np.uint16)
            w.add_tensor(name, bits, raw_shape=a.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)

    hd = n_embd // n_head
    tensor("token_embd.weight", (n_vocab, n_embd))
    tensor("output_norm.weight", (n_embd,), norm=True)
    if not tied:
        tensor("output.weight", (n_vocab, n_embd))
    for i in range(n_layer):
        tensor(f"blk.{i}.attn_norm.weight", (n_embd,), norm=True)
        tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd))
        tensor(f"blk.{i}.attn_k.weight", (hd * n_head_kv, n_embd))
        tensor(f"blk.{i}.attn_v.weight", (hd * n_head_kv, n_embd))
        tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd))
        tensor(f"blk.{i}.ffn_norm.weight", (n_embd,), norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd))
        tensor(f"blk.{i}.ffn_up.weight", (n_ff, n_embd))
        tensor(f"blk.{i}.ffn_down.weight", (n_embd, n_ff))
    return written(w, path)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("gguf") / "model-f32.gguf")


def test_reader_matches_gguf_py(model: Path) -> None:
    ref = gguf.GGUFReader(str(model))
    with GGUFFile(model) as f:
        assert [t.name for t in f.tensors] == [t.name for t in ref.tensors]
        for mine, theirs in zip(f.tensors, ref.tensors):
            assert mine.shape == tuple(int(d) for d in theirs.shape)
            assert mine.type_id == int(theirs.tensor_type)
            assert bytes(f.raw(mine)) == theirs.data.tobytes()
        fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}  # gguf-py's own entries
        assert list(f.kv) == list(fields)
        for key, field in fields.items():
            assert f.value(key) == field.contents(), key
        assert f.value("llama.block_count") == 4
        assert f.value("tokenizer.ggml.tokens")[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]


def test_output_layout_and_bytes(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    s = quantize_gguf(model, out, preset="Q4_K_M")
    assert s.quantized == 30 and s.kept == 9
    ref = gguf.GGUFReader(str(out))
    src = gguf.GGUFReader(str(model))
    # every pair carried over, the two quantization keys last
    names = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert names[-2:] == ["general.quantization_version", "general.file_type"]
    assert ref.fields["general.file_type"].contents() == 15
    assert set(src.fields) <= set(ref.fields)
    # llama-quantize's order: non-block tensors by name, then blocks by number
    expected = [src.tensors[i].name for i in llama_order([t.name for t in src.tensors])]
    assert [t.name for t in ref.tensors] == expected
    by_name = {t.name: t for t in src.tensors}
    for t in ref.tensors:
        x = np.asarray(by_name[t.name].data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32,):
            assert t.data.tobytes() == x.tobytes()
        else:
            assert t.data.tobytes() == pg.quantize(x, int(t.tensor_type)).tobytes(), t.name


def types_of(n_layer: int, preset: str, **kw: object) -> dict[str, str]:
    names = ["token_embd.weight", "output.weight"] + [
        f"blk.{i}.{k}.weight" for i in range(n_layer) for k in ("attn_v", "ffn_down", "attn_q")]
    tensors = [(names[i], (256, 256), 0) for i in llama_order(names)]
    _, ftype, default = find_preset(preset)
    chosen, _ = choose_types(tensors, Model("llama", n_layer, 32, 8, 0), Options(ftype, default, **kw))  # type: ignore[arg-type]
    return {n: gguf.GGMLQuantizationType(t).name for (n, _, _), t in zip(tensors, chosen)}


def test_type_choice_rules() -> None:
    t = types_of(16, "Q4_K_M")
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_K"
    # use_more_bits(i, 16): i < 2, i >= 14, (i - 2) % 3 == 2
    more = {i for i in range(16) if i < 2 or i >= 14 or (i - 2) % 3 == 2}
    assert {i for i in range(16) if t[f"blk.{i}.attn_v.weight"] == "Q6_K"} == more
    assert {i for i in range(16) if t[f"blk.{i}.ffn_down.weight"] == "Q6_K"} == more
    assert all(t[f"blk.{i}.attn_q.weight"] == "Q4_K" for i in range(16))
    assert set(types_of(16, "Q4_K_M", pure=True).values()) == {"Q4_K"}
    assert types_of(4, "Q8_0")["output.weight"] == "Q8_0"
    assert types_of(4, "IQ4_XS")["blk.0.attn_v.weight"] == "Q5_K"  # n_gqa 4


@pytest.mark.parametrize("blob", [b"", b"GGUF", b"XXXX" + bytes(60),
                                  b"GGUF" + (3).to_bytes(4, "little") + (2**60).to_bytes(8, "little") * 2])
def test_bad_files_are_one_line_errors(tmp_path: Path, blob: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(blob)
    with pytest.raises(pyquant.CheckpointError) as info:
        quantize_gguf(bad, tmp_path / "out.gguf", preset="Q4_0")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.gguf").exists()


def test_truncated_anywhere_is_refused(model: Path, tmp_path: Path) -> None:
    data = model.read_bytes()
    bad = tmp_path / "cut.gguf"
    for cut in (10, 100, 5000, 20000, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(pyquant.CheckpointError, match="not a valid GGUF file|GGUF header"):
            GGUFFile(bad)


def test_cli_gguf(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.gguf"
    assert main(["quantize", str(model), str(out), "--type", "q4_0", "--quiet"]) == 0
    assert out.read_bytes() == _quantized(model, tmp_path, "Q4_0")
    assert main(["quantize", str(model), str(tmp_path / "x.gguf")]) == 1
    assert "--type" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "file_type 2" in text and "blk.0.attn_q.weight" in text and "Q4_0" in text
    assert pyquant.quantize_gguf is quantize_gguf


def _quantized(model: Path, tmp_path: Path, preset: str, **kw: object) -> bytes:
    out = tmp_path / f"api-{preset}.gguf"
    quantize_gguf(model, out, preset=preset, force=True, **kw)  # type: ignore[arg-type]
    return out.read_bytes()


# --- against llama.cpp itself ------------------------------------------------

@pytest.fixture(scope="module")
def llama_bin() -> Path:
    if os.environ.get("PYQUANT_SKIP_LLAMA_CPP"):
        pytest.skip("PYQUANT_SKIP_LLAMA_CPP is set")
    from llamacpp_build import build as llama_build  # tests/llamacpp_build/build.py

    return llama_build.build()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("llama")
    return {
        "F32": make_model(d / "f32.gguf", "F32"),
        "F16": make_model(d / "f16.gguf", "F16", seed=1),
        "BF16": make_model(d / "bf16.gguf", "BF16", seed=2, tied=True),
        # rows of 320: not a multiple of 256 (K-quant fallbacks, output -> Q8_0)
        "F16-320": make_model(d / "f16-320.gguf", "F16", n_embd=320, n_ff=640, n_head=4, n_head_kv=1, seed=3),
    }


def make_imatrix(path: Path, model: Path, seed: int = 0) -> Path:
    """An importance matrix in llama-imatrix's GGUF format for every 2-D weight
    of ``model`` (one expert: ``.in_sum2`` of the row length, ``.counts`` of 1)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_array("imatrix.datasets", ["random.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    for t in gguf.GGUFReader(str(model)).tensors:
        if len(t.shape) == 2:
            w.add_tensor(f"{t.name}.in_sum2", (rng.random(int(t.shape[0])) * 50).astype(np.float32))
            w.add_tensor(f"{t.name}.counts", np.array([7 * 512], np.float32))
    return written(w, path)


@pytest.fixture(scope="module")
def imatrices(models: dict[str, Path]) -> dict[str, Path]:
    return {k: make_imatrix(m.with_suffix(".imatrix.gguf"), m) for k, m in models.items()}


def _llama_quantize(llama_bin: Path, src: Path, dst: Path, preset: str, *extra: str) -> None:
    subprocess.run([str(llama_bin / "llama-quantize"), *extra, str(src), str(dst), preset, "1"],
                   check=True, capture_output=True)


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["", "imatrix"])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("source", ["F32", "F16", "BF16", "F16-320"])
def test_same_file_as_llama_quantize(llama_bin: Path, models: dict[str, Path], imatrices: dict[str, Path],
                                     tmp_path: Path, source: str, preset: str, with_imatrix: bool) -> None:
    ref = tmp_path / "ref.gguf"
    extra = ["--imatrix", str(imatrices[source])] if with_imatrix else []
    _llama_quantize(llama_bin, models[source], ref, preset, *extra)
    mine = _quantized(models[source], tmp_path, preset, **({"imatrix": str(imatrices[source])} if with_imatrix else {}))
    want = ref.read_bytes()
    if mine != want:
        got_r, want_r = gguf.GGUFReader(str(tmp_path / f"api-{preset}.gguf")), gguf.GGUFReader(str(ref))
        for a, b in zip(got_r.tensors, want_r.tensors):
            assert (a.name, a.tensor_type.name) == (b.name, b.tensor_type.name)
            assert a.data.tobytes() == b.data.tobytes(), a.name
        assert mine == want


@pytest.mark.parametrize("extra", [
    (["--pure"], {"pure": True}),
    (["--leave-output-tensor"], {"leave_output_tensor": True}),
    (["--output-tensor-type", "q8_0", "--token-embedding-type", "q5_k"],
     {"output_tensor_type": "q8_0", "token_embedding_type": "q5_k"}),
    (["--tensor-type", "ffn_down=q8_0", "--tensor-type", "attn_.*=q5_0"],
     {"tensor_types": [("ffn_down", "q8_0"), ("attn_.*", "q5_0")]}),
], ids=["pure", "leave-output", "output-embd-types", "tensor-type"])
def test_options_as_llama_quantize(llama_bin: Path, models: dict[str, Path], tmp_path: Path,
                                   extra: tuple[list[str], dict[str, object]]) -> None:
    ref = tmp_path / "ref.gguf"
    _llama_quantize(llama_bin, models["F16"], ref, "Q4_K_M", *extra[0])
    assert _quantized(models["F16"], tmp_path, "Q4_K_M", **extra[1]) == ref.read_bytes()


def test_llama_cpp_runs_the_output(llama_bin: Path, models: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "mine.gguf"
    quantize_gguf(models["F16"], mine, preset="Q4_K_M")
    ref = tmp_path / "ref.gguf"
    _llama_quantize(llama_bin, models["F16"], ref, "Q4_K_M")

    def run(path: Path) -> bytes:
        """The prompt and 8 greedily generated tokens (random weights: any bytes)."""
        proc = subprocess.run([str(llama_bin / "llama-simple"), "-m", str(path), "-n", "8", "a0 b1 c2"],
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    out = run(mine)
    assert len(out) > len("a0 b1 c2") and out == run(ref)


def test_safetensors_to_gguf(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    tensors = {
        "double_blocks.0.img_attn.qkv.weight": rng.normal(size=(96, 512)).astype(np.float16),
        "final_layer.linear.weight": rng.normal(size=(64, 3072)).astype(np.float32),
        "img_in.bias": rng.normal(size=(512,)).astype(np.float32),
        "odd.weight": rng.normal(size=(8, 100)).astype(np.float32),  # rows of 100: no whole Q4_K block
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    src = tmp_path / "model.safetensors"
    save_file(tensors, str(src))
    out = tmp_path / "model-Q4_K.gguf"
    assert main(["quantize", str(src), str(out), "--type", "Q4_K", "--arch", "flux", "--quiet"]) == 0
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.architecture"].contents() == "flux"
    got = {t.name: t for t in r.tensors}
    assert sorted(got) == sorted(tensors)  # in the safetensors file's order
    for name, x in tensors.items():
        t = got[name]
        assert [int(d) for d in t.shape] == list(reversed(x.shape))
        if name in ("double_blocks.0.img_attn.qkv.weight", "final_layer.linear.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.Q4_K
            assert t.data.tobytes() == pg.quantize(x, "Q4_K").tobytes()
        else:
            assert t.data.tobytes() == x.tobytes()
    s = pyquant.pipeline.safetensors_to_gguf(src, out, qtype="Q8_0", force=True)
    assert (s.quantized, s.kept) == (2, 3) and "block" in s.kept_reasons["odd.weight"]


def make_legacy_imatrix(path: Path, model: Path, seed: int = 1) -> Path:
    """The same kind of matrix in llama.cpp's legacy binary format (.dat)."""
    rng = np.random.default_rng(seed)
    entries = [t for t in gguf.GGUFReader(str(model)).tensors if len(t.shape) == 2]
    out = [np.int32(len(entries)).tobytes()]
    for t in entries:
        name = t.name.encode()
        out += [np.int32(len(name)).tobytes(), name, np.int32(3).tobytes(), np.int32(int(t.shape[0])).tobytes(),
                (rng.random(int(t.shape[0])) * 10).astype("<f4").tobytes()]
    out += [np.int32(5).tobytes(), np.int32(4).tobytes(), b"data"]
    path.write_bytes(b"".join(out))
    return path


@pytest.mark.parametrize("preset", ["Q4_0", "Q4_K_M", "IQ4_XS"])
def test_legacy_imatrix_as_llama_quantize(llama_bin: Path, models: dict[str, Path], tmp_path: Path,
                                          preset: str) -> None:
    dat = make_legacy_imatrix(tmp_path / "imatrix.dat", models["F16"])
    ref = tmp_path / "ref.gguf"
    _llama_quantize(llama_bin, models["F16"], ref, preset, "--imatrix", str(dat))
    assert _quantized(models["F16"], tmp_path, preset, imatrix=str(dat)) == ref.read_bytes()


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_dequantize_gguf(model: Path, tmp_path: Path, dtype: str) -> None:
    q = tmp_path / "q.gguf"
    quantize_gguf(model, q, preset="Q4_K_M")
    back = tmp_path / "back.gguf"
    assert main(["dequantize", str(q), str(back), "--dtype", dtype.lower() if dtype == "F16" else dtype,
                 "--quiet"]) == 0
    rq, rb = gguf.GGUFReader(str(q)), gguf.GGUFReader(str(back))
    assert rb.fields["general.file_type"].contents() == {"F32": 0, "F16": 1, "BF16": 32}[dtype]
    for a, b in zip(rq.tensors, rb.tensors):
        assert a.name == b.name
        if a.tensor_type == gguf.GGMLQuantizationType.F32:
            assert b.data.tobytes() == a.data.tobytes()
            continue
        x = pg.dequantize(a.data, int(a.tensor_type))
        want = x if dtype == "F32" else pg.quantize(x, dtype)
        assert b.tensor_type.name == dtype and b.data.tobytes() == want.tobytes(), a.name


def test_report_gguf(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyquant.report import gguf_error_report

    q = tmp_path / "q.gguf"
    quantize_gguf(model, q, preset="Q8_0")
    rep = gguf_error_report(model, q)
    s = rep.summary()
    assert (s["quantized"], s["kept"]) == (30, 9)
    assert 0 < s["worst_rel_rmse"] < 0.01 and s["min_cosine"] > 0.9999
    assert {t.bits for t in rep.tensors if t.bits} == {8.5}
    assert main(["report", str(model), str(q)]) == 0
    assert "8.5" in capsys.readouterr().out


def test_non_finite_weight_names_the_tensor_and_writes_nothing(tmp_path: Path) -> None:
    src = make_model(tmp_path / "m.gguf")
    data = bytearray(src.read_bytes())
    with GGUFFile(src) as f:
        t = next(t for t in f.tensors if t.name == "blk.2.ffn_up.weight")
        data[t.offset + 400:t.offset + 404] = np.float32(np.nan).tobytes()
    bad = tmp_path / "nan.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(pyquant.NonFiniteError, match="blk.2.ffn_up.weight"):
        quantize_gguf(bad, tmp_path / "out.gguf", preset="Q4_K_M")
    assert not (tmp_path / "out.gguf").exists()

"""llama-quantize's type choice for other architectures (issue 14): falcon's
own branches (attn_qkv, ffn_down, attn_output, output) and a mixture of 8
experts (3-D ffn_*_exps tensors: the layer from the name, attn_v/attn_k to
Q8_0, attn_output promotions, per-expert importance matrices), and a
mixture of 4 experts (no n_expert == 8 rules, layers still from names);
each file compared byte for byte with llama-quantize's; and the LLM_TYPE_70B rule
of qwen2, olmo and jais2 (80 / 68 layers)."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from pyquant.gguf_file import GGUFFile
from pyquant.llama_quant import PRESETS
from pyquant.pipeline import quantize_gguf

sys.path.insert(0, str(Path(__file__).parent))

from test_gguf_file import _llama_quantize, llama_bin, written  # noqa: E402,F401


def _write(path: Path, arch: str, hparams: dict[str, object], tensors: dict[str, tuple[int, ...]], seed: int) -> Path:
    """A GGUF model of ``arch`` with random F16 weights (F32 norms and biases), written by gguf-py."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in hparams.items():
        if isinstance(value, float):
            w.add_float32(f"{arch}.{key}", value)
        else:
            w.add_uint32(f"{arch}.{key}", int(value))  # type: ignore[call-overload]
    w.add_file_type(1)
    for name, shape in tensors.items():
        if len(shape) == 1 or "gate_inp" in name:
            w.add_tensor(name, rng.normal(0, 0.05, shape).astype(np.float32))
        else:
            w.add_tensor(name, rng.normal(0, 0.05, shape).astype(np.float16))
    return written(w, path)


def falcon(path: Path, n_layer: int = 16, n_embd: int = 256, n_ff: int = 512, n_vocab: int = 64) -> Path:
    hd, n_head, n_kv = 64, 4, 1
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,),
                                     "output_norm.bias": (n_embd,), "output.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        t |= {f"blk.{i}.attn_norm.weight": (n_embd,), f"blk.{i}.attn_norm.bias": (n_embd,),
              f"blk.{i}.attn_qkv.weight": (n_embd + 2 * hd * n_kv, n_embd),
              f"blk.{i}.attn_output.weight": (n_embd, n_embd),
              f"blk.{i}.ffn_up.weight": (n_ff, n_embd), f"blk.{i}.ffn_down.weight": (n_embd, n_ff)}
    return _write(path, "falcon", {"context_length": 128, "embedding_length": n_embd, "feed_forward_length": n_ff,
                                   "block_count": n_layer, "attention.head_count": n_head,
                                   "attention.head_count_kv": n_kv, "attention.layer_norm_epsilon": 1e-5}, t, 21)


def moe(path: Path, n_expert: int, n_layer: int = 4, n_embd: int = 256, n_ff: int = 256,
        n_vocab: int = 64) -> Path:
    """A llama-architecture mixture of experts (Mixtral's layout) with tied embeddings."""
    hd, n_head, n_kv = 64, 4, 2
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    for i in range(n_layer):
        t |= {f"blk.{i}.attn_norm.weight": (n_embd,), f"blk.{i}.attn_q.weight": (n_embd, n_embd),
              f"blk.{i}.attn_k.weight": (hd * n_kv, n_embd), f"blk.{i}.attn_v.weight": (hd * n_kv, n_embd),
              f"blk.{i}.attn_output.weight": (n_embd, n_embd), f"blk.{i}.ffn_norm.weight": (n_embd,),
              f"blk.{i}.ffn_gate_inp.weight": (n_expert, n_embd),
              f"blk.{i}.ffn_gate_exps.weight": (n_expert, n_ff, n_embd),
              f"blk.{i}.ffn_up_exps.weight": (n_expert, n_ff, n_embd),
              f"blk.{i}.ffn_down_exps.weight": (n_expert, n_embd, n_ff)}
    return _write(path, "llama", {"context_length": 128, "embedding_length": n_embd, "feed_forward_length": n_ff,
                                  "block_count": n_layer, "attention.head_count": n_head,
                                  "attention.head_count_kv": n_kv, "attention.layer_norm_rms_epsilon": 1e-5,
                                  "rope.dimension_count": hd, "expert_count": n_expert,
                                  "expert_used_count": 2}, t, 22 + n_expert)


def moe_imatrix(path: Path, model: Path) -> Path:
    """llama-imatrix's GGUF format with per-expert sums and counts for the 3-D tensors."""
    rng = np.random.default_rng(9)
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_array("imatrix.datasets", ["moe.txt"])
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 512)
    with GGUFFile(model) as f:
        for t in f.tensors:
            if len(t.shape) >= 2 and "gate_inp" not in t.name:
                experts = t.shape[2] if len(t.shape) == 3 else 1
                w.add_tensor(f"{t.name}.in_sum2",
                             (rng.random((experts, t.shape[0])) * 40).astype(np.float32))
                w.add_tensor(f"{t.name}.counts", rng.integers(1, 2000, (experts, 1)).astype(np.float32))
    return written(w, path)


@pytest.fixture(scope="module")
def archs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path | None]]:
    d = tmp_path_factory.mktemp("archs")
    m8, m4 = moe(d / "moe8.gguf", 8), moe(d / "moe4.gguf", 4)
    return {"falcon": (falcon(d / "falcon.gguf"), None),
            "moe8": (m8, moe_imatrix(d / "moe8.imatrix.gguf", m8)),
            "moe4": (m4, moe_imatrix(d / "moe4.imatrix.gguf", m4))}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("arch", ["falcon", "moe8", "moe4"])
def test_same_file_as_llama_quantize(llama_bin: Path, archs: dict[str, tuple[Path, Path | None]], tmp_path: Path,
                                     arch: str, preset: str) -> None:
    src, imatrix = archs[arch]
    for extra in ([], [] if imatrix is None else ["--imatrix", str(imatrix)]):
        ref, mine = tmp_path / "ref.gguf", tmp_path / "mine.gguf"
        _llama_quantize(llama_bin, src, ref, preset, *extra)
        quantize_gguf(src, mine, preset=preset, imatrix=extra[1] if extra else None, force=True)
        if mine.read_bytes() != ref.read_bytes():
            got, want = gguf.GGUFReader(str(mine)), gguf.GGUFReader(str(ref))
            for a, b in zip(got.tensors, want.tensors):
                assert (a.name, a.tensor_type.name) == (b.name, b.tensor_type.name), extra
                assert a.data.tobytes() == b.data.tobytes(), (a.name, extra)
            assert mine.read_bytes() == ref.read_bytes(), extra


def test_experts_in_small_chunks(llama_bin: Path, archs: dict[str, tuple[Path, Path | None]], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """3-D expert tensors with per-expert importance matrices, made a few rows
    at a time (chunks that do not divide an expert): llama-quantize's bytes."""
    from pyquant import pipeline

    monkeypatch.setattr(pipeline, "_CHUNK_BYTES", 5000)
    src, imatrix = archs["moe8"]
    ref, mine = tmp_path / "ref.gguf", tmp_path / "mine.gguf"
    _llama_quantize(llama_bin, src, ref, "Q4_K_M", "--imatrix", str(imatrix))
    quantize_gguf(src, mine, preset="Q4_K_M", imatrix=imatrix)
    assert mine.read_bytes() == ref.read_bytes()


def dense(path: Path, arch: str, n_layer: int, eps_key: str, n_embd: int = 256, n_ff: int = 256,
          n_vocab: int = 64) -> Path:
    """A dense transformer of ``arch`` (llama's tensor names, grouped-query attention)."""
    hd, n_head, n_kv = 64, 4, 1
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,),
                                     "output.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        t |= {f"blk.{i}.attn_norm.weight": (n_embd,), f"blk.{i}.attn_q.weight": (n_embd, n_embd),
              f"blk.{i}.attn_k.weight": (hd * n_kv, n_embd), f"blk.{i}.attn_v.weight": (hd * n_kv, n_embd),
              f"blk.{i}.attn_output.weight": (n_embd, n_embd), f"blk.{i}.ffn_norm.weight": (n_embd,),
              f"blk.{i}.ffn_gate.weight": (n_ff, n_embd), f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
              f"blk.{i}.ffn_down.weight": (n_embd, n_ff)}
    return _write(path, arch, {"context_length": 128, "embedding_length": n_embd, "feed_forward_length": n_ff,
                               "block_count": n_layer, "attention.head_count": n_head,
                               "attention.head_count_kv": n_kv, eps_key: 1e-5}, t, 40 + n_layer)


@pytest.mark.parametrize("arch,n_layer,eps", [
    ("qwen2", 80, "attention.layer_norm_rms_epsilon"), ("olmo", 80, "attention.layer_norm_epsilon"),
    ("jais2", 68, "attention.layer_norm_epsilon"), ("qwen2", 68, "attention.layer_norm_rms_epsilon"),
])
def test_70b_rules_of_other_archs(llama_bin: Path, tmp_path: Path, arch: str, n_layer: int, eps: str) -> None:
    """The archs whose loaders call a model of 80 (jais2: 68) layers LLM_TYPE_70B:
    attn_v promoted from Q3_K / Q4_K to Q5_K (and a 68-layer qwen2 that is not 70B)."""
    src = dense(tmp_path / "m.gguf", arch, n_layer, eps)
    for preset in ("Q3_K_S", "Q4_K_M"):
        ref, mine = tmp_path / "ref.gguf", tmp_path / "mine.gguf"
        _llama_quantize(llama_bin, src, ref, preset)
        quantize_gguf(src, mine, preset=preset, force=True)
        assert mine.read_bytes() == ref.read_bytes(), preset
        with GGUFFile(mine) as f:
            v = {t.type_name for t in f.tensors if t.name.endswith("attn_v.weight")}
        assert ("Q5_K" in v) == (n_layer == {"jais2": 68}.get(arch, 80)), v

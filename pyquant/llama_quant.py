"""llama-quantize's choice of a GGML type per tensor, ported from
``src/llama-quant.cpp`` of llama.cpp as pinned by llama-cpp-python 0.3.36
(``tensor_allows_quantization``, ``llama_tensor_get_type``,
``llama_tensor_get_type_impl``, ``tensor_type_fallback``,
``llama_ftype_get_default_type``), for the presets pyquant implements.

The order of the checks, the layer counters (advanced in llama-quantize's
tensor order) and the fallbacks follow the C++ line by line; branches for
ftypes pyquant has no kernels for (IQ1-IQ3, TQ, MXFP4, Q2_K_S) are left out,
as is the GLM5-next special case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import CheckpointError, QuantizeError
from .gguf_file import GGML_TYPES, TYPE_IDS, n_dims

# preset -> (llama_ftype value, default GGML type)
PRESETS: dict[str, tuple[int, str]] = {
    "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q8_0": (7, "Q8_0"),
    "Q2_K": (10, "Q2_K"), "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"), "IQ4_NL": (25, "IQ4_NL"), "IQ4_XS": (30, "IQ4_XS"),
    # every quantizable tensor converted, as llama-quantize's F32 / F16 / BF16 types
    "F32": (0, "F32"), "F16": (1, "F16"), "BF16": (32, "BF16"),
}
# llama-quantize's COPY type: every tensor copied as it is, general.file_type the input's.
COPY = "COPY"
# llama_model_loader's guess of a file type from its most common tensor type, marked as guessed.
_FTYPE_OF_TYPE = {
    "F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7, "Q2_K": 10, "Q3_K": 12,
    "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "TQ1_0": 36, "TQ2_0": 37, "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28,
    "IQ3_XXS": 23, "IQ1_S": 24, "IQ1_M": 31, "IQ4_NL": 25, "IQ4_XS": 30, "IQ3_S": 26,
}
_FTYPE_GUESSED = 1024
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
# Archs whose load_arch_hparams call a model of this many layers LLM_TYPE_70B (llama: see Model.is_70b).
_LAYERS_OF_70B = {"qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}
_UNQUANTIZED = {"F32", "F16", "BF16", "I8", "I16", "I32", "I64", "F64"}

# Substrings of names that are never quantized (tensor_allows_quantization).
_NEVER = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd",
    "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
)


def find_preset(name: str) -> tuple[str, int, int]:
    """(preset name, llama_ftype, default type id) of a preset, case-insensitively."""
    key = name.upper()
    if key not in PRESETS:
        raise QuantizeError(f"unknown GGUF type {name!r}; presets: {', '.join(PRESETS)}")
    ftype, default = PRESETS[key]
    return key, ftype, TYPE_IDS[default]


def copy_ftype(file_type: object, type_ids: Sequence[int]) -> int:
    """The llama_ftype COPY writes: the input's ``general.file_type``, else the
    loader's guess from ``type_ids`` (in llama-quantize's order: the first type
    to reach the highest count), with LLAMA_FTYPE_GUESSED set."""
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        return file_type
    counts: dict[int, int] = {}
    best, most = TYPE_IDS["F32"], 0
    for t in type_ids:
        counts[t] = counts.get(t, 0) + 1
        if counts[t] > most:
            best, most = t, counts[t]
    return _FTYPE_OF_TYPE.get(GGML_TYPES[best][0], 0) | _FTYPE_GUESSED


def ggml_type(name: str, what: str) -> int:
    """A GGML type id from its name (case-insensitive), as llama-quantize's parse_ggml_type."""
    found = next((i for n, i in TYPE_IDS.items() if n.lower() == name.lower()), None)
    if found is None:
        raise QuantizeError(f"{what}: unknown GGML type {name!r}")
    return found


def parse_tensor_type(spec: str, where: str = "--tensor-type") -> tuple[str, str]:
    """``PATTERN=TYPE`` as llama-quantize's parse_tensor_type splits it (at the first ``=``)."""
    pattern, sep, name = spec.partition("=")
    if not sep or not pattern or not name:
        raise QuantizeError(f"{where} {spec!r}: expected PATTERN=TYPE")
    return pattern, name


def read_tensor_type_file(path: str) -> list[tuple[str, str]]:
    """llama-quantize's --tensor-type-file: ``PATTERN=TYPE`` entries separated
    by spaces or newlines, in order. At most 16 MiB, a regular file, UTF-8."""
    import os

    from .safetensors_io import open_regular

    fd, st = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        if st.st_size > 16 << 20:
            raise CheckpointError(f"{path}: a tensor type file of {st.st_size} bytes (at most 16 MiB)")
        try:
            text = f.read(16 << 20).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{path}: a tensor type file must be UTF-8 text") from None
    return [parse_tensor_type(spec, f"{path}: entry") for spec in text.split()]


def category(name: str) -> str:
    """tensor_get_category."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _is_attn_v(cat: str) -> bool:
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


@dataclass
class Options:
    """llama-quantize's options (llama_model_quantize_params) pyquant takes."""

    ftype: int
    default_type: int
    output_tensor_type: int | None = None
    token_embedding_type: int | None = None
    quantize_output_tensor: bool = True  # False: --leave-output-tensor
    pure: bool = False
    has_imatrix: bool = False
    tensor_types: Sequence[tuple[str, int]] = ()  # --tensor-type, lower-cased patterns


@dataclass
class Model:
    """The hyperparameters llama-quantize's choice reads."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head and self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """model.type == LLM_TYPE_70B, as the archs' load_arch_hparams set it."""
        if self.arch == "llama":
            return self.n_expert != 8 and self.n_layer == 80 and self.n_head != self.n_head_kv
        return _LAYERS_OF_70B.get(self.arch) == self.n_layer


def model_of(kv_value: object) -> Model:
    """The hyperparameters from a GGUF file's key-value pairs (``GGUFFile.value``)."""
    get = kv_value  # a callable (key, default) -> value
    arch = get("general.architecture", "")  # type: ignore[operator]
    if not isinstance(arch, str) or not arch:
        raise CheckpointError("the GGUF file has no general.architecture")

    def first(key: str, default: int) -> int:
        v = get(f"{arch}.{key}", default)  # type: ignore[operator]
        if isinstance(v, list):  # per-layer arrays: layer 0, as n_gqa(0)
            v = v[0] if v else default
        return int(v)

    n_head = first("attention.head_count", 0)
    return Model(arch, first("block_count", 0), n_head, first("attention.head_count_kv", n_head),
                 first("expert_count", 0))


def allows_quantization(name: str, shape: tuple[int, ...], opts: Options) -> bool:
    """tensor_allows_quantization."""
    # name.rfind("weight") == name.size() - 6: also true for any 5-byte name
    # (npos == size_t(5 - 6)), kept for the same choice.
    if n_dims(shape) < 2 or not (name.endswith("weight") or len(name.encode()) == 5):
        return False
    if not opts.quantize_output_tensor and name == "output.weight":
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in name for s in _NEVER)


@dataclass
class _State:
    """quantize_state_impl: the counters, advanced in tensor order."""

    model: Model
    opts: Options
    n_attention_wv: int = 0
    n_ffn: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    has_tied_embeddings: bool = True
    fallbacks: list[str] = field(default_factory=list)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(s: _State, counter: int, name: str) -> tuple[int, int]:
    """layer_info: the counter for dense models, the name's block for MoE."""
    n = s.n_ffn
    if max(1, s.model.n_expert) > 1:
        m = re.match(r"blk\.(\d+)\.", name)
        if not m:
            raise CheckpointError(f"failed to determine the layer of tensor {name!r}")
        i = int(m.group(1))
        if i >= n:
            raise CheckpointError(f"bad layer {i} for tensor {name!r}: must be in [0, {n})")
        return i, n
    return counter, n


def _impl(s: _State, new: str, name: str, ne0: int, cat: str) -> str:
    """llama_tensor_get_type_impl for pyquant's ftypes; types by name."""
    ft, m = s.opts.ftype, s.model
    q2k, q3ks, q3km, q3kl, q4ks, q4km, q5ks, q5km, iq4nl, iq4xs = 10, 11, 12, 13, 14, 15, 16, 17, 25, 30
    falcon = m.arch == "falcon"
    if cat == "output" or (s.has_tied_embeddings and cat == "token_embd"):
        if s.opts.output_tensor_type is not None:
            return GGML_TYPES[s.opts.output_tensor_type][0]
        if falcon or ne0 % GGML_TYPES[TYPE_IDS[new]][1]:
            return "Q8_0"
        return new if new == "Q8_0" else "Q6_K"
    if cat == "token_embd":
        if s.opts.token_embedding_type is not None:
            return GGML_TYPES[s.opts.token_embedding_type][0]
        return new
    if _is_attn_v(cat):
        if ft == q2k:
            new = "Q4_K" if m.n_gqa >= 4 else "Q3_K"
        elif ft == q3km:
            new = "Q5_K" if s.i_attention_wv < 2 else "Q4_K"
        elif ft == q3kl:
            new = "Q5_K"
        elif ft in (iq4nl, iq4xs) and m.n_gqa >= 4:
            new = "Q5_K"
        elif ft in (q4km, q5km) and _use_more_bits(s.i_attention_wv, s.n_attention_wv):
            new = "Q6_K"
        elif ft == q4ks and s.i_attention_wv < 4:
            new = "Q5_K"
        if m.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if m.n_expert == 8:
            new = "Q8_0"
        s.i_attention_wv += 1
    elif cat == "attn_k":
        if m.n_expert == 8:
            new = "Q8_0"
    elif cat == "ffn_down":
        i, n = _layer(s, s.i_ffn_down, name)
        if ft == q2k:
            new = "Q3_K"
        elif ft == q3km:
            new = "Q5_K" if i < n // 16 else "Q4_K" if not falcon or _use_more_bits(i, n) else "Q3_K"
        elif ft == q3kl:
            new = "Q4_K" if falcon else "Q5_K"
        elif ft == q4km:
            if falcon:
                new = "Q6_K" if i < n // 16 else "Q5_K" if _use_more_bits(i, n) else "Q4_K"
            elif _use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and ft in (iq4nl, iq4xs) and not s.opts.has_imatrix:
            new = "Q5_K"
        elif ft == q5km and _use_more_bits(i, n):
            new = "Q6_K"
        elif ft == q4ks and not falcon and i < n // 8:
            new = "Q5_K"
        elif ft in (2, 8) and s.opts.has_imatrix and i < n // 8:
            new = "Q4_1" if ft == 2 else "Q5_1"
        s.i_ffn_down += 1
    elif cat == "attn_output":
        if not falcon:
            if m.n_expert == 8:
                if ft in (q2k, q3ks, q3km, iq4nl, q4ks, q4km, iq4xs):
                    new = "Q5_K"
            elif ft == q2k:
                new = "Q3_K"
            elif ft == q3km:
                new = "Q4_K"
            elif ft == q3kl:
                new = "Q5_K"
        elif ft == q3kl:
            new = "Q4_K"
    elif cat == "attn_qkv":  # unreachable (attn_qkv is attn_v-like), as in llama.cpp
        pass
    elif cat == "ffn_gate":
        _layer(s, s.i_ffn_gate, name)
        s.i_ffn_gate += 1
    elif cat == "ffn_up":
        _layer(s, s.i_ffn_up, name)
        s.i_ffn_up += 1
    return new


def _fallback(s: _State, name: str, ne0: int, new: str) -> str:
    """tensor_type_fallback: a type whose block fits the row, else F16."""
    block = GGML_TYPES[TYPE_IDS[new]][1]
    if ne0 % block == 0:
        return new
    to = {"IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
    if new in to:
        out = to[new]
    elif block <= 32:
        out = new
    else:
        raise CheckpointError(f"no tensor type fallback is defined for type {new}")
    if ne0 % GGML_TYPES[TYPE_IDS[out]][1]:
        out = "F16"
    s.fallbacks.append(f"{name}: {ne0} columns not divisible by {block} ({new}) -> {out}")
    return out


def llama_order(names: Sequence[str]) -> list[int]:
    """Indices of ``names`` in llama-quantize's order (its weights_map's
    comparer: the ``blk.N.`` number, -1 for none, then the name)."""
    def key(i: int) -> tuple[int, bytes]:
        m = re.match(r"blk\.([+-]?\d+)\.", names[i])
        return (int(m.group(1)) if m else -1, names[i].encode())
    return sorted(range(len(names)), key=key)


def prune_layers(names: Sequence[str], prune: Sequence[int]) -> tuple[dict[str, str | None], int]:
    """llama-quantize's --prune-layers (remap_layer): each name (given in its
    tensor order) -> its new name, blocks after a pruned one numbered down, or
    None for a tensor of a pruned block; and the new block count."""
    out: dict[str, str | None] = {n: n for n in names}
    if not prune:
        return out, 0
    first, drop = min(prune), set(prune)
    mapped: dict[int, int | None] = {}
    next_id = 0
    for name in names:
        m = re.search(r"blk\.(\d+)\.", name)
        if not m:
            out[name] = name
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in drop:
                mapped[blk] = None
            elif blk < first:
                mapped[blk], next_id = blk, blk + 1
            else:
                mapped[blk], next_id = next_id, next_id + 1
        new = mapped[blk]
        out[name] = None if new is None else f"{name[:m.start(1)]}{new}{name[m.end(1):]}"
    return out, next_id


def choose_types(tensors: Sequence[tuple[str, tuple[int, ...], int]], model: Model,
                 opts: Options) -> tuple[list[int], list[str]]:
    """The target type id of each ``(name, shape, type id)`` (given in
    llama-quantize's order), and the fallback notes."""
    s = _State(model, opts, n_ffn=model.n_layer)
    for name, _, _ in tensors:
        cat = category(name)
        s.n_attention_wv += _is_attn_v(cat)
        if cat == "output":
            s.has_tied_embeddings = False
    patterns = [(re.compile(p), t) for p, t in opts.tensor_types]
    default = GGML_TYPES[opts.default_type][0]
    out = []
    for name, shape, type_id in tensors:
        if not allows_quantization(name, shape, opts):
            out.append(type_id)
            continue
        cat = category(name)
        if opts.token_embedding_type is not None and cat == "token_embd":
            named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns)
            if not named:
                out.append(opts.token_embedding_type)
                continue
        if opts.output_tensor_type is not None and cat == "output":
            out.append(opts.output_tensor_type)
            continue
        new = default
        if new not in _UNQUANTIZED:
            manual = False
            for p, t in patterns:
                if p.search(name):
                    new, manual = GGML_TYPES[t][0], True
                    break
            if not manual and not opts.pure:
                new = _impl(s, new, name, shape[0], cat)
            new = _fallback(s, name, shape[0], new)
        out.append(TYPE_IDS[new])
    return out, s.fallbacks


@dataclass
class Imatrix:
    """An importance matrix as llama-quantize's load_imatrix leaves it: per
    tensor name, the float32 weights (sums / counts, per expert)."""

    path: str
    data: dict[str, "np.ndarray[Any, np.dtype[np.float32]]"]
    datasets: list[str]
    chunk_count: int

    def kv_pairs(self) -> list[tuple[str, bytes]]:
        """The quantize.imatrix.* pairs (key, raw bytes) llama-quantize appends (its kv overrides)."""
        from .gguf_file import kv_string, kv_u32

        pairs = [("quantize.imatrix.file", kv_string("quantize.imatrix.file", _c_truncate(self.path)))]
        if self.datasets:
            pairs.append(("quantize.imatrix.dataset",
                          kv_string("quantize.imatrix.dataset", _c_truncate(self.datasets[0]))))
        pairs.append(("quantize.imatrix.entries_count", kv_u32("quantize.imatrix.entries_count", len(self.data))))
        if self.chunk_count > 0:
            pairs.append(("quantize.imatrix.chunks_count", kv_u32("quantize.imatrix.chunks_count", self.chunk_count)))
        return pairs


def filter_imatrix(m: Imatrix, include: Sequence[str], exclude: Sequence[str]) -> Imatrix:
    """llama-quantize's --exclude-weights / --include-weights (prepare_imatrix):
    drop, or keep only, the entries whose name contains one of the strings."""
    data = m.data
    if exclude:
        data = {k: v for k, v in data.items() if not any(s in k for s in exclude)}
    if include:
        data = {k: v for k, v in data.items() if any(s in k for s in include)}
    return Imatrix(m.path, data, m.datasets, m.chunk_count)


@dataclass(frozen=True)
class KvOverride:
    """One --override-kv: the key, the value the loader sees, the pair's raw bytes."""

    key: str
    value: Any
    raw: bytes


def parse_kv_override(spec: str) -> KvOverride:
    """``KEY=TYPE:VALUE`` as llama.cpp's string_parse_kv_override reads it, and
    the pair llama-quantize writes for it: int -> u32 of the absolute value,
    float -> f32, bool (true/false), str (at most 127 bytes). Values that
    llama.cpp's atol/atof would silently read as 0 are refused here."""
    from .gguf_file import BOOL, FLOAT32, kv_scalar, kv_string, kv_u32

    key, sep, rest = spec.partition("=")
    if not sep or not key or len(key.encode()) >= 128:
        raise QuantizeError(f"override_kv {spec!r}: expected KEY=TYPE:VALUE with a key of 1-127 bytes")
    kind, colon, text = rest.partition(":")
    try:
        if not colon:
            raise ValueError
        if kind == "int":
            value: Any = int(text.strip())
            return KvOverride(key, value, kv_u32(key, abs(value) & 0xFFFFFFFF))
        if kind == "float":
            value = float(text.strip())
            return KvOverride(key, value, kv_scalar(key, FLOAT32, value))
        if kind == "bool" and text in ("true", "false"):
            return KvOverride(key, text == "true", kv_scalar(key, BOOL, text == "true"))
        if kind == "str" and len(text.encode()) <= 127:
            return KvOverride(key, text, kv_string(key, text))
    except (ValueError, OverflowError):
        pass
    raise QuantizeError(f"override_kv {spec!r}: expected KEY=int:N, KEY=float:X, KEY=bool:true|false or "
                        "KEY=str:TEXT (at most 127 bytes)")


def _c_truncate(s: str) -> str:
    """strncpy into char[128]: at most 127 bytes."""
    return s.encode("utf-8")[:127].decode("utf-8", "ignore")


def load_imatrix(path: str) -> Imatrix:
    """llama.cpp's imatrix file: the GGUF format of llama-imatrix (``NAME.in_sum2``
    and ``NAME.counts`` tensors, ``imatrix.*`` metadata) or the legacy binary one."""
    from .gguf_file import GGUFFile, is_gguf

    if not is_gguf(path):
        return _load_legacy_imatrix(path)
    with GGUFFile(path) as g:
        if any(g.value(k) is None for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")):
            raise CheckpointError(f"{path}: missing imatrix metadata (imatrix.datasets, chunk_count, chunk_size)")
        parts: dict[str, dict[str, Any]] = {}
        for t in g.tensors:
            for suffix in (".in_sum2", ".counts"):
                if t.name.endswith(suffix):
                    if t.type_id != 0:
                        raise CheckpointError(f"{path}: {t.name} must be F32")
                    parts.setdefault(t.name[: -len(suffix)], {})[suffix] = g.array(t).reshape(-1).copy()
        data = {}
        for name, p in sorted(parts.items()):
            if len(p) != 2:
                raise CheckpointError(f"{path}: mismatched sums and counts for {name}")
            sums, counts = p[".in_sum2"], p[".counts"]
            if counts.size == 0 or sums.size % counts.size:
                raise CheckpointError(f"{path}: {name}: {sums.size} sums do not fit {counts.size} counts")
            with np.errstate(divide="ignore", invalid="ignore"):
                e = sums.reshape(counts.size, -1) / counts.reshape(-1, 1)
            e[counts <= 0] = 1
            data[name] = e.reshape(-1).astype(np.float32)
        datasets = g.value("imatrix.datasets")
        return Imatrix(path, data, list(datasets) if isinstance(datasets, list) else [],
                       int(g.value("imatrix.chunk_count")))


def _load_legacy_imatrix(path: str) -> Imatrix:
    import os

    from .safetensors_io import open_regular

    fd, st = open_regular(path)  # a regular file, opened without blocking
    with os.fdopen(fd, "rb") as f:
        raw = f.read(st.st_size)
    pos = 0

    def i32() -> int:
        nonlocal pos
        if pos + 4 > len(raw):
            raise CheckpointError(f"{path}: not a valid imatrix file (truncated at byte {pos})")
        pos += 4
        return int(np.frombuffer(raw, "<i4", 1, pos - 4)[0])

    data = {}
    for _ in range(i32()):
        n = i32()
        if not 0 < n <= len(raw) - pos:
            raise CheckpointError(f"{path}: not a valid imatrix file (bad name length {n})")
        name = raw[pos:pos + n].split(b"\0")[0].decode("utf-8", "replace")
        pos += n
        ncall, nval = i32(), i32()
        if not 0 < nval <= (len(raw) - pos) // 4:
            raise CheckpointError(f"{path}: not a valid imatrix file (bad value count {nval} for {name})")
        sums = np.frombuffer(raw, "<f4", nval, pos).copy()
        pos += 4 * nval
        data[name] = sums / np.float32(ncall) if ncall > 0 else sums
    chunk_count, datasets = 0, []
    if pos + 4 <= len(raw):
        chunk_count = i32()
        if pos + 4 <= len(raw):
            n = i32()
            if 0 < n <= len(raw) - pos:
                datasets.append(raw[pos:pos + n].split(b"\0")[0].decode("utf-8", "replace"))
    return Imatrix(path, data, datasets, chunk_count)

"""`pyquant demo`: quantize a deterministic synthetic transformer at 8, 4 and
2 bits and print what each layer costs and keeps. No download, no files."""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np

from .core import quantize_ptr
from .dtypes import BFLOAT16
from .metrics import HIGH_ERROR_NOTE, error_stats, format_table, high_error


def synthetic_model(seed: int = 0, d_model: int = 512, d_ff: int = 1408, vocab: int = 8000,
                    n_layers: int = 2) -> dict[str, np.ndarray[Any, Any]]:
    """Transformer-shaped weights: N(0, 0.02) with a few outlier input channels,
    in float32, float16 and bfloat16 (one dtype per block)."""
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int, dtype: Any) -> np.ndarray[Any, Any]:
        w = rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)
        outliers = rng.choice(cols, size=max(1, cols // 128), replace=False)
        w[:, outliers] *= 8.0  # real checkpoints have a few large-magnitude channels
        return w.astype(dtype)

    dtypes = [np.float32, np.float16, BFLOAT16]
    model = {"embed_tokens": weight(vocab, d_model, BFLOAT16)}
    for i in range(n_layers):
        dt = dtypes[i % len(dtypes)]
        p = f"layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            model[f"{p}.attn.{name}"] = weight(d_model, d_model, dt)
        model[f"{p}.mlp.gate_proj"] = weight(d_ff, d_model, dt)
        model[f"{p}.mlp.up_proj"] = weight(d_ff, d_model, dt)
        model[f"{p}.mlp.down_proj"] = weight(d_model, d_ff, dt)
    model["lm_head"] = weight(vocab, d_model, np.float32)
    return model


def run(bits_list: Iterable[int] = (8, 4, 2), group_size: int | None = 128, seed: int = 0) -> str:
    """Quantizes the synthetic model at each bit width; returns the report."""
    model = synthetic_model(seed)
    out = []
    for bits in bits_list:
        rows = []
        total_in = total_q = 0
        total_time = 0.0
        flagged = 0
        for name, w in model.items():
            t0 = time.perf_counter()
            qt = quantize_ptr(w, bits=bits, group_size=group_size)
            elapsed = time.perf_counter() - t0
            stats = error_stats(w, qt.dequantize())
            total_in += qt.original_nbytes
            total_q += qt.nbytes
            total_time += elapsed
            rows.append([
                name, "x".join(map(str, w.shape)), qt.dtype, bits,
                f"{qt.compression_ratio:.2f}x", f"{stats.max_abs:.3e}",
                f"{stats.rel_rmse:.4f}", f"{elapsed * 1e3:.2f}", "!!" if high_error(stats) else "",
            ])
            flagged += high_error(stats)
        headers = ["layer", "shape", "dtype", "bits", "ratio", "max abs err", "rel RMSE", "time ms", "flag"]
        out.append(f"== {bits}-bit, group size {group_size or 'per row'} ==")
        out.append(format_table(headers, rows))
        if flagged:
            out.append(f"{flagged} of {len(rows)} layers flagged. {HIGH_ERROR_NOTE}")
        out.append(
            f"total: {total_in / 2**20:.1f} MiB -> {total_q / 2**20:.1f} MiB "
            f"({total_in / total_q:.2f}x) in {total_time * 1e3:.1f} ms "
            f"({total_in / total_time / 1e9:.2f} GB/s)\n"
        )
    return "\n".join(out)


def run_files(bits: int = 4, group_size: int | None = 128, seed: int = 0) -> str:
    """Writes the synthetic model to a temporary safetensors file and runs the
    file pipeline on it: quantize, inspect, report, dequantize."""
    import os
    import tempfile

    from .pipeline import dequantize_file, quantize_file
    from .cli import inspect_text, report_text
    from .safetensors_io import CODE_OF, OutputTensor, writing

    model = synthetic_model(seed)
    model["layers.0.attn.norm.weight"] = np.ones(512, np.float32)  # 1-D: carried over
    with tempfile.TemporaryDirectory(prefix="pyquant-demo-") as tmp:
        src = os.path.join(tmp, "model.safetensors")
        dst = os.path.join(tmp, "model.q.safetensors")
        back = os.path.join(tmp, "model.dq.safetensors")
        specs = [OutputTensor(n, CODE_OF[str(a.dtype)], a.shape) for n, a in model.items()]
        with writing(src, specs, {"source": "pyquant demo"}) as w:
            for n, a in model.items():
                w.write(n, a)
        s = quantize_file(src, dst, bits=bits, group_size=group_size)
        d = dequantize_file(dst, back)
        return "\n".join([
            f"== file pipeline: {src} ==",
            f"quantize: {s.quantized} tensors quantized, {s.kept} kept, {s.input_bytes / 2**20:.1f} MiB -> "
            f"{s.output_bytes / 2**20:.1f} MiB in {s.seconds * 1e3:.0f} ms ({s.gb_per_s:.2f} GB/s)",
            "", inspect_text(dst), "", report_text(src, dst, as_json=False), "",
            f"dequantize: {d.quantized + d.kept} tensors back to their dtypes in {d.seconds * 1e3:.0f} ms",
        ])

"""A plain numpy implementation of pyquant's scheme, written from its
definition (docs/scheme.md) and kept deliberately simple: the tests
compare every native path to it bit for bit, and the benchmarks use it as the
numpy baseline. It is slow; use it to check, not to quantize."""

from __future__ import annotations

from typing import Any

import numpy as np


F32Array = np.ndarray[Any, np.dtype[np.float32]]
U8Array = np.ndarray[Any, np.dtype[np.uint8]]


def reference_quantize(
    x: np.ndarray[Any, Any], bits: int, group_size: int | None
) -> tuple[U8Array, F32Array, F32Array]:
    """Returns (codes, scales, mins) for ``x`` (float32, float16 or bfloat16)."""
    x32 = np.asarray(x).astype(np.float32)  # exact for f16 and bf16
    k = x32.shape[-1]
    g = k if group_size is None else group_size
    groups = x32.reshape(-1, g)
    # "+ 0" turns -0.0 into +0.0: -0.0 behaves like 0.0.
    lo = groups.min(axis=1) + np.float32(0)
    hi = groups.max(axis=1) + np.float32(0)
    qmax = np.float32(2**bits - 1)
    scale = (hi - lo) / qmax
    if not np.all(np.isfinite(x32)) or not np.all(np.isfinite(hi - lo)):
        raise ValueError("non-finite input or range")
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint((groups - lo[:, None]) / scale[:, None]), 0, qmax)
    q[scale == 0] = 0
    # One little-endian bit stream: code i at bits i*bits .. i*bits + bits - 1.
    stream = (q.astype(np.uint8).reshape(-1, 1) >> np.arange(bits, dtype=np.uint8)) & np.uint8(1)
    codes = np.packbits(stream.reshape(-1), bitorder="little")
    lead = x32.shape[:-1]
    return (
        codes.reshape(lead + (k * bits // 8,)),
        scale.reshape(lead + (k // g,)),
        lo.reshape(lead + (k // g,)),
    )


def reference_dequantize(
    codes: U8Array, scales: F32Array, mins: F32Array, bits: int, shape: tuple[int, ...]
) -> F32Array:
    """``mins + q * scales`` in float32, as float32 of ``shape``."""
    stream = np.unpackbits(codes.reshape(-1), bitorder="little").reshape(-1, bits)
    q = (stream << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
    n_groups = scales.size
    if n_groups == 0:
        return np.zeros(shape, dtype=np.float32)
    q32: F32Array = q.reshape(n_groups, -1).astype(np.float32)
    out = mins.reshape(-1, 1) + q32 * scales.reshape(-1, 1)
    return out.astype(np.float32).reshape(shape)


def error_bound(x32: np.ndarray, scales: np.ndarray, mins: np.ndarray, bits: int) -> np.ndarray:
    """Per-value bound: scale/2, plus the rounding of scale times up to qmax,
    plus a few ulps of the group's magnitude (f64 arithmetic)."""
    n_groups = max(scales.size, 1)
    s = scales.reshape(n_groups, 1).astype(np.float64)
    g = x32.reshape(n_groups, -1)
    mag = np.maximum(np.abs(g).max(axis=1, keepdims=True), np.abs(mins.reshape(n_groups, 1)))
    ulp_scale = np.spacing(scales.reshape(n_groups, 1)).astype(np.float64)
    ulp_mag = np.spacing(mag.astype(np.float32)).astype(np.float64)
    bound = s / 2 + (2**bits - 1) * ulp_scale + 4 * ulp_mag
    return np.broadcast_to(bound, g.shape).reshape(x32.shape)

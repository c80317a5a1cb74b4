"""Error statistics between an original tensor and its reconstruction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    rmse: float
    rel_rmse: float  # rmse / rms(original); 0 when both are 0
    cosine: float
    snr_db: float  # inf for an exact reconstruction

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


HIGH_REL_RMSE = 0.3
"""Relative RMSE at or above which ``demo`` and ``report`` flag a tensor.
0.3 is an error power of 9% of the signal's (SNR under 10.5 dB): 4-bit
codes with groups of 128 stay near 0.1-0.17 on transformer weights, 8-bit
near 0.01, while 2-bit codes land at 0.5-0.9 and one group per row with
outlier channels passes 0.3; such a tensor is likely to break the model."""

HIGH_ERROR_NOTE = (f"!! = relative RMSE >= {HIGH_REL_RMSE}: the error is about as large as a third of the weights "
                   "themselves, which is likely to break the model; use more bits for these tensors "
                   "(--bits-for PATTERN=8), a smaller group size, or --skip them, and test the model before "
                   "shipping it")


def high_error(stats: ErrorStats) -> bool:
    """Whether ``stats`` are past :data:`HIGH_REL_RMSE` (the ``!!`` marker)."""
    return stats.rel_rmse >= HIGH_REL_RMSE


CHUNK = 1 << 18  # values per step: the float64 temporaries stay at a few MiB, whatever the tensor


def error_stats(original: npt.ArrayLike, reconstructed: npt.ArrayLike) -> ErrorStats:
    """Compares two tensors of one shape (numpy on the calling thread).

    Streams: both are read in steps of :data:`CHUNK` values, each step
    converted to float64 and folded into float64 sums, so the memory used
    is a few MiB beyond the inputs (which may be views on a mapped file),
    not float64 copies of whole tensors. Raises ValueError when the shapes
    differ."""
    x = np.asarray(original).reshape(-1)
    y = np.asarray(reconstructed).reshape(-1)
    if np.shape(original) != np.shape(reconstructed):
        raise ValueError(f"shapes differ: {np.shape(original)} vs {np.shape(reconstructed)}")
    if x.size == 0:
        return ErrorStats(0.0, 0.0, 0.0, 1.0, math.inf)
    xx = yy = xy = dd = max_abs = 0.0
    for i in range(0, x.size, CHUNK):
        xc = x[i:i + CHUNK].astype(np.float64)
        yc = y[i:i + CHUNK].astype(np.float64)
        d = xc - yc
        xx += float(np.dot(xc, xc))
        yy += float(np.dot(yc, yc))
        xy += float(np.dot(xc, yc))
        dd += float(np.dot(d, d))
        max_abs = max(max_abs, float(np.max(np.abs(d))))
    signal, noise = xx / x.size, dd / x.size
    norms = math.sqrt(xx) * math.sqrt(yy)
    return ErrorStats(
        max_abs=max_abs,
        rmse=math.sqrt(noise),
        rel_rmse=math.sqrt(noise / signal) if signal > 0 else (0.0 if noise == 0 else math.inf),
        cosine=xy / norms if norms > 0 else float(noise == 0),
        snr_db=10 * math.log10(signal / noise) if noise > 0 else math.inf,
    )


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

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


def error_stats(original: npt.ArrayLike, reconstructed: npt.ArrayLike) -> ErrorStats:
    """Compares two tensors of one shape, in float64 (numpy on the calling
    thread; both are converted to float64 copies). Raises ValueError when
    the shapes differ."""
    x = np.asarray(original).astype(np.float64).ravel()
    y = np.asarray(reconstructed).astype(np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {np.shape(original)} vs {np.shape(reconstructed)}")
    if x.size == 0:
        return ErrorStats(0.0, 0.0, 0.0, 1.0, math.inf)
    diff = x - y
    signal = float(np.mean(x * x))
    noise = float(np.mean(diff * diff))
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return ErrorStats(
        max_abs=float(np.max(np.abs(diff))),
        rmse=math.sqrt(noise),
        rel_rmse=math.sqrt(noise / signal) if signal > 0 else (0.0 if noise == 0 else math.inf),
        cosine=float(np.dot(x, y) / norms) if norms > 0 else float(noise == 0),
        snr_db=10 * math.log10(signal / noise) if noise > 0 else math.inf,
    )


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

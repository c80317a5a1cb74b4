"""How good a quantized checkpoint is, and what a checkpoint holds:
per-tensor error statistics against the original (:func:`error_report`)
and a per-tensor listing of any checkpoint (:func:`inspect`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from contextlib import ExitStack
from typing import Any, Callable

import numpy as np

from .core import QuantizedTensor
from .errors import CheckpointError
from .formats import NOT_RECORDED, open_quantized, stored_tensors
from .metrics import HIGH_REL_RMSE, ErrorStats, error_stats, high_error
from .pipeline import ProgressCallback, _Tracker
from .safetensors_io import CODE_OF, DTYPES, Checkpoint


@dataclass(frozen=True)
class TensorReport:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bits: float | None  # None: carried over (GGUF: bits per weight of the GGML type)
    stats: ErrorStats
    kept_because: str | None = None  # a carried-over tensor: why it was kept

    @property
    def high_error(self) -> bool:
        """Relative RMSE at or above :data:`pyquant.metrics.HIGH_REL_RMSE` (flagged ``!!``)."""
        return high_error(self.stats)


@dataclass(frozen=True)
class Report:
    tensors: list[TensorReport]

    def summary(self) -> dict[str, Any]:
        q = [t for t in self.tensors if t.bits is not None]
        return {
            "tensors": len(self.tensors),
            "quantized": len(q),
            "kept": len(self.tensors) - len(q),
            "mean_rel_rmse": float(np.mean([t.stats.rel_rmse for t in q])) if q else 0.0,
            "worst_rel_rmse": max((t.stats.rel_rmse for t in q), default=0.0),
            "worst_tensor": max(q, key=lambda t: t.stats.rel_rmse).name if q else None,
            "min_cosine": min((t.stats.cosine for t in q), default=1.0),
            "max_abs": max((t.stats.max_abs for t in self.tensors), default=0.0),
            "high_error_threshold": HIGH_REL_RMSE,
            "high_error": [t.name for t in q if t.high_error],
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bits": t.bits, **t.stats.as_dict(),
                 "high_error": t.high_error, "kept_because": t.kept_because}
                for t in self.tensors
            ],
            "summary": self.summary(),
        }


def error_report(original: str | os.PathLike[str], quantized: str | os.PathLike[str], *,
                 progress: ProgressCallback | None = None) -> Report:
    """Per-tensor error statistics of a quantized checkpoint against its
    original (max abs, RMSE, relative RMSE, cosine, SNR); see
    :meth:`Report.summary` for the totals.

    Copies: both files are memory-mapped; each quantized tensor is
    dequantized to one float32 array, compared in float64 steps of a few MiB
    (:func:`error_stats`) and freed, one tensor at a time, and both files'
    pages are given back after each: memory follows the largest tensor,
    not the model. Parallelism: each dequantization is one native call on all cores;
    the statistics are numpy on the calling thread. Raises CheckpointError
    when the files hold different tensors, a carried-over tensor differs, or
    a file is bad. ``progress`` is called after each tensor (label
    ``"comparing"``, bytes of the original). A carried-over tensor's row
    says why it was kept (``kept_because``, from the checkpoint's metadata).

    A GGUF ``quantized`` file is compared with its original (GGUF or
    safetensors) by :func:`gguf_error_report`.
    """
    from .gguf_file import is_gguf

    if is_gguf(quantized):
        return gguf_error_report(original, quantized, progress=progress)
    rows = []
    with Checkpoint(original) as ckpt, open_quantized(quantized) as q:
        names = q.names()
        missing = sorted(set(ckpt.names()) ^ set(names))
        if missing:
            raise CheckpointError(f"the checkpoints hold different tensors (e.g. {missing[0]!r})")
        bar = _Tracker(progress, "comparing", len(names), ckpt.nbytes)
        for n in names:
            x = ckpt.array(n)
            t = q.get(n)
            if isinstance(t, QuantizedTensor):
                rows.append(TensorReport(n, t.shape, t.dtype, t.bits, error_stats(x, t.dequantize("float32"))))
            else:
                if not (x.shape == t.shape and x.dtype == t.dtype and _same_bytes(x, t)):
                    raise CheckpointError(f"carried-over tensor {n!r} differs from the original")
                stats = ErrorStats(0.0, 0.0, 0.0, 1.0, math.inf)
                why = q.kept_reasons.get(n, NOT_RECORDED)
                rows.append(TensorReport(n, tuple(x.shape), str(x.dtype), None, stats, why))
            bar.update(x.nbytes)
            del x, t
            ckpt.release(n)
            q.release(n)
    return Report(rows)


def gguf_error_report(original: str | os.PathLike[str], quantized: str | os.PathLike[str], *,
                      progress: ProgressCallback | None = None) -> Report:
    """:func:`error_report` for GGUF files: a quantized GGUF (from
    :func:`pyquant.quantize_gguf` or :func:`pyquant.safetensors_to_gguf`)
    against its original, a float GGUF model (split or not) or the
    safetensors file or model directory it was made from, per tensor
    (``bits``: the GGML type's bits per weight, ``dtype``: its name, ``shape``:
    GGUF order, row length first), one tensor at a time from the memory maps."""
    from . import gguf as ggml
    from .dtypes import BY_SAFETENSORS
    from .gguf_file import FLOAT_DTYPES, GGML_TYPES, GGUFModel, is_gguf

    rows = []
    with ExitStack() as stack:
        fq = stack.enter_context(GGUFModel(quantized))
        # The original's tensors as (GGUF shape, GGML type id, values, release).
        if is_gguf(original):
            fo = stack.enter_context(GGUFModel(original))
            by_name = {t.name: t for t in fo.tensors}
            names = set(by_name)

            def source(name: str) -> tuple[tuple[int, ...], int | None, Any, Callable[[], None]]:
                o = by_name[name]
                x = fo.array(o) if o.type_id in FLOAT_DTYPES else np.frombuffer(fo.raw(o), np.uint8)
                return o.shape, o.type_id, x, lambda: fo.release(o)
        else:
            ckpt = stack.enter_context(Checkpoint(original))
            names = set(ckpt.names())

            def source(name: str) -> tuple[tuple[int, ...], int | None, Any, Callable[[], None]]:
                info = ckpt.info(name)
                x = ckpt.array(name)
                return tuple(reversed(info.shape)) or (1,), BY_SAFETENSORS[info.dtype].ggml_type, x, \
                    lambda: ckpt.release(name)
        missing = sorted(names ^ {t.name for t in fq.tensors})
        if missing:
            raise CheckpointError(f"the files hold different tensors (e.g. {missing[0]!r})")
        bar = _Tracker(progress, "comparing", len(fq.tensors), sum(t.nbytes for t in fq.tensors))
        for t in fq.tensors:
            shape, type_id, x, release = source(t.name)
            if t.shape != shape:
                raise CheckpointError(f"tensor {t.name!r}: shape {list(t.shape)} differs from the original's "
                                      f"{list(shape)}")
            if t.type_id == type_id:
                if not _same_bytes(np.frombuffer(fq.raw(t), np.uint8), np.ascontiguousarray(x)):
                    raise CheckpointError(f"carried-over tensor {t.name!r} differs from the original")
                rows.append(TensorReport(t.name, t.shape, t.type_name, None, ErrorStats(0.0, 0.0, 0.0, 1.0, math.inf)))
            elif type_id in FLOAT_DTYPES and t.type_name in ggml.SUPPORTED_TYPES:
                raw = np.frombuffer(fq.raw(t), np.uint8).reshape(t.n_values // t.shape[0], -1)
                y = ggml.dequantize(raw, t.type_id)
                rows.append(TensorReport(t.name, t.shape, t.type_name, 8 * t.nbytes / t.n_values,
                                         error_stats(x.reshape(-1, t.shape[0]), y)))
            else:
                was = "a type GGUF has no name for" if type_id is None else GGML_TYPES[type_id][0]
                raise CheckpointError(f"tensor {t.name!r}: cannot compare {t.type_name} with {was}")
            del x
            release()
            fq.release(t)
            bar.update(t.nbytes)
    return Report(rows)


def _same_bytes(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Bytewise equality, a step at a time (no copy of either tensor)."""
    a, b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    step = 1 << 22
    return a.size == b.size and all(np.array_equal(a[i:i + step], b[i:i + step]) for i in range(0, a.size, step))


@dataclass(frozen=True)
class InspectRow:
    name: str
    dtype: str
    shape: tuple[int, ...]
    bits: int | None
    group_size: int | None
    stored_bytes: int
    kept_because: str | None  # a carried-over tensor of a pyquant checkpoint: why it was kept
    original_bytes: int
    bits_per_weight: float | None = None  # GGUF: stored bits per value of the GGML type


def inspect(path: str | os.PathLike[str]) -> tuple[list[InspectRow], dict[str, str]]:
    """What a checkpoint (plain safetensors, pyquant in either format, or
    GGUF) holds: one row per original tensor (for a carried-over tensor of a
    pyquant checkpoint, why it was kept), and the file's metadata.

    A GGUF file's rows: ``dtype`` the GGML type name (``"Q4_K"``), ``shape``
    in numpy order (the GGUF shape reversed), ``bits`` and ``group_size``
    None, ``bits_per_weight`` the stored bits per value, ``original_bytes``
    the tensor as float32 for a quantized type (GGUF records no original
    dtype), else as stored. Its metadata: every key-value pair as text (an
    array as ``"[N items]"``) and ``"format": "gguf"``; a split model's rows
    are those of all its files (given its first file), its pairs the first's."""
    from .gguf_file import FLOAT_DTYPES, GGML_TYPES, GGUFModel, is_gguf

    if is_gguf(path):
        with GGUFModel(path) as f:
            rows = [InspectRow(t.name, t.type_name, tuple(reversed(t.shape)), None, None, t.nbytes, None,
                               t.nbytes if t.type_id in FLOAT_DTYPES or GGML_TYPES[t.type_id][1] == 1
                               else 4 * t.n_values, 8 * t.nbytes / t.n_values)
                    for t in f.tensors]
            meta = {k: f"[{len(v)} items]" if isinstance(v, list) else str(v) for k, (_, v, _) in f.kv.items()}
        return rows, {**meta, "format": "gguf"}
    stored, meta = stored_tensors(path)
    rows = [InspectRow(*s, original_bytes=math.prod(s.shape) * _itemsize(s.dtype)) for s in stored]
    return rows, meta


def _itemsize(dtype: str) -> int:
    return DTYPES[CODE_OF[dtype]].itemsize

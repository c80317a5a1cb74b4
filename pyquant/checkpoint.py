"""Whole checkpoints: safetensors in, quantized checkpoint out, and back.

A quantized checkpoint is a safetensors file holding, per quantized tensor
``NAME``, the tensors ``NAME.codes`` (U8), ``NAME.scales`` (F32) and
``NAME.mins`` (F32); every other tensor is carried over unchanged. Its
metadata says which is which (see :data:`FORMAT_VERSION` and
:func:`quantize_file`). Tensors are read through a memory map and quantized
in place, one bounded batch at a time, and each result goes straight to its
place in the output file, so peak memory follows the largest tensor, not
the model.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .core import SUPPORTED_DTYPES, QuantizedTensor, quantize_copy, quantize_ptr, quantized_layout
from .errors import InvalidBitsError, QuantizeError
from .metrics import ErrorStats, error_stats
from .errors import CheckpointError
from .safetensors_io import CODE_OF, DTYPES, Checkpoint, OutputTensor, SafetensorsFile, writing

FORMAT = "pyquant"
FORMAT_VERSION = "1"
QUANTIZABLE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
PARTS = ("codes", "scales", "mins")


@dataclass(frozen=True)
class Plan:
    """What happens to one tensor: quantized with ``bits``/``group_size``, or kept (with why)."""

    name: str
    dtype: str  # safetensors code of the input
    shape: tuple[int, ...]
    nbytes: int
    bits: int | None = None
    group_size: int | None = None
    kept_because: str | None = None


@dataclass
class Summary:
    """What :func:`quantize_file` did."""

    quantized: int = 0
    kept: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    kept_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def gb_per_s(self) -> float:
        return self.input_bytes / self.seconds / 1e9 if self.seconds else 0.0


class Progress:
    """A one-line progress bar on stderr: tensors and bytes done, throughput.
    Silent unless enabled (the CLI enables it only on a terminal)."""

    def __init__(self, tensors: int, nbytes: int, enabled: bool, label: str = "quantizing"):
        self.tensors, self.nbytes, self.enabled, self.label = tensors, nbytes, enabled, label
        self.done_tensors = self.done_bytes = 0
        self.start = self.last = time.perf_counter()

    def update(self, nbytes: int) -> None:
        self.done_tensors += 1
        self.done_bytes += nbytes
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done_tensors == self.tensors):
            self.last = now
            frac = self.done_bytes / self.nbytes if self.nbytes else 1.0
            bar = "#" * int(frac * 30)
            rate = self.done_bytes / max(now - self.start, 1e-9) / 1e9
            sys.stderr.write(
                f"\r{self.label} [{bar:<30}] {self.done_tensors}/{self.tensors} tensors "
                f"{self.done_bytes / 1e9:.2f}/{self.nbytes / 1e9:.2f} GB {rate:.2f} GB/s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def plan_tensors(
    ckpt: Checkpoint,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    skip: Sequence[str] = (),
    bits_for: Mapping[str, int] | Sequence[tuple[str, int]] = (),
    keep_1d: bool = True,
) -> list[Plan]:
    """Decides, per tensor, whether it is quantized and how.

    Kept unchanged: tensors that are not float32/float16/bfloat16, 1-D
    tensors (biases, norms) when ``keep_1d``, tensors whose name matches a
    ``skip`` regular expression (``re.search``), and tensors whose last axis
    does not fit the group size. ``bits_for`` maps regular expressions to
    bit widths; the first match wins over ``bits``.
    """
    skip_res = [_regex(p, "--skip") for p in skip]
    rules = [(_regex(p, "--bits-for"), b) for p, b in (bits_for.items() if isinstance(bits_for, Mapping) else bits_for)]
    plans = []
    for name in ckpt.names():
        info = ckpt.info(name)
        base = dict(name=name, dtype=info.dtype, shape=info.shape, nbytes=info.nbytes)
        reason = None
        if info.dtype not in QUANTIZABLE:
            reason = f"dtype {info.dtype} is not floating point ({', '.join(SUPPORTED_DTYPES)})"
        elif len(info.shape) < 2 and keep_1d:
            reason = "1-D (bias or norm)"
        elif any(r.search(name) for r in skip_res):
            reason = "matches --skip"
        elif math.prod(info.shape) == 0:
            reason = "empty"
        if reason:
            plans.append(Plan(**base, kept_because=reason))
            continue
        b = next((b for r, b in rules if r.search(name)), bits)
        try:
            _, _, b, g = quantized_layout(info.shape, b, group_size)
        except InvalidBitsError as exc:
            raise InvalidBitsError(f"tensor {name!r}: {exc}") from None
        except QuantizeError as exc:
            # A shape that doesn't fit the group size is carried over, not lost.
            plans.append(Plan(**base, kept_because=f"does not fit: {exc}"))
            continue
        plans.append(Plan(**base, bits=b, group_size=g))
    for p in plans:
        if p.bits is not None:
            for part in PARTS:
                if f"{p.name}.{part}" in ckpt.where:
                    raise CheckpointError(f"tensor {p.name}.{part} would clash with the quantized {p.name!r}")
    return plans


def _regex(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise QuantizeError(f"{what} pattern {pattern!r} is not a valid regular expression: {exc}") from None


def _outputs(plan: Plan) -> list[OutputTensor]:
    if plan.bits is None:
        return [OutputTensor(plan.name, plan.dtype, plan.shape)]
    codes, groups, _, _ = quantized_layout(plan.shape, plan.bits, plan.group_size)
    return [
        OutputTensor(f"{plan.name}.codes", "U8", codes),
        OutputTensor(f"{plan.name}.scales", "F32", groups),
        OutputTensor(f"{plan.name}.mins", "F32", groups),
    ]


def _metadata(plans: list[Plan], bits: int, group_size: int | None, source: Mapping[str, str]) -> dict[str, str]:
    tensors = {
        p.name: {"dtype": QUANTIZABLE[p.dtype], "shape": list(p.shape), "bits": p.bits, "group_size": p.group_size}
        for p in plans
        if p.bits is not None
    }
    return {
        "format": FORMAT,
        "pyquant.format_version": FORMAT_VERSION,
        "pyquant.bits": str(bits),
        "pyquant.group_size": "row" if group_size is None else str(group_size),
        "pyquant.tensors": json.dumps(tensors, separators=(",", ":")),
        "pyquant.source_metadata": json.dumps(dict(source), separators=(",", ":")),
    }


def quantize_array(arr: np.ndarray[Any, Any], bits: int, group_size: int | None) -> QuantizedTensor:
    """The zero-copy path when the mapped tensor allows it (aligned), else the copy path."""
    if arr.flags.aligned:
        return quantize_ptr(arr, bits=bits, group_size=group_size)
    return quantize_copy(arr, bits=bits, group_size=group_size)


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    skip: Sequence[str] = (),
    bits_for: Mapping[str, int] | Sequence[tuple[str, int]] = (),
    force: bool = False,
    progress: bool = False,
) -> Summary:
    """Quantizes a ``.safetensors`` file or sharded model directory into ``dst``.

    Copies: none for aligned tensors (read in place from the memory map);
    misaligned ones go through :func:`quantize_copy`. Memory: one tensor's
    outputs at a time plus the mapped pages of that tensor, released after.
    ``dst`` is written to a temporary file and renamed at the end; an error
    leaves no output. Returns a :class:`Summary`.
    """
    t0 = time.perf_counter()
    with Checkpoint(src) as ckpt:
        plans = plan_tensors(ckpt, bits=bits, group_size=group_size, skip=skip, bits_for=bits_for)
        outputs = [o for p in plans for o in _outputs(p)]
        summary = Summary(input_bytes=ckpt.nbytes)
        bar = Progress(len(plans), ckpt.nbytes, progress)
        with writing(dst, outputs, _metadata(plans, bits, group_size, ckpt.metadata), force=force) as w:
            for p in plans:
                arr = ckpt.array(p.name)
                if p.bits is None:
                    w.write(p.name, arr)
                    summary.kept += 1
                    summary.kept_reasons[p.name] = p.kept_because or ""
                else:
                    try:
                        qt = quantize_array(arr, p.bits, p.group_size)
                    except QuantizeError as exc:
                        raise type(exc)(f"tensor {p.name!r}: {exc}") from None
                    for part in PARTS:
                        w.write(f"{p.name}.{part}", getattr(qt, part))
                    summary.quantized += 1
                del arr
                ckpt.release(p.name)
                bar.update(p.nbytes)
        bar.close()
    summary.output_bytes = sum(o.nbytes for o in outputs)
    summary.seconds = time.perf_counter() - t0
    return summary


class QuantizedCheckpoint:
    """A pyquant checkpoint opened for reading; arrays are views on the map."""

    def __init__(self, path: str | os.PathLike[str]):
        self.file = SafetensorsFile(path)
        meta = self.file.metadata
        if meta.get("format") != FORMAT:
            self.file.close()
            raise CheckpointError(f"{self.file.path}: not a pyquant checkpoint (no format=pyquant metadata)")
        if meta.get("pyquant.format_version") != FORMAT_VERSION:
            self.file.close()
            raise CheckpointError(
                f"{self.file.path}: pyquant checkpoint format {meta.get('pyquant.format_version')!r}, "
                f"this pyquant reads format {FORMAT_VERSION}"
            )
        try:
            self.quantized: dict[str, dict[str, Any]] = json.loads(meta["pyquant.tensors"])
        except (KeyError, ValueError) as exc:
            self.file.close()
            raise CheckpointError(f"{self.file.path}: corrupt pyquant.tensors metadata ({exc})") from None
        parts = {f"{n}.{p}" for n in self.quantized for p in PARTS}
        missing = sorted(parts - self.file.tensors.keys())
        if missing:
            self.file.close()
            raise CheckpointError(f"{self.file.path}: metadata names {missing[0]!r}, which the file lacks")
        self.kept = [n for n in self.file.tensors if n not in parts]

    def __enter__(self) -> QuantizedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def names(self) -> list[str]:
        """Tensor names of the original checkpoint, in file order."""
        seen = dict.fromkeys(list(self.quantized) + self.kept)
        return list(seen)

    def get(self, name: str) -> QuantizedTensor | np.ndarray[Any, Any]:
        if name not in self.quantized:
            return self.file.array(name)
        m = self.quantized[name]
        arrays = {}
        for part in PARTS:
            a = self.file.array(f"{name}.{part}")
            # Views on a read-only map may be misaligned in hand-made files; copy then.
            arrays[part] = a if a.flags.aligned else a.copy()
        return QuantizedTensor(**arrays, shape=tuple(m["shape"]), dtype=m["dtype"],
                               bits=int(m["bits"]), group_size=int(m["group_size"]))

    def release(self, name: str) -> None:
        for n in ([f"{name}.{p}" for p in PARTS] if name in self.quantized else [name]):
            self.file.release(n)


def load_quantized(path: str | os.PathLike[str]) -> dict[str, QuantizedTensor | np.ndarray[Any, Any]]:
    """All tensors of a pyquant checkpoint: QuantizedTensor for quantized ones,
    numpy arrays for carried-over ones. Arrays are read-only views on the
    memory-mapped file (no copy); the map lives as long as they do."""
    with QuantizedCheckpoint(path) as q:
        return {name: q.get(name) for name in q.names()}


def dequantize_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                    force: bool = False, progress: bool = False) -> Summary:
    """Writes a plain safetensors checkpoint with every tensor in its original
    dtype and shape, one tensor at a time; same temp-file-then-rename rule."""
    t0 = time.perf_counter()
    with QuantizedCheckpoint(src) as q:
        names = q.names()
        outputs = []
        for n in names:
            if n in q.quantized:
                m = q.quantized[n]
                outputs.append(OutputTensor(n, CODE_OF[m["dtype"]], tuple(m["shape"])))
            else:
                info = q.file.tensors[n]
                outputs.append(OutputTensor(n, info.dtype, info.shape))
        source = json.loads(q.file.metadata.get("pyquant.source_metadata", "{}"))
        summary = Summary(input_bytes=q.file.size)
        bar = Progress(len(names), sum(o.nbytes for o in outputs), progress, label="dequantizing")
        with writing(dst, outputs, source, force=force) as w:
            for n, o in zip(names, outputs):
                t = q.get(n)
                if isinstance(t, QuantizedTensor):
                    w.write(n, t.dequantize())
                    summary.quantized += 1
                else:
                    w.write(n, t)
                    summary.kept += 1
                del t
                q.release(n)
                bar.update(o.nbytes)
        bar.close()
    summary.output_bytes = sum(o.nbytes for o in outputs)
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass(frozen=True)
class TensorReport:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bits: int | None  # None: carried over
    stats: ErrorStats


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
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bits": t.bits, **t.stats.as_dict()}
                for t in self.tensors
            ],
            "summary": self.summary(),
        }


def error_report(original: str | os.PathLike[str], quantized: str | os.PathLike[str]) -> Report:
    """Per-tensor error statistics of a quantized checkpoint against its original."""
    rows = []
    with Checkpoint(original) as ckpt, QuantizedCheckpoint(quantized) as q:
        names = q.names()
        missing = sorted(set(ckpt.names()) ^ set(names))
        if missing:
            raise CheckpointError(f"the checkpoints hold different tensors (e.g. {missing[0]!r})")
        for n in names:
            x = ckpt.array(n)
            t = q.get(n)
            if isinstance(t, QuantizedTensor):
                rows.append(TensorReport(n, t.shape, t.dtype, t.bits, error_stats(x, t.dequantize("float32"))))
            else:
                same = x.shape == t.shape and x.tobytes() == t.tobytes()
                if not same:
                    raise CheckpointError(f"carried-over tensor {n!r} differs from the original")
                stats = ErrorStats(0.0, 0.0, 0.0, 1.0, math.inf)
                rows.append(TensorReport(n, tuple(x.shape), str(x.dtype), None, stats))
            del x, t
            ckpt.release(n)
            q.release(n)
    return Report(rows)


@dataclass(frozen=True)
class InspectRow:
    name: str
    dtype: str
    shape: tuple[int, ...]
    bits: int | None
    group_size: int | None
    stored_bytes: int
    original_bytes: int


def inspect(path: str | os.PathLike[str]) -> tuple[list[InspectRow], dict[str, str]]:
    """What a checkpoint (plain or quantized) holds, tensor by tensor."""
    rows = []
    with Checkpoint(path) as ckpt:
        meta = ckpt.metadata
        quantized = json.loads(meta.get("pyquant.tensors", "{}")) if meta.get("format") == FORMAT else {}
        parts = {f"{n}.{p}" for n in quantized for p in PARTS}
        for n, m in quantized.items():
            stored = sum(ckpt.info(f"{n}.{p}").nbytes for p in PARTS if f"{n}.{p}" in ckpt.where)
            orig = math.prod(m["shape"]) * DTYPES[CODE_OF[m["dtype"]]].itemsize
            rows.append(InspectRow(n, m["dtype"], tuple(m["shape"]), m["bits"], m["group_size"], stored, orig))
        for n in ckpt.names():
            if n not in parts:
                info = ckpt.info(n)
                rows.append(InspectRow(n, str(DTYPES[info.dtype]), info.shape, None, None, info.nbytes, info.nbytes))
    return rows, meta


def parse_bits_for(items: Iterable[str]) -> list[tuple[str, int]]:
    """``PATTERN=BITS`` strings (CLI ``--bits-for``) as (pattern, bits) pairs."""
    out = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern or not value.isdigit():
            raise QuantizeError(f"--bits-for expects PATTERN=BITS, got {item!r}")
        _regex(pattern, "--bits-for")
        out.append((pattern, int(value)))
    return out

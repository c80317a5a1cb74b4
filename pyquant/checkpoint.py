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

from .core import SUPPORTED_DTYPES, QuantizedTensor, quantize_batch, quantize_copy, quantized_layout
from .errors import InvalidBitsError, QuantizeError
from .metrics import ErrorStats, error_stats
from ._atomic import atomic_output
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
    """What :func:`quantize_file` or :func:`dequantize_file` did: tensors
    quantized (or dequantized) and kept, bytes in and out, seconds."""

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
        base = (name, info.dtype, info.shape, info.nbytes)
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
            plans.append(Plan(*base, kept_because=reason))
            continue
        b = next((b for r, b in rules if r.search(name)), bits)
        try:
            _, _, b, g = quantized_layout(info.shape, b, group_size)
        except InvalidBitsError as exc:
            raise InvalidBitsError(f"tensor {name!r}: {exc}") from None
        except QuantizeError as exc:
            # A shape that doesn't fit the group size is carried over, not lost.
            plans.append(Plan(*base, kept_because=f"does not fit: {exc}"))
            continue
        plans.append(Plan(*base, bits=b, group_size=g))
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


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    format: str = "safetensors",
    skip: Sequence[str] = (),
    bits_for: Mapping[str, int] | Sequence[tuple[str, int]] = (),
    force: bool = False,
    progress: bool = False,
) -> Summary:
    """Quantizes a ``.safetensors`` file or sharded model directory into ``dst``.

    ``format`` is ``"safetensors"`` (see the module docstring) or ``"arrow"``
    (an Arrow IPC file in the Arrow path's schema, one row per tensor, see
    :class:`ArrowQuantizedCheckpoint`). Copies: none for aligned tensors
    (read in place from the memory map); misaligned ones go through
    :func:`quantize_copy`. Parallelism: consecutive tensors are quantized
    together by :func:`quantize_batch` on all cores, in runs of at most the
    largest tensor's size. Memory: one such run's mapped pages and outputs
    at a time, released after. ``dst`` is written to a
    temporary file and renamed at the end; an error leaves no output.

    Raises CheckpointError (bad or missing input, an existing ``dst``
    without ``force``, an unwritable output, name clashes), InvalidBitsError
    and InvalidGroupSizeError, and NonFiniteError naming the tensor.
    """
    if format not in ("safetensors", "arrow"):
        raise QuantizeError(f"format must be 'safetensors' or 'arrow', got {format!r}")
    t0 = time.perf_counter()
    with Checkpoint(src) as ckpt:
        plans = plan_tensors(ckpt, bits=bits, group_size=group_size, skip=skip, bits_for=bits_for)
        outputs = [o for p in plans for o in _outputs(p)]
        metadata = _metadata(plans, bits, group_size, ckpt.metadata)
        summary = Summary(input_bytes=ckpt.nbytes, output_bytes=sum(o.nbytes for o in outputs))
        bar = Progress(len(plans), ckpt.nbytes, progress)
        sink = (_ArrowSink(dst, metadata, force, ckpt.paths) if format == "arrow"
                else _SafetensorsSink(dst, outputs, metadata, force, ckpt.paths))
        # Quantizable tensors go to quantize_batch in runs of consecutive
        # tensors up to the largest tensor's size: small tensors share a call
        # (all cores busy), and no more than about one large tensor's pages
        # are mapped in at a time (bounded memory).
        limit = max((p.nbytes for p in plans if p.bits is not None), default=0)
        pending: list[Plan] = []

        def flush() -> None:
            arrays = {p.name: ckpt.array(p.name) for p in pending}
            params: dict[str, tuple[int, int | None]] = {
                p.name: (p.bits, p.group_size) for p in pending if p.bits is not None  # all of them
            }
            for name, qt in quantize_batch(arrays, params=params).items():
                sink.quantized(name, qt)
            del arrays
            for p in pending:
                ckpt.release(p.name)
                summary.quantized += 1
                bar.update(p.nbytes)
            pending.clear()

        with sink:
            for p in plans:
                if p.bits is None:
                    sink.keep(p.name, ckpt.array(p.name))
                    ckpt.release(p.name)
                    summary.kept += 1
                    summary.kept_reasons[p.name] = p.kept_because or ""
                    bar.update(p.nbytes)
                    continue
                if pending and sum(q.nbytes for q in pending) + p.nbytes > limit:
                    flush()
                if ckpt.array(p.name).flags.aligned:
                    pending.append(p)
                    continue
                # A misaligned tensor (possible in hand-made files) takes the copy path.
                try:
                    qt = quantize_copy(ckpt.array(p.name), bits=p.bits, group_size=p.group_size)
                except QuantizeError as exc:
                    raise type(exc)(f"tensor {p.name!r}: {exc}") from None
                sink.quantized(p.name, qt)
                ckpt.release(p.name)
                summary.quantized += 1
                bar.update(p.nbytes)
            if pending:
                flush()
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


class _SafetensorsSink:
    def __init__(self, dst: Any, outputs: list[OutputTensor], metadata: dict[str, str], force: bool,
                 inputs: list[str]):
        self._cm = writing(dst, outputs, metadata, force=force, inputs=inputs)

    def __enter__(self) -> _SafetensorsSink:
        self._w = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)

    def keep(self, name: str, arr: np.ndarray[Any, Any]) -> None:
        self._w.write(name, arr)

    def quantized(self, name: str, qt: QuantizedTensor) -> None:
        for part in PARTS:
            self._w.write(f"{name}.{part}", getattr(qt, part))


class _ArrowSink:
    """Writes one record batch per tensor, in the Arrow path's schema; the
    numpy outputs become Arrow buffers without a copy."""

    def __init__(self, dst: Any, metadata: dict[str, str], force: bool, inputs: list[str]):
        from .arrow import _pyarrow, quantized_schema

        self.pa = _pyarrow()
        import pyarrow.ipc  # noqa: F401

        self.schema = quantized_schema().with_metadata(metadata)
        self._cm = atomic_output(dst, overwrite=force, inputs=inputs)

    def __enter__(self) -> _ArrowSink:
        tmp = self._cm.__enter__()
        self._sink = self.pa.OSFile(tmp, "wb")
        self._writer = self.pa.ipc.new_file(self._sink, self.schema)
        return self

    def __exit__(self, *exc: Any) -> Any:
        try:
            self._writer.close()
            self._sink.close()
        except BaseException:
            if exc[0] is None:
                raise
        return self._cm.__exit__(*exc)

    def _row(self, name: str, raw: np.ndarray[Any, Any], scales: np.ndarray[Any, Any], mins: np.ndarray[Any, Any],
             shape: tuple[int, ...], dtype: str, bits: int, group_size: int) -> None:
        pa = self.pa
        raw = raw.reshape(-1).view(np.uint8)
        codes = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, raw.size], np.int64)), pa.py_buffer(raw)])

        def floats(a: np.ndarray[Any, Any]) -> Any:
            return pa.ListArray.from_arrays(pa.array([0, a.size], pa.int32()), pa.array(a.reshape(-1)))

        columns = [pa.array([name]), codes, floats(scales), floats(mins),
                   pa.array([list(shape)], pa.list_(pa.int64())), pa.array([dtype]),
                   pa.array([bits], pa.uint8()), pa.array([group_size], pa.uint32())]
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def keep(self, name: str, arr: np.ndarray[Any, Any]) -> None:
        empty = np.empty(0, np.float32)
        self._row(name, np.ascontiguousarray(arr), empty, empty, arr.shape, str(arr.dtype), 0, 0)

    def quantized(self, name: str, qt: QuantizedTensor) -> None:
        self._row(name, qt.codes, qt.scales, qt.mins, qt.shape, qt.dtype, qt.bits, qt.group_size)


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
        self.size = self.file.size
        self.source_metadata: dict[str, str] = json.loads(meta.get("pyquant.source_metadata", "{}"))

    def kept_info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype code, shape) of a carried-over tensor."""
        info = self.file.tensors[name]
        return info.dtype, info.shape

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


ARROW_MAGIC = b"ARROW1"


class ArrowQuantizedCheckpoint:
    """A checkpoint written with ``format="arrow"``: an Arrow IPC file in the
    Arrow path's schema (:func:`pyquant.quantized_schema`), one tensor per
    row; a row with ``bits == 0`` is a carried-over tensor whose ``codes``
    hold its raw little-endian bytes. Same interface as
    :class:`QuantizedCheckpoint`; arrays are views on the memory map."""

    def __init__(self, path: str | os.PathLike[str]):
        from .arrow import _pyarrow

        pa = _pyarrow()
        import pyarrow.ipc  # noqa: F401

        self.path = os.fspath(path)
        try:
            self._map = pa.memory_map(self.path, "r")
            self._reader = pa.ipc.open_file(self._map)
            schema = self._reader.schema
        except (OSError, pa.ArrowInvalid) as exc:
            raise CheckpointError(f"{self.path}: not a readable Arrow IPC file ({exc})") from None
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        if meta.get("format") != FORMAT or meta.get("pyquant.format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: not a pyquant checkpoint (format {FORMAT} {FORMAT_VERSION})")
        self.size = os.path.getsize(self.path)
        self.source_metadata = json.loads(meta.get("pyquant.source_metadata", "{}"))
        self.quantized: dict[str, dict[str, Any]] = {}
        self.kept: list[str] = []
        self._rows: dict[str, tuple[int, int]] = {}
        self._kept_meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        for b in range(self._reader.num_record_batches):
            batch = self._reader.get_batch(b)
            cols = batch.select(["name", "shape", "dtype", "bits", "group_size"]).to_pydict()
            for r, name in enumerate(cols["name"]):
                self._rows[name] = (b, r)
                shape, dtype, bits = tuple(cols["shape"][r]), cols["dtype"][r], cols["bits"][r]
                if bits == 0:
                    self.kept.append(name)
                    self._kept_meta[name] = (CODE_OF[dtype], shape)
                else:
                    self.quantized[name] = {"dtype": dtype, "shape": list(shape), "bits": bits,
                                            "group_size": cols["group_size"][r]}

    def __enter__(self) -> ArrowQuantizedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader = None
        self._map.close()

    def names(self) -> list[str]:
        return list(self._rows)

    def kept_info(self, name: str) -> tuple[str, tuple[int, ...]]:
        return self._kept_meta[name]

    def get(self, name: str) -> QuantizedTensor | np.ndarray[Any, Any]:
        b, r = self._rows[name]
        row = self._reader.get_batch(b).slice(r, 1)
        raw = row.column("codes")
        # large_binary: buffers are [validity, int64 offsets, data]; slice the data by the offsets.
        offsets = np.frombuffer(raw.buffers()[1], np.int64)[raw.offset: raw.offset + 2]
        data = np.frombuffer(raw.buffers()[2], np.uint8)[offsets[0]:offsets[1]]
        if name in self._kept_meta:
            code, shape = self._kept_meta[name]
            return data.view(DTYPES[code]).reshape(shape)
        m = self.quantized[name]
        codes_shape, groups_shape, _, _ = quantized_layout(tuple(m["shape"]), m["bits"], m["group_size"])
        groups = {p: row.column(p).flatten().to_numpy(zero_copy_only=True).reshape(groups_shape)
                  for p in ("scales", "mins")}
        return QuantizedTensor(codes=data.reshape(codes_shape), **groups, shape=tuple(m["shape"]),
                               dtype=m["dtype"], bits=int(m["bits"]), group_size=int(m["group_size"]))

    def release(self, name: str) -> None:
        """Nothing to do: pyarrow's memory map is read on demand per row."""


def open_quantized(path: str | os.PathLike[str]) -> QuantizedCheckpoint | ArrowQuantizedCheckpoint:
    """Opens a pyquant checkpoint in either format (told apart by the Arrow magic)."""
    return ArrowQuantizedCheckpoint(path) if _is_arrow(path) else QuantizedCheckpoint(path)

def load_quantized(path: str | os.PathLike[str]) -> dict[str, QuantizedTensor | np.ndarray[Any, Any]]:
    """All tensors of a pyquant checkpoint (either format): QuantizedTensor
    for quantized ones, numpy arrays for carried-over ones.

    Copies: none; arrays are read-only views on the memory-mapped file, and
    the map lives as long as they do (pages are read on first touch).
    Parallelism: none (no native call; dequantize the results to compute).
    Raises CheckpointError for a missing, malformed or non-pyquant file.
    """
    with open_quantized(path) as q:
        return {name: q.get(name) for name in q.names()}


def dequantize_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                    force: bool = False, progress: bool = False) -> Summary:
    """Writes a plain safetensors checkpoint with every tensor in its original
    dtype and shape, from a pyquant checkpoint in either format; returns a
    :class:`Summary`.

    Copies: inputs are read in place from the memory map; each dequantized
    tensor is one output-sized array, written then freed, so memory follows
    the largest tensor. Parallelism: one tensor at a time, each dequantized
    by one native call on all cores with the GIL released. ``dst`` is written
    to a temporary file and renamed at the end (an existing ``dst`` needs
    ``force=True``). Raises CheckpointError (bad input, existing or
    unwritable output) and the errors of :func:`dequantize`.
    """
    t0 = time.perf_counter()
    with open_quantized(src) as q:
        names = q.names()
        outputs = []
        for n in names:
            if n in q.quantized:
                m = q.quantized[n]
                outputs.append(OutputTensor(n, CODE_OF[m["dtype"]], tuple(m["shape"])))
            else:
                outputs.append(OutputTensor(n, *q.kept_info(n)))
        source = q.source_metadata
        summary = Summary(input_bytes=q.size)
        bar = Progress(len(names), sum(o.nbytes for o in outputs), progress, label="dequantizing")
        with writing(dst, outputs, source, force=force, inputs=[os.fspath(src)]) as w:
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
    """Per-tensor error statistics of a quantized checkpoint against its
    original (max abs, RMSE, relative RMSE, cosine, SNR); see
    :meth:`Report.summary` for the totals.

    Copies: both files are memory-mapped; each quantized tensor is
    dequantized to one float32 array, compared and freed, one tensor at a
    time. Parallelism: each dequantization is one native call on all cores;
    the statistics are numpy on the calling thread. Raises CheckpointError
    when the files hold different tensors, a carried-over tensor differs, or
    a file is bad.
    """
    rows = []
    with Checkpoint(original) as ckpt, open_quantized(quantized) as q:
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
    """What a checkpoint (plain safetensors, or pyquant in either format) holds."""
    rows = []
    if _is_arrow(path):
        with ArrowQuantizedCheckpoint(path) as q:
            for n in q.names():
                if n in q.quantized:
                    m = q.quantized[n]
                    codes, groups, _, _ = quantized_layout(tuple(m["shape"]), m["bits"], m["group_size"])
                    rows.append(_quantized_row(n, m, math.prod(codes) + 8 * math.prod(groups)))
                else:
                    rows.append(_kept_row(n, *q.kept_info(n)))
        return rows, {"format": FORMAT, "pyquant.container": "arrow"}
    with Checkpoint(path) as ckpt:
        meta = ckpt.metadata
        quantized = json.loads(meta.get("pyquant.tensors", "{}")) if meta.get("format") == FORMAT else {}
        parts = {f"{n}.{p}" for n in quantized for p in PARTS}
        for n, m in quantized.items():
            rows.append(_quantized_row(n, m, sum(ckpt.info(f"{n}.{p}").nbytes for p in PARTS if f"{n}.{p}" in ckpt.where)))
        for n in ckpt.names():
            if n not in parts:
                info = ckpt.info(n)
                rows.append(_kept_row(n, info.dtype, info.shape))
    return rows, meta


def _quantized_row(name: str, m: Mapping[str, Any], stored: int) -> InspectRow:
    """An inspect row from a quantized tensor's metadata and its stored bytes."""
    orig = math.prod(m["shape"]) * DTYPES[CODE_OF[m["dtype"]]].itemsize
    return InspectRow(name, m["dtype"], tuple(m["shape"]), m["bits"], m["group_size"], stored, orig)


def _kept_row(name: str, code: str, shape: tuple[int, ...]) -> InspectRow:
    """An inspect row for a carried-over tensor (safetensors dtype code)."""
    nbytes = math.prod(shape) * DTYPES[code].itemsize
    return InspectRow(name, str(DTYPES[code]), shape, None, None, nbytes, nbytes)


def _is_arrow(path: str | os.PathLike[str]) -> bool:
    if os.path.isdir(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(ARROW_MAGIC)) == ARROW_MAGIC
    except OSError:
        return False  # the safetensors reader reports it properly


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

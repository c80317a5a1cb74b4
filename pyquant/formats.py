"""The quantized checkpoint formats: the only code that knows how quantized
tensors are laid out in a file.

A safetensors checkpoint holds, per quantized tensor ``NAME``, the tensors
``NAME.codes`` (U8), ``NAME.scales`` (F32) and ``NAME.mins`` (F32); every
other tensor is carried over unchanged. Its metadata says which is which:
``format = "pyquant"``, ``pyquant.format_version`` (:data:`FORMAT_VERSION`),
``pyquant.bits``, ``pyquant.group_size``, ``pyquant.tensors`` (JSON: name ->
dtype, shape, bits, group_size of each quantized tensor) and
``pyquant.source_metadata`` (the input's metadata, JSON).

An Arrow checkpoint is an Arrow IPC file in the Arrow path's schema
(:func:`pyquant.quantized_schema`), one tensor per row, with the same
metadata keys in its schema; a row with ``bits = 0`` is a carried-over tensor
whose ``codes`` hold its raw little-endian bytes.

Writers (sinks) take tensors one at a time; readers hand out views on a
memory map.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from ._atomic import atomic_output
from .core import QuantizedTensor, quantized_layout
from ._text import quoted
from .errors import CheckpointError
from .plan import QUANTIZABLE, Plan
from .safetensors_io import CODE_OF, DTYPES, Checkpoint, OutputTensor, SafetensorsFile, writing

FORMAT = "pyquant"
FORMAT_VERSION = "1"
PARTS = ("codes", "scales", "mins")
ARROW_MAGIC = b"ARROW1"
FORMATS = ("safetensors", "arrow")


def check_clashes(plans: list[Plan], names: Mapping[str, Any]) -> None:
    """CheckpointError if a quantized tensor's parts would take the name of
    an input tensor (``NAME.codes`` existing beside a quantized ``NAME``)."""
    for p in plans:
        if p.bits is not None:
            for part in PARTS:
                if f"{p.name}.{part}" in names:
                    raise CheckpointError(f"tensor {p.name}.{part} would clash with the quantized {p.name!r}")


def refuse_quantized_input(ckpt: Checkpoint) -> None:
    """CheckpointError if ``ckpt`` is already a pyquant checkpoint: by its
    metadata, or (metadata stripped) by a tensor stored as NAME.codes (U8)
    beside NAME.scales and NAME.mins (F32). Quantizing it again would
    quantize the scales and mins. (GGUF and Arrow files are refused by the
    safetensors reader.)"""
    for f in ckpt.files:
        if f.metadata.get("format") == FORMAT:
            raise CheckpointError(f"{f.path}: already a pyquant checkpoint; quantize the original model "
                                  "(or `pyquant dequantize` this one first)")
    for name in ckpt.names():
        if name.endswith(".codes") and ckpt.info(name).dtype == "U8":
            base = name[: -len(".codes")]
            if all(ckpt.where.get(f"{base}.{p}") and ckpt.info(f"{base}.{p}").dtype == "F32" for p in ("scales", "mins")):
                raise CheckpointError(f"{ckpt.path}: looks like a pyquant checkpoint (tensor {quoted(base)} is "
                                      "stored as .codes, .scales and .mins); quantize the original model")


def outputs(plan: Plan) -> list[OutputTensor]:
    """The safetensors tensors that hold ``plan``'s tensor in a checkpoint."""
    if plan.bits is None:
        return [OutputTensor(plan.name, plan.dtype, plan.shape)]
    codes, groups, _, _ = quantized_layout(plan.shape, plan.bits, plan.group_size)
    return [
        OutputTensor(f"{plan.name}.codes", "U8", codes),
        OutputTensor(f"{plan.name}.scales", "F32", groups),
        OutputTensor(f"{plan.name}.mins", "F32", groups),
    ]


def metadata(plans: list[Plan], bits: int, group_size: int | None, source: Mapping[str, str]) -> dict[str, str]:
    """A checkpoint's metadata (either format)."""
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


class Sink(Protocol):
    """A checkpoint being written, one tensor at a time (a context manager:
    the file appears at ``dst`` only if the block completes)."""

    def __enter__(self) -> Sink: ...
    def __exit__(self, *exc: Any) -> Any: ...
    def keep(self, name: str, arr: np.ndarray[Any, Any]) -> None: ...
    def quantized(self, name: str, qt: QuantizedTensor) -> None: ...


def open_sink(format: str, dst: str | os.PathLike[str], plans: list[Plan], meta: dict[str, str],
              force: bool, inputs: Sequence[str] = ()) -> Sink:
    """A writer of a checkpoint in ``format`` holding the tensors of ``plans``;
    ``dst`` must not be one of ``inputs``."""
    if format == "arrow":
        return _ArrowSink(dst, meta, force, inputs)
    return _SafetensorsSink(dst, [o for p in plans for o in outputs(p)], meta, force, inputs)


class _SafetensorsSink:
    def __init__(self, dst: Any, outputs: list[OutputTensor], metadata: dict[str, str], force: bool,
                 inputs: Sequence[str]):
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

    def __init__(self, dst: Any, metadata: dict[str, str], force: bool, inputs: Sequence[str]):
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
    return ArrowQuantizedCheckpoint(path) if is_arrow(path) else QuantizedCheckpoint(path)


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


class StoredTensor(NamedTuple):
    """One original tensor as a checkpoint stores it (``bits`` None: carried over)."""

    name: str
    dtype: str  # numpy name of the original dtype
    shape: tuple[int, ...]
    bits: int | None
    group_size: int | None
    stored_bytes: int


def stored_tensors(path: str | os.PathLike[str]) -> tuple[list[StoredTensor], dict[str, str]]:
    """What a checkpoint (plain safetensors, or pyquant in either format)
    stores, per original tensor, and its metadata."""
    rows = []
    if is_arrow(path):
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


def _quantized_row(name: str, m: Mapping[str, Any], stored: int) -> StoredTensor:
    """A row from a quantized tensor's metadata and its stored bytes."""
    return StoredTensor(name, m["dtype"], tuple(m["shape"]), m["bits"], m["group_size"], stored)


def _kept_row(name: str, code: str, shape: tuple[int, ...]) -> StoredTensor:
    """A row for a carried-over tensor (safetensors dtype code)."""
    return StoredTensor(name, str(DTYPES[code]), shape, None, None, math.prod(shape) * DTYPES[code].itemsize)


def is_arrow(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an Arrow IPC file (by its magic bytes)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a directory, FIFO, device: never opened here (a FIFO would block)
        with open(path, "rb") as f:
            return f.read(len(ARROW_MAGIC)) == ARROW_MAGIC
    except OSError:
        return False  # the safetensors reader reports it properly

"""The quantized checkpoint formats: the only code that knows how quantized
tensors are laid out in a file.

A safetensors checkpoint holds, per quantized tensor ``NAME``, the tensors
``NAME.codes`` (U8), ``NAME.scales`` (F32) and ``NAME.mins`` (F32); every
other tensor is carried over unchanged. Its metadata says which is which:
``format = "pyquant"``, ``pyquant.format_version`` (:data:`FORMAT_VERSION`),
``pyquant.bits``, ``pyquant.group_size``, ``pyquant.tensors`` (JSON: name ->
dtype, shape, bits, group_size of each quantized tensor) and
``pyquant.source_metadata`` (the input's metadata, JSON) and ``pyquant.kept``
(JSON: reason -> names of the tensors carried over for that reason; absent
in checkpoints written before it was added, which still read). A checkpoint
quantized with another scheme than min-max with float32 scales also has
``pyquant.method`` (``"search"``) and ``pyquant.scale_dtype``; with
``"float16"`` its ``.scales`` and ``.mins`` are F16 (exactly the values
quantize chose the codes for). Without these keys (every older file): min-max,
F32. A checkpoint whose 2-D tensors were grouped down their columns
(``axis=0``) has ``pyquant.axis = "0"``: every quantized tensor of it is
stored as its transpose's codes, scales and mins (docs/scheme.md, "Axis"),
and its shape (in ``pyquant.tensors`` or from its codes) is reversed from
those. Files without the key are ``axis=-1``.

An Arrow checkpoint is an Arrow IPC file in the Arrow path's schema
(:func:`pyquant.quantized_schema` of its method, scale dtype and axis: with
``pyquant.axis = "0"`` its rows have an ``axis`` column), one tensor per row,
with the same metadata keys in its schema; a row with ``bits = 0`` is a
carried-over tensor whose ``codes`` hold its raw little-endian bytes.

Writers (sinks) take tensors one at a time; readers hand out views on a
memory map.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
import math
import mmap
import os
import stat
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from ._atomic import atomic_output
from .core import METHODS, SUPPORTED_DTYPES, QuantizedTensor, quantized_layout
from ._text import quoted, shown
from .dtypes import BY_NAME, BY_SAFETENSORS
from .errors import CheckpointError, QuantizeError
from .plan import BITS, Plan, check_options
from .safetensors_io import (CODE_OF, DTYPES, Checkpoint, OutputTensor, SafetensorsFile, brief as _brief, check_text,
                             check_not_shrunk, open_regular, writing)

FORMAT = "pyquant"
FORMAT_VERSION = "2"
READS = ("1", "2")  # format 1 listed every quantized tensor with its shape in pyquant.tensors
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
            if all(ckpt.where.get(f"{base}.{p}") and ckpt.info(f"{base}.{p}").dtype in ("F32", "F16")
                   for p in ("scales", "mins")):
                raise CheckpointError(f"{ckpt.path}: looks like a pyquant checkpoint (tensor {quoted(base)} is "
                                      "stored as .codes, .scales and .mins); quantize the original model")


# The safetensors dtype of scales and mins per scale dtype.
SCALE_CODES = {"float32": "F32", "float16": "F16"}


def scheme_of(meta: Mapping[str, str]) -> tuple[str, str]:
    """(method, scale_dtype) of a checkpoint's metadata; older files have neither key."""
    return meta.get("pyquant.method", "minmax"), meta.get("pyquant.scale_dtype", "float32")


def checked_scheme(path: str, meta: Mapping[str, str]) -> tuple[str, str]:
    """:func:`scheme_of` a checkpoint being read; CheckpointError for names pyquant never writes."""
    method, scale_dtype = scheme_of(meta)
    if method not in METHODS or scale_dtype not in SCALE_CODES:
        raise CheckpointError(f"{path}: corrupt metadata: pyquant.method {_brief(method)} or "
                              f"pyquant.scale_dtype {_brief(scale_dtype)}")
    return method, scale_dtype


def checked_axis(path: str, meta: Mapping[str, str]) -> int:
    """The axis of a checkpoint's quantized tensors (either format): -1 unless ``pyquant.axis`` is "0"."""
    text = meta.get("pyquant.axis", "-1")
    if text not in ("-1", "0"):
        raise CheckpointError(f"{path}: corrupt metadata: pyquant.axis {_brief(text)}")
    return int(text)


def outputs(plan: Plan, scale_dtype: str = "float32") -> list[OutputTensor]:
    """The safetensors tensors that hold ``plan``'s tensor in a checkpoint."""
    if plan.bits is None:
        return [OutputTensor(plan.name, plan.dtype, plan.shape)]
    codes, groups, _, _ = quantized_layout(plan.grouped_shape, plan.bits, plan.group_size)
    code = SCALE_CODES[scale_dtype]
    return [
        OutputTensor(f"{plan.name}.codes", "U8", codes),
        OutputTensor(f"{plan.name}.scales", code, groups),
        OutputTensor(f"{plan.name}.mins", code, groups),
    ]


def metadata(plans: list[Plan], bits: int, group_size: int | None, source: Mapping[str, str],
             method: str = "minmax", scale_dtype: str = "float32") -> dict[str, str]:
    """A checkpoint's metadata (either format), compact: a tensor's name is
    not repeated in the metadata unless its dtype, bits or group size differ
    from the defaults (its shape follows from its parts'), so the header
    stays about three times the input's even for long names."""
    quantized = [p for p in plans if p.bits is not None]
    counts = Counter(BY_SAFETENSORS[p.dtype].name for p in quantized)
    dtype = counts.most_common(1)[0][0] if counts else "float32"
    exceptions = {
        p.name: [BY_SAFETENSORS[p.dtype].name, p.bits, p.group_size]
        for p in quantized
        if (BY_SAFETENSORS[p.dtype].name, p.bits, p.group_size)
        != (dtype, bits, p.grouped_shape[-1] if group_size is None else group_size)
    }
    scheme = {} if (method, scale_dtype) == ("minmax", "float32") else {
        "pyquant.method": method, "pyquant.scale_dtype": scale_dtype}
    if any(p.axis == 0 for p in quantized):  # written only when not the default: older files stay byte-identical
        scheme["pyquant.axis"] = "0"
    return {
        "format": FORMAT,
        "pyquant.format_version": FORMAT_VERSION,
        **scheme,
        "pyquant.dtype": dtype,
        "pyquant.bits": str(bits),
        "pyquant.group_size": "row" if group_size is None else str(group_size),
        "pyquant.tensors": json.dumps(exceptions, separators=(",", ":")),
        "pyquant.source_metadata": json.dumps(dict(source), separators=(",", ":")),
        "pyquant.kept": json.dumps(kept_reasons(plans), separators=(",", ":")),
    }


def kept_reasons(plans: list[Plan]) -> dict[str, list[str]]:
    """Why each carried-over tensor was kept, as the checkpoint's
    ``pyquant.kept`` metadata stores it: reason -> names (compact: a
    handful of reasons for hundreds of norms and biases)."""
    out: dict[str, list[str]] = {}
    for p in plans:
        if p.bits is None:
            out.setdefault(p.kept_because or "", []).append(p.name)
    return out


NOT_RECORDED = "not recorded in this checkpoint (an older pyquant wrote it)"


def _kept_reasons(path: str, text: Any) -> dict[str, str]:
    """``pyquant.kept`` read back as name -> reason (empty if absent: an
    older checkpoint; callers then say :data:`NOT_RECORDED`)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = None
    if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in value.values()):
        raise CheckpointError(f"{path}: corrupt metadata: pyquant.kept must be a JSON object of string lists")
    out = {}
    for reason, names in value.items():
        check_text(path, reason)
        for n in names:
            out[n] = reason
    return out


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
    scale_dtype = scheme_of(meta)[1]
    return _SafetensorsSink(dst, [o for p in plans for o in outputs(p, scale_dtype)], meta, force, inputs)


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
        self._w.write(f"{name}.codes", qt.codes)
        for part in ("scales", "mins"):
            arr = getattr(qt, part)  # float16 values held as float32: narrowing is exact
            self._w.write(f"{name}.{part}", arr.astype(np.float16) if qt.scale_dtype == "float16" else arr)


class _ArrowSink:
    """Writes one record batch per tensor; the rows are built and checked by
    the Rust library (:func:`pyquant.arrow.quantized_row`), which owns the
    row format."""

    def __init__(self, dst: Any, metadata: dict[str, str], force: bool, inputs: Sequence[str]):
        from .arrow import _pyarrow, quantized_schema

        self.pa = _pyarrow()
        import pyarrow.ipc  # noqa: F401

        self.scheme = (*scheme_of(metadata), checked_axis(str(dst), metadata))  # every row's: one schema
        self.schema = quantized_schema(*self.scheme).with_metadata(metadata)
        self._cm = atomic_output(dst, force=force, inputs=inputs)

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

    def keep(self, name: str, arr: np.ndarray[Any, Any]) -> None:
        from .arrow import quantized_row

        empty = np.empty(0, np.float32)
        self._writer.write_batch(quantized_row(name, str(arr.dtype), arr.shape, 0, 0, arr, empty, empty, *self.scheme))

    def quantized(self, name: str, qt: QuantizedTensor) -> None:
        from .arrow import quantized_row

        self._writer.write_batch(
            quantized_row(name, qt.dtype, qt.shape, qt.bits, qt.group_size, qt.codes, qt.scales, qt.mins, *self.scheme))


def _layout(path: str, name: str, dtype: Any, shape: Any, bits: Any, group_size: Any, axis: int = -1
            ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(codes shape, groups shape) of a quantized tensor as a checkpoint
    describes it; CheckpointError if the description is not one pyquant
    could have written (wrong JSON types, unknown dtype, bad bits or group)."""
    where = f"{path}: tensor {quoted(name)}"
    if dtype not in SUPPORTED_DTYPES:
        raise CheckpointError(f"{where}: corrupt metadata: dtype {_brief(dtype)} is not one pyquant quantizes")
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise CheckpointError(f"{where}: corrupt metadata: shape {_brief(shape)}")
    for what, v in (("bits", bits), ("group_size", group_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise CheckpointError(f"{where}: corrupt metadata: {what} {_brief(v)}")
    try:
        check_options(bits, group_size)
        if axis == 0 and len(shape) != 2:
            raise QuantizeError(f"axis=0 is for 2-D tensors, shape {list(shape)}")
        codes, groups, _, _ = quantized_layout(tuple(shape[::-1]) if axis == 0 else tuple(shape), bits, group_size)
    except QuantizeError as exc:
        raise CheckpointError(f"{where}: corrupt metadata: {exc}") from None
    return codes, groups


def _checked(path: str, name: str, qt: QuantizedTensor) -> QuantizedTensor:
    """``qt`` if its scales and mins can be from pyquant (finite, scales not
    negative, every code decoding to a finite value); else CheckpointError,
    rather than silently wrong values."""
    scales, mins = qt.scales, qt.mins
    with np.errstate(over="ignore", invalid="ignore"):
        top = mins + scales * np.float32(2**qt.bits - 1)
    if not (np.isfinite(scales).all() and (scales >= 0).all() and np.isfinite(mins).all() and np.isfinite(top).all()):
        raise CheckpointError(f"{path}: tensor {quoted(name)}: scales or mins are NaN, infinite or negative "
                              "(a damaged or tampered file)")
    return qt


def _source_metadata(path: str, text: Any) -> dict[str, str]:
    """The input's metadata that ``dequantize`` restores: a JSON object of strings."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CheckpointError(f"{path}: corrupt metadata: pyquant.source_metadata must be a JSON object of strings")
    for v in (*value, *value.values()):
        check_text(path, v)
    return value


def _described_v1(path: str, listed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Format 1: pyquant.tensors maps every quantized tensor to its dtype, shape, bits and group_size."""
    if not all(isinstance(m, dict) for m in listed.values()):
        raise CheckpointError(f"{path}: corrupt metadata: pyquant.tensors must map names to objects")
    return {n: {k: m.get(k) for k in ("dtype", "shape", "bits", "group_size")} for n, m in listed.items()}


def _described(path: str, meta: Mapping[str, str], listed: dict[str, Any],
               tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Format 2: every NAME.codes (U8) beside NAME.scales and NAME.mins (F32)
    is a quantized NAME (inputs holding such a trio are refused, so nothing
    else is), with the default dtype, bits and group size unless
    pyquant.tensors gives [dtype, bits, group_size]; its shape is its
    codes' leading axes and the row length the codes hold."""
    bits_text, group_text = meta.get("pyquant.bits", ""), meta.get("pyquant.group_size", "")
    if not bits_text.isdigit() or not (group_text == "row" or group_text.isdigit()):
        raise CheckpointError(f"{path}: corrupt metadata: pyquant.bits {_brief(bits_text)} or "
                              f"pyquant.group_size {_brief(group_text)}")
    default = [meta.get("pyquant.dtype"), int(bits_text), None if group_text == "row" else int(group_text)]
    code = SCALE_CODES.get(scheme_of(meta)[1])
    trios = [n[: -len(".codes")] for n, info in tensors.items()
             if n.endswith(".codes") and info.dtype == "U8"
             and all(getattr(tensors.get(n[: -len("codes")] + p), "dtype", None) == code for p in ("scales", "mins"))]
    unknown = sorted(set(listed) - set(trios))
    if unknown:
        raise CheckpointError(f"{path}: metadata names {quoted(unknown[0])}, whose codes, scales and mins the file lacks")
    out = {}
    for n in trios:
        entry = listed.get(n, default)
        if not isinstance(entry, list) or len(entry) != 3:
            raise CheckpointError(f"{path}: tensor {quoted(n)}: corrupt metadata {_brief(entry)} "
                                  "(expected [dtype, bits, group_size])")
        dtype, bits, group = entry
        codes = tensors[f"{n}.codes"].shape
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS or not codes:
            raise CheckpointError(f"{path}: tensor {quoted(n)}: corrupt metadata: bits {_brief(bits)}")
        row = codes[-1] * 8 // bits
        shape = [*codes[:-1], row]  # with axis 0, the transpose's
        out[n] = {"dtype": dtype, "shape": shape[::-1] if checked_axis(path, meta) == 0 else shape, "bits": bits,
                  "group_size": row if group is None else group}
    return out


class QuantizedCheckpoint:
    """A pyquant checkpoint opened for reading; arrays are views on the map.
    Everything the metadata says is checked against the tensors on opening
    (a tampered file is a CheckpointError, never wrong values)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.file = SafetensorsFile(path)
        try:
            self._read()
        except BaseException:
            self.file.close()
            raise

    def _read(self) -> None:
        path, meta = self.file.path, self.file.metadata
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a pyquant checkpoint (no format=pyquant metadata)")
        version = meta.get("pyquant.format_version")
        if version not in READS:
            raise CheckpointError(f"{path}: pyquant checkpoint format {_brief(version)}, "
                                  f"this pyquant reads formats {', '.join(READS)}")
        try:
            listed = json.loads(meta["pyquant.tensors"])
        except KeyError:
            raise CheckpointError(f"{path}: corrupt metadata: no pyquant.tensors") from None
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: corrupt metadata: pyquant.tensors is not valid JSON") from None
        if not isinstance(listed, dict):
            raise CheckpointError(f"{path}: corrupt metadata: pyquant.tensors must be a JSON object")
        tensors = self.file.tensors
        self.method, self.scale_dtype = checked_scheme(path, meta)
        self.axis = checked_axis(path, meta)
        scale_code = SCALE_CODES[self.scale_dtype]
        quantized = _described_v1(path, listed) if version == "1" else _described(path, meta, listed, tensors)
        self.quantized: dict[str, dict[str, Any]] = quantized
        for n, m in quantized.items():
            check_text(path, n)
            codes, groups = _layout(path, n, m["dtype"], m["shape"], m["bits"], m["group_size"], self.axis)
            for part, code, shape in (("codes", "U8", codes), ("scales", scale_code, groups), ("mins", scale_code, groups)):
                info = tensors.get(f"{n}.{part}")
                if info is None:
                    raise CheckpointError(f"{path}: metadata names {quoted(f'{n}.{part}')}, which the file lacks")
                if (info.dtype, info.shape) != (code, shape):
                    raise CheckpointError(
                        f"{path}: tensor {quoted(n)}: {part} is {info.dtype} {list(info.shape)}, but its metadata "
                        f"(shape {m['shape']}, {m['bits']} bits, group size {m['group_size']}) needs {code} {list(shape)}")
        parts = {f"{n}.{p}" for n in quantized for p in PARTS}
        self.kept = [n for n in tensors if n not in parts]
        clash = next((n for n in self.kept if n in quantized), None)
        if clash is not None:
            raise CheckpointError(f"{path}: tensor {quoted(clash)} is both quantized and carried over")
        self.size = self.file.size
        self.source_metadata = _source_metadata(path, meta.get("pyquant.source_metadata", "{}"))
        self.kept_reasons = _kept_reasons(path, meta.get("pyquant.kept"))

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
        arrays: dict[str, Any] = {}
        for part in PARTS:
            a = self.file.array(f"{name}.{part}")
            # Views on a read-only map may be misaligned in hand-made files; copy then.
            # Float16 scales and mins widen exactly to the float32 dequantize reads.
            arrays[part] = a.astype(np.float32) if a.dtype == np.float16 else a if a.flags.aligned else a.copy()
        return _checked(self.file.path, name, QuantizedTensor(
            **arrays, shape=tuple(m["shape"]), dtype=m["dtype"], bits=int(m["bits"]), group_size=int(m["group_size"]),
            method=self.method, scale_dtype=self.scale_dtype, axis=self.axis))

    def release(self, name: str) -> None:
        for n in ([f"{name}.{p}" for p in PARTS] if name in self.quantized else [name]):
            self.file.release(n)


class ArrowQuantizedCheckpoint:
    """A checkpoint written with ``format="arrow"``: an Arrow IPC file in the
    Arrow path's schema (:func:`pyquant.quantized_schema`), one tensor per
    row; a row with ``bits == 0`` is a carried-over tensor whose ``codes``
    hold its raw little-endian bytes. Same interface as
    :class:`QuantizedCheckpoint`; arrays are views on the memory map, whose
    pages :meth:`release` gives back (bounded memory, as for safetensors).
    Every row is checked on opening (schema, nulls, duplicate names, dtype,
    bits, group size, and the lengths of codes, scales and mins)."""

    def __init__(self, path: str | os.PathLike[str]):
        from .arrow import _pyarrow, check_quantized

        pa = _pyarrow()
        import pyarrow.ipc  # noqa: F401

        self.path = os.fspath(path)
        fd, st = open_regular(self.path)
        self._fd = fd  # kept for the shrink check before each tensor
        try:
            self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if st.st_size else None
        except OSError as exc:
            os.close(fd)
            raise CheckpointError(f"{self.path}: cannot map: {exc.strerror}") from None
        try:
            if self._mmap is None:
                raise CheckpointError(f"{self.path}: empty file, not an Arrow IPC file")
            self._reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._mmap)))
            self._read(check_quantized)
        except pa.ArrowException as exc:
            self.close()
            raise CheckpointError(f"{self.path}: not a readable pyquant Arrow file ({shown(str(exc), 200)})") from None
        except BaseException:
            self.close()
            raise

    def _read(self, check_quantized: Any) -> None:
        from .arrow import quantized_schema

        path, schema = self.path, self._reader.schema
        try:
            meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        except UnicodeDecodeError:
            raise CheckpointError(f"{path}: corrupt metadata: not UTF-8 text") from None
        if meta.get("format") != FORMAT or meta.get("pyquant.format_version") not in READS:
            raise CheckpointError(f"{path}: not a pyquant checkpoint (format {FORMAT} {', '.join(READS)})")
        self.method, self.scale_dtype = checked_scheme(path, meta)
        self.axis = checked_axis(path, meta)
        if not schema.remove_metadata().equals(quantized_schema(self.method, self.scale_dtype, self.axis)):
            raise CheckpointError(f"{path}: corrupt checkpoint: its columns are not pyquant's Arrow schema "
                                  "(name, codes, scales, mins, shape, dtype, bits, group_size[, method][, axis]) "
                                  f"for method {self.method}, scale_dtype {self.scale_dtype} and axis {self.axis}")
        self.size = self._mmap.size() if self._mmap is not None else 0
        self.source_metadata = _source_metadata(path, meta.get("pyquant.source_metadata", "{}"))
        self.kept_reasons = _kept_reasons(path, meta.get("pyquant.kept"))
        self.quantized: dict[str, dict[str, Any]] = {}
        self.kept: list[str] = []
        self._rows: dict[str, tuple[int, int]] = {}
        self._kept_meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        for b in range(self._reader.num_record_batches):
            batch = self._reader.get_batch(b)
            try:  # the row format's rules are Rust's (rust/src/arrow/format.rs)
                check_quantized(batch)
            except QuantizeError as exc:
                raise CheckpointError(f"{self.path}: batch {b}: {exc}") from None
            cols = batch.select(["name", "shape", "dtype", "bits", "group_size"]).to_pydict()
            for r, name in enumerate(cols["name"]):
                check_text(path, name)
                if name in self._rows:
                    raise CheckpointError(f"{path}: corrupt checkpoint: tensor {quoted(name)} appears twice")
                self._rows[name] = (b, r)
                shape, dtype, bits, group = cols["shape"][r], cols["dtype"][r], cols["bits"][r], cols["group_size"][r]
                # check_quantized applied the row rules (dtype, bits, group size, lengths against the shape).
                if bits == 0:
                    self.kept.append(name)
                    self._kept_meta[name] = (BY_NAME[dtype].safetensors, tuple(shape))
                else:
                    self.quantized[name] = {"dtype": dtype, "shape": list(shape), "bits": bits, "group_size": group}

    def close(self) -> None:
        self._reader = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # an array handed out still views it: it goes with the last one
                pass
            self._mmap = None

    def __enter__(self) -> ArrowQuantizedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return list(self._rows)

    def kept_info(self, name: str) -> tuple[str, tuple[int, ...]]:
        return self._kept_meta[name]

    def get(self, name: str) -> QuantizedTensor | np.ndarray[Any, Any]:
        check_not_shrunk(self._fd, self.size, self.path)
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
        shape = tuple(m["shape"])  # with axis 0 (2-D, checked by check_quantized) the parts are the transpose's
        codes_shape, groups_shape, _, _ = quantized_layout(shape[::-1] if self.axis == 0 else shape, m["bits"],
                                                           m["group_size"])
        # float32 scales are views; float16 ones are widened (exactly), as from safetensors.
        groups = {p: row.column(p).flatten().to_numpy(zero_copy_only=True).reshape(groups_shape).astype(
            np.float32, copy=False) for p in ("scales", "mins")}
        return _checked(self.path, name, QuantizedTensor(
            codes=data.reshape(codes_shape), **groups, shape=shape, dtype=m["dtype"], bits=int(m["bits"]),
            group_size=int(m["group_size"]), method=self.method, scale_dtype=self.scale_dtype, axis=self.axis))

    def release(self, name: str) -> None:
        """Gives the map's pages back (they stay in the page cache), so that
        reading the file tensor by tensor keeps RSS bounded."""
        if self._mmap is not None:
            with contextlib.suppress(OSError, ValueError):
                self._mmap.madvise(mmap.MADV_DONTNEED)


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
    kept_because: str | None = None  # a carried-over tensor of a pyquant checkpoint: why


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
                    scale_bytes = 2 if q.scale_dtype == "float16" else 4
                    rows.append(_quantized_row(n, m, math.prod(codes) + 2 * scale_bytes * math.prod(groups)))
                else:
                    rows.append(_kept_row(n, *q.kept_info(n), q.kept_reasons.get(n, NOT_RECORDED)))
        return rows, {"format": FORMAT, "pyquant.container": "arrow"}
    with Checkpoint(path) as ckpt:
        meta = ckpt.metadata
        if meta.get("format") != FORMAT:
            return [_kept_row(n, ckpt.info(n).dtype, ckpt.info(n).shape) for n in ckpt.names()], meta
    with QuantizedCheckpoint(path) as q:  # checks the metadata against the tensors
        for n in q.names():
            if n in q.quantized:
                rows.append(_quantized_row(n, q.quantized[n], sum(q.file.tensors[f"{n}.{p}"].nbytes for p in PARTS)))
            else:
                rows.append(_kept_row(n, *q.kept_info(n), q.kept_reasons.get(n, NOT_RECORDED)))
    return rows, meta


def _quantized_row(name: str, m: Mapping[str, Any], stored: int) -> StoredTensor:
    """A row from a quantized tensor's metadata and its stored bytes."""
    return StoredTensor(name, m["dtype"], tuple(m["shape"]), m["bits"], m["group_size"], stored)


def _kept_row(name: str, code: str, shape: tuple[int, ...], why: str | None = None) -> StoredTensor:
    """A row for a carried-over tensor (safetensors dtype code)."""
    return StoredTensor(name, str(DTYPES[code]), shape, None, None, math.prod(shape) * DTYPES[code].itemsize, why)


def is_arrow(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an Arrow IPC file (by its magic bytes)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a directory, FIFO, device: never opened here (a FIFO would block)
        with open(path, "rb") as f:
            return f.read(len(ARROW_MAGIC)) == ARROW_MAGIC
    except OSError:
        return False  # the safetensors reader reports it properly

"""The Arrow path: tensors held as Arrow data in, quantized record batches out.

Inputs come through the Arrow PyCapsule interface (``__arrow_c_array__`` /
``__arrow_c_stream__``), so pyarrow, polars, nanoarrow and others work
without a copy: the capsules' ``ArrowArray`` / ``ArrowSchema`` pointers go to
``pq_quantize_arrow``, which moves the array out of its capsule (the
capsule's destructor then finds it released and does nothing) and reads the
values in place. Results are imported into pyarrow from the structs Rust
filled, so their buffers are the ones the Rust kernel wrote.

pyarrow is imported lazily: ``import pyquant`` works without it (install
the ``arrow`` extra for this module's functions).
"""

from __future__ import annotations

import ctypes
import itertools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from . import _arrow_inputs
from ._call import SIZE_MAX as _SIZE_MAX, c_threads, call
from ._lib import ffi, lib
from .core import _c_uint, _importance, _UINT32_MAX, axis_code, scheme_codes
from .errors import InvalidBitsError, InvalidGroupSizeError, InvalidImatrixError, QuantizeError, UnsupportedDtypeError

_PyCapsule_GetPointer = ctypes.pythonapi.PyCapsule_GetPointer
_PyCapsule_GetPointer.restype = ctypes.c_void_p
_PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

# pq_quantize_arrow's group_size for one group per row: SIZE_MAX (PQ_GROUP_SIZE_PER_ROW).
_GROUP_SIZE_PER_ROW = int(ffi.cast("size_t", -1))


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:  # pragma: no cover - only without pyarrow
        raise ImportError(
            "pyquant's Arrow functions need pyarrow: pip install pyarrow, or pip install '.[arrow]' "
            "from pyquant's source tree"
        ) from exc
    return pyarrow


def quantize_arrow(obj: Any, *, bits: int = 4, group_size: int | None = 128, threads: int | None = None,
                   columns: dict[str, str] | None = None, on_null: str = "error", method: str = "minmax",
                   scale_dtype: str = "float32", axis: int = -1,
                   importance: Mapping[str, Any] | None = None) -> Any:
    """Quantizes the tensors of an Arrow object, reading their values in place.

    ``obj`` implements the Arrow PyCapsule interface and holds either one
    tensor (a float32 or float16 array, 1-D) or a batch of them (a record
    batch / struct array with columns ``name`` (string), ``weights`` (list,
    large_list or fixed_size_list of float32 or float16) and optional
    ``shape`` (list<int64>); without ``shape`` a tensor is 1-D). Groups of
    ``group_size`` run along the last axis of each shape; ``None`` makes one
    group per row. The string, list and shape columns may also be the types
    other producers write (polars, duckdb; README "Arrow"): ``large_string``
    or ``string_view`` names, ``list_view`` weights, shapes of any integer
    type. A ``weights`` column of the ``arrow.fixed_shape_tensor`` type
    (or Ray Data's tensor type) gives every row its shape. Other columns are
    passed through, appended to the result unchanged. ``columns`` maps the
    roles ``name``, ``weights``, ``shape`` to the input's column names
    (``{"weights": "data"}``); ``on_null="skip"`` drops the rows a null
    makes unreadable instead of raising. A dict of numpy arrays (Ray Data's
    default batch) is read as a batch: an n-d array as one tensor per row.
    Float64 weights are refused with the exact cast to make. A stream
    of plain float arrays (a ``ChunkedArray``, a polars ``Series``) is one
    1-D tensor per chunk, named after the stream (a Series' name), with
    ``.0``, ``.1``... appended when there are several chunks (``rechunk()``
    first for one tensor). ``method`` and ``scale_dtype`` as for
    :func:`pyquant.quantize_ptr`: the result's schema is
    ``quantized_schema(method, scale_dtype)`` (float16 scales and mins are
    stored as float16; ``method="search"`` adds a ``method`` column).
    ``axis=0`` groups every tensor down its columns (each must be 2-D): the
    row holds the codes, scales and mins of its transpose, the bytes of
    :func:`pyquant.quantize_ptr` with ``axis=0``, and an ``axis`` column
    (int8, 0) says so. ``importance`` maps tensor names to per-column
    weights (one per row with ``axis=0``; ``method="search"`` only), as in
    :func:`pyquant.quantize_batch`; a name that is no tensor of the input
    is an error (for a ``RecordBatchReader``, when it has been read).

    Returns a pyarrow ``RecordBatch`` (one row per tensor; schema
    :func:`quantized_schema`, then the passed-through columns) for an array
    or batch; a ``Table`` for a dict (what Ray's ``map_batches`` takes
    back); for a stream, a
    ``RecordBatchReader`` if ``obj`` is one (quantized lazily, batch by
    batch), else a ``Table`` (quantized batch by batch).

    Copies: none of the values; the result's codes, scales and mins buffers
    are the ones the Rust kernel wrote. The same bytes as
    :func:`pyquant.quantize_ptr` on each tensor. Parallelism: all tensors of
    a batch in one native call on ``threads`` threads (None: all cores), GIL
    released.

    Raises QuantizeError subclasses: ArrowDataError (released or malformed
    input, nulls, missing column), UnsupportedDtypeError, ShapeError,
    InvalidBitsError, InvalidGroupSizeError, NonFiniteError, InvalidSchemeError,
    InvalidImatrixError.
    """
    m, s = scheme_codes(method, scale_dtype)
    a = axis_code(axis, None)
    b = _c_uint(bits, "bits", _UINT32_MAX, InvalidBitsError)
    if group_size is None:
        g = _GROUP_SIZE_PER_ROW
    else:
        g = _c_uint(group_size, "group_size", _SIZE_MAX - 1, InvalidGroupSizeError)
    t = c_threads(threads)
    schema = _quantized_schema(m, s, a)
    if importance is None and columns is None and on_null == "error" and hasattr(obj, "__arrow_c_array__"):
        # One array or batch, as it is (what prepare would return): one call,
        # without the stream and importance bookkeeping below.
        return _explained(obj, lambda: _convert(lib.pq_quantize_arrow, *obj.__arrow_c_array__(), b, g, m, s, a,
                                                ffi.NULL, 0, t, schema=schema))
    entries, n, keep = _named_importance(importance)
    obj = _arrow_inputs.prepare(obj, columns, on_null)

    seen: set[str] = set()

    def convert(schema_capsule: Any, array_capsule: Any) -> Any:
        batch = _convert(lib.pq_quantize_arrow, schema_capsule, array_capsule, b, g, m, s, a, entries, n, t,
                         schema=schema)
        if keep:
            seen.update(batch.column(0).to_pylist())
        return batch

    out = _explained(obj, lambda: _map(obj, convert))
    if not keep:
        return out

    def check_used() -> None:
        for name in importance or {}:
            if name not in seen:
                raise QuantizeError(f"importance names {name!r}, which is not a tensor of the input")

    if isinstance(out, _pyarrow().RecordBatchReader):
        def checked() -> Iterator[Any]:
            yield from out
            check_used()
        return _pyarrow().RecordBatchReader.from_batches(out.schema, checked())
    check_used()
    return out


def _explained(obj: Any, run: Callable[[], Any]) -> Any:
    """``run()``, with Rust's refusal of float64 weights in ``obj`` raised as
    the error with the exact cast to make (:func:`_arrow_inputs.explain_float64`)."""
    try:
        return run()
    except UnsupportedDtypeError:
        _arrow_inputs.explain_float64(obj)
        raise


def _named_importance(importance: Mapping[str, Any] | None) -> tuple[Any, int, list[Any]]:
    """``pq_quantize_arrow``'s importance list for a mapping name -> weights:
    the ``PqNamedImportance`` array, its length, and what keeps its buffers
    alive (empty without importance)."""
    if importance is None:
        return ffi.NULL, 0, []
    if not isinstance(importance, Mapping):
        raise InvalidImatrixError(
            f"importance maps tensor names to per-column weights (a dict), got {type(importance).__name__}")
    entries = ffi.new("PqNamedImportance[]", len(importance))
    keep: list[Any] = [entries]
    for e, (name, w) in zip(entries, importance.items()):
        if not isinstance(name, str):
            raise InvalidImatrixError(f"importance names tensors by str, got {name!r}")
        try:
            arr = _importance(w)
        except QuantizeError as exc:
            raise type(exc)(f"tensor {name!r}: {exc}") from None
        name_b = ffi.from_buffer(name.encode())
        keep += [name_b, arr]
        e.name, e.name_len = ffi.cast("const uint8_t *", name_b), len(name_b)
        e.weights = ffi.cast("const float *", arr.ctypes.data) if arr.size else ffi.NULL
        e.weights_len = arr.size
    return entries, len(importance), keep


def dequantize_arrow(obj: Any, *, threads: int | None = None) -> Any:
    """Reconstructs the tensors of quantized batches: those :func:`quantize_arrow`
    makes, or the batches of an Arrow checkpoint (``quantize(..., format="arrow")``).

    Quantized rows come back as ``mins + q * scales`` in their dtype
    (float32, float16 or bfloat16); carried-over rows (``bits`` 0) come back
    unchanged. The form of the result (README "Arrow"):

    - an array or record batch whose rows are all quantized float32, or all
      quantized float16, comes back as ``name``, ``weights`` (a list of that
      dtype) and ``shape``, which :func:`quantize_arrow` accepts again;
    - any other batch (bfloat16 or carried-over rows, mixed dtypes) comes
      back as ``name``, ``dtype``, ``shape`` and ``data`` (large_binary:
      each tensor's raw little-endian bytes in its dtype;
      ``np.frombuffer(data, dtype).reshape(shape)``);
    - a Table (or other stream) gives a Table: in the first form if every
      batch gets it with one schema, else every batch in the second form, so
      that all share one schema (an Arrow checkpoint, one tensor per batch,
      of mixed dtypes, reads as such a Table); a ``RecordBatchReader`` gives
      a lazy reader, always in the second form (its later batches are not
      known in advance);
    - an empty Table or reader (an empty partition) gives an empty one, in
      the form an empty batch gets: the first form with float32 weights for
      a Table, the second for a reader.

    ``bits`` and ``group_size`` may be of any integer type and ``codes``
    binary or large_binary (what Spark writes back: :mod:`pyquant.engines`).

    Copies: none of the inputs (read in place); the result's buffers are
    written by the Rust kernel and exported without a copy. Parallelism:
    one native call per batch on ``threads`` threads (None: all cores), GIL
    released. Raises ArrowDataError (not in the quantized schema, released,
    nulls), UnsupportedDtypeError, ShapeError, BufferSizeError.
    """
    t = c_threads(threads)

    def convert(form: int) -> Callable[[Any, Any], Any]:
        return lambda schema_capsule, array_capsule: _convert(
            lib.pq_dequantize_arrow, schema_capsule, array_capsule, form, t)

    auto, raw = convert(lib.PQ_DEQUANTIZED_AUTO), convert(lib.PQ_DEQUANTIZED_RAW)
    # A lazy reader cannot know its later batches: the raw form from the start.
    lazy = hasattr(obj, "__arrow_c_stream__") and isinstance(obj, _pyarrow().RecordBatchReader)
    return _map(obj, raw if lazy else auto, uniform=raw)


def quantized_row(name: str, dtype: str, shape: tuple[int, ...], bits: int, group_size: int,
                  codes: Any, scales: Any, mins: Any, method: str = "minmax", scale_dtype: str = "float32",
                  axis: int = -1) -> Any:
    """One row of a quantized batch as a pyarrow ``RecordBatch`` in
    :func:`quantized_schema`, built and checked by the Rust library (the one
    owner of the row format): a quantized tensor (``bits`` 2, 3, 4 or 8, and
    its codes, scales and mins as numpy arrays), or a carried-over one
    (``bits`` 0, ``group_size`` 0, empty scales and mins, ``codes`` the
    tensor's raw little-endian bytes as a uint8 array), in the schema of
    ``method``, ``scale_dtype`` and ``axis`` (:func:`quantized_schema`; a
    carried-over row takes those of the batches it goes with; with
    ``axis=0`` a quantized tensor is 2-D and its codes, scales and mins are
    those of its transpose). Copies the buffers."""
    m, s = scheme_codes(method, scale_dtype)
    a = axis_code(axis, None)
    name_b, dtype_b = name.encode(), dtype.encode()
    dims = np.ascontiguousarray(shape, np.int64)
    codes = np.ascontiguousarray(codes).reshape(-1).view(np.uint8)
    scales = np.ascontiguousarray(scales, np.float32).reshape(-1)
    mins = np.ascontiguousarray(mins, np.float32).reshape(-1)

    def buf(a: Any, ctype: str) -> Any:
        return ffi.cast(ctype, a.ctypes.data) if a.size else ffi.NULL

    return _import_result(
        lib.pq_arrow_quantized_row, name_b, len(name_b), dtype_b, len(dtype_b),
        buf(dims, "int64_t *"), dims.size, _c_uint(bits, "bits", _UINT32_MAX, InvalidBitsError),
        _c_uint(group_size, "group_size", _SIZE_MAX, InvalidGroupSizeError),
        buf(codes, "uint8_t *"), codes.size, buf(scales, "float *"), scales.size, buf(mins, "float *"), mins.size,
        m, s, a)


def check_quantized(batch: Any) -> None:
    """Checks every row of a quantized batch (an Arrow object) against the
    row format's rules, in Rust, without dequantizing it; raises the
    QuantizeError subclass :func:`dequantize_arrow` would. Copies nothing."""
    schema_capsule, array_capsule = batch.__arrow_c_array__()
    in_schema = _capsule_pointer(schema_capsule, b"arrow_schema", "struct ArrowSchema *")
    in_array = _capsule_pointer(array_capsule, b"arrow_array", "struct ArrowArray *")
    call(lib.pq_arrow_check_quantized, in_array, in_schema)


def check_input_type(obj: Any) -> bool:
    """Runs :func:`quantize_arrow`'s type check (the same Rust function,
    ``pq_arrow_check_quantize_schema``) on ``obj``'s Arrow type, when that
    type can be read without consuming ``obj``: an array (its exported
    schema), or a pyarrow Table, RecordBatchReader or ChunkedArray (their
    ``schema`` / ``type``). Returns whether it was checked (False for other
    streams, whose type only shows when they are read); raises the error
    :func:`quantize_arrow` would for a type it refuses. Copies nothing."""
    pa = sys.modules.get("pyarrow")  # not imported: obj is no pyarrow object
    if hasattr(obj, "__arrow_c_array__"):
        schema_capsule, _ = obj.__arrow_c_array__()  # the unused array capsule releases itself
    elif pa is not None and isinstance(obj, (pa.Table, pa.RecordBatchReader)):
        schema_capsule = obj.schema.__arrow_c_schema__()
    elif pa is not None and isinstance(obj, pa.ChunkedArray):
        schema_capsule = obj.type.__arrow_c_schema__()
    else:
        return False
    call(lib.pq_arrow_check_quantize_schema,
         _capsule_pointer(schema_capsule, b"arrow_schema", "struct ArrowSchema *"))
    return True


def quantized_schema(method: str = "minmax", scale_dtype: str = "float32", axis: int = -1) -> Any:
    """The pyarrow schema of a quantized batch (see the README): name
    string, codes large_binary, scales and mins list<float32> (list<float16>
    for ``scale_dtype="float16"``), shape list<int64>, dtype string, bits
    uint8, group_size uint32, then for ``method="search"`` a column
    ``method`` (string) and for ``axis=0`` a column ``axis`` (int8). The
    defaults give the format's original schema."""
    m, s = scheme_codes(method, scale_dtype)
    return _quantized_schema(m, s, axis_code(axis, None))


def _quantized_schema(method: int, scale_dtype: int, axis: int) -> Any:
    """:func:`quantized_schema` of the C codes, imported once (a pyarrow
    Schema is immutable)."""
    key = (method, scale_dtype, axis)
    try:
        return _SCHEMAS[key]
    except KeyError:
        pass
    pa = _pyarrow()
    out = ffi.new("struct ArrowSchema *")
    call(lib.pq_arrow_quantized_schema, method, scale_dtype, axis, out)
    try:
        schema = _SCHEMAS[key] = pa.Schema._import_from_c(_address(out))
    finally:
        _release_if_live(out)
    return schema


_SCHEMAS: dict[tuple[int, int, int], Any] = {}


# ---------------------------------------------------------------------------


def _map(obj: Any, convert: Callable[[Any, Any], Any], uniform: Callable[[Any, Any], Any] | None = None) -> Any:
    """Applies ``convert`` (schema capsule, array capsule) -> RecordBatch to
    an array-like object, or to each batch of a stream. ``uniform``: for a
    Table whose converted batches would not share one schema, the convert
    that gives every batch the same one (applied to all of them instead).

    A stream of record batches is converted batch by batch; a stream of
    plain float arrays (a ChunkedArray, a polars Series) is a stream of 1-D
    tensors, one per chunk (see :func:`quantize_arrow`)."""
    if hasattr(obj, "__arrow_c_array__"):
        schema_capsule, array_capsule = obj.__arrow_c_array__()
        return convert(schema_capsule, array_capsule)
    if not hasattr(obj, "__arrow_c_stream__"):
        raise UnsupportedDtypeError(
            f"expected an Arrow object (with __arrow_c_array__ or __arrow_c_stream__), "
            f"got {type(obj).__name__}"
        )
    pa = _pyarrow()
    lazy = isinstance(obj, pa.RecordBatchReader)
    inputs: Any
    if lazy:
        inputs = obj
        capsules: Iterator[tuple[Any, Any]] = (b.__arrow_c_array__() for b in inputs)
    else:
        # Any stream, of record batches or of plain arrays, imported without a copy.
        chunks = pa.chunked_array(obj)
        inputs = chunks.chunks  # kept for `uniform`
        capsules = _chunk_capsules(obj, chunks)
    batches: Iterator[Any] = (convert(*c) for c in capsules)
    # The result's schema depends on the data (the dequantized form, the
    # columns passed through): a Table's first batch's; a reader's (not
    # read ahead) or an empty Table's (an empty partition) is that of an
    # empty batch of the input's type.
    first = None if lazy else next(batches, None)
    if first is None:
        t = pa.struct(obj.schema) if lazy else chunks.type
        if not pa.types.is_struct(t):  # a stream of plain arrays: as a batch of no tensors
            t = pa.struct([("name", pa.string()), ("weights", pa.list_(t))])
        out_schema = convert(*_arrow_inputs.empty_array(t).__arrow_c_array__()).schema
    else:
        out_schema = first.schema
        batches = itertools.chain([first], batches)
    if lazy:
        return pa.RecordBatchReader.from_batches(out_schema, batches)
    out = []
    for batch in batches:
        if uniform is not None and batch.schema != out_schema:
            out = [uniform(*b.__arrow_c_array__()) for b in inputs]
            out_schema = out[0].schema
            break
        out.append(batch)
    return pa.Table.from_batches(out, schema=out_schema)


def _chunk_capsules(obj: Any, chunks: Any) -> Iterator[tuple[Any, Any]]:
    """The (schema, array) capsules of a stream's chunks. A chunk of a plain
    array is one tensor named after the stream (a polars Series' name, else
    ""), with ``.0``, ``.1``... appended when there are several chunks
    (``0``, ``1``... without a name)."""
    pa = _pyarrow()
    if pa.types.is_struct(chunks.type):
        return (c.__arrow_c_array__() for c in chunks.chunks)
    name = getattr(obj, "name", "")
    name = name if isinstance(name, str) else ""
    def tensor_name(i: int) -> str:
        if chunks.num_chunks == 1:
            return name
        return f"{name}.{i}" if name else str(i)

    return ((pa.field(tensor_name(i), c.type).__arrow_c_schema__(), c.__arrow_c_array__()[1])
            for i, c in enumerate(chunks.chunks))


def _capsule_pointer(capsule: Any, name: bytes, ctype: str) -> Any:
    try:
        # One call: it checks the capsule and its name (ValueError if either is wrong).
        return ffi.cast(ctype, _PyCapsule_GetPointer(capsule, name))
    except ValueError:
        raise UnsupportedDtypeError(f"expected a PyCapsule named {name.decode()!r}, got {capsule!r}") from None


def _convert(function: Any, schema_capsule: Any, array_capsule: Any, *args: int, schema: Any = None) -> Any:
    """Calls ``function(array, schema, *args, out_array, out_schema, err)``
    and imports the result into pyarrow. ``schema``: for
    ``pq_quantize_arrow``, the pyarrow schema of its quantized columns
    (:func:`_quantized_schema` of the call's codes); then ``out_schema`` is
    NULL (Rust skips building it, the larger part of a small call's cost)
    and the result's schema is ``schema`` followed by the input's columns
    it passed through, as the C header says.

    The input array is moved out of its capsule by the C function (on errors
    too), so the capsule's destructor will not release it again; the schema
    capsule keeps its schema and releases it itself.
    """
    in_schema = _capsule_pointer(schema_capsule, b"arrow_schema", "struct ArrowSchema *")
    in_array = _capsule_pointer(array_capsule, b"arrow_array", "struct ArrowArray *")
    if schema is None:
        return _import_result(function, in_array, in_schema, *args)
    pa = _pyarrow()
    out_array = ffi.new("struct ArrowArray *")
    call(function, in_array, in_schema, *args, out_array, ffi.NULL)
    try:
        if out_array.n_children != len(schema):  # columns passed through, after the quantized ones
            passed = [f for f in pa.Schema._import_from_c_capsule(schema_capsule)
                      if f.name not in _arrow_inputs.ROLES]
            schema = pa.schema([*schema, *passed])
        # Moves the struct into pyarrow (released by it, even if it fails).
        return pa.RecordBatch._import_from_c(_address(out_array), schema)
    except BaseException:
        _release_if_live(out_array)
        raise


def _import_result(function: Any, *args: Any) -> Any:
    """Calls ``function(*args, out_array, out_schema, err)`` and imports the
    record batch it exported into pyarrow."""
    pa = _pyarrow()
    out_array = ffi.new("struct ArrowArray *")
    out_schema = ffi.new("struct ArrowSchema *")
    call(function, *args, out_array, out_schema)
    try:
        # Moves the structs into pyarrow (released by it, even if it fails).
        return pa.RecordBatch._import_from_c(_address(out_array), _address(out_schema))
    finally:
        _release_if_live(out_array)
        _release_if_live(out_schema)


def _address(ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _release_if_live(struct: Any) -> None:
    """Releases an exported struct that no consumer took (release still set)."""
    if struct.release != ffi.NULL:
        struct.release(struct)

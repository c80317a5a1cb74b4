"""llama.cpp's GGML block formats, bit-identical to ggml's own C code, with
the interface of gguf-py's ``gguf.quants``.

- :func:`quantize` ``(data, qtype, *, imatrix=None, threads=None)``: the
  bytes of ggml's ``ggml_quantize_chunk`` (what ``llama-quantize`` writes),
  with or without an importance matrix.
- :func:`dequantize` ``(data, qtype)``: ggml's ``dequantize_row_*``.
- :func:`quantize_batch` / :func:`dequantize_batch`: many tensors of mixed
  types in one native call.

Shapes, dtypes and ``qtype`` as ``gguf.quants.quantize`` / ``dequantize``:
an input of shape ``(..., n)`` quantizes to uint8 ``(..., n / block * bytes)``
(float32 for F32, float16 for F16, as gguf-py returns them) and back.
``qtype`` is a ``gguf.GGMLQuantizationType``, its name (``"Q4_K"``) or its
integer value; gguf-py itself is never imported. Types: :data:`SUPPORTED_TYPES`.

The input is read in place when it is a C-contiguous, aligned, native-order
float32, float16 or bfloat16 array; other float or integer arrays are first
converted to float32 (as gguf-py does), strided ones made contiguous. One
native call, GIL released, rows spread over ``threads`` threads (None: all
cores); the bytes are the same for every thread count.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._call import c_threads, call, call_batch
from ._lib import ffi, lib
from .dtypes import QUANTIZABLE_BY_NUMPY
from .errors import QuantizeError, ShapeError, UnsupportedDtypeError, UnsupportedGgmlTypeError

__all__ = ["SUPPORTED_TYPES", "block_size", "dequantize", "dequantize_batch", "quantize", "quantize_batch"]


def _type_table() -> dict[str, int]:
    """ggml name -> type id, from the native type table (ids are < 64)."""
    table = {}
    for type_id in range(64):
        name = lib.pq_ggml_type_name(type_id)
        if name != ffi.NULL:
            table[ffi.string(name).decode()] = type_id
    return table


_IDS = _type_table()
_NAMES = {type_id: name for name, type_id in _IDS.items()}
SUPPORTED_TYPES: tuple[str, ...] = tuple(_IDS)


def _type_id(qtype: Any) -> int:
    """The GGML type id of a GGMLQuantizationType, name or integer."""
    if isinstance(qtype, str):
        found = _IDS.get(qtype.upper())
    elif isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        # GGMLQuantizationType is an IntEnum: this branch takes it too.
        found = int(qtype) if int(qtype) in _NAMES else None
    else:
        found = None
    if found is None:
        raise UnsupportedGgmlTypeError(
            f"GGML type {qtype!r} is not supported; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    return found


def block_size(qtype: Any) -> tuple[int, int]:
    """``(values, bytes)`` of one block of ``qtype`` (gguf-py's ``GGML_QUANT_SIZES``)."""
    sizes = ffi.new("size_t[2]")
    call(lib.pq_ggml_block_size, _type_id(qtype), sizes, sizes + 1)
    return int(sizes[0]), int(sizes[1])


def _readable(data: Any) -> tuple[np.ndarray[Any, Any], int]:
    """``data`` as an array the kernel reads in place, and its dtype code.
    float32, float16 and bfloat16 arrays are used as they are (copied only
    when strided or misaligned); other numeric arrays become float32, as
    gguf-py converts them."""
    arr = np.asarray(data)
    known = QUANTIZABLE_BY_NUMPY.get(arr.dtype)
    if known is None:
        if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":  # bfloat16: byte-swapped
            raise UnsupportedDtypeError(f"dtype {arr.dtype} cannot be quantized to a GGML type")
        arr = arr.astype(np.float32)
        known = QUANTIZABLE_BY_NUMPY[arr.dtype]
    if not arr.flags.c_contiguous or not arr.flags.aligned:
        arr = arr.copy(order="C")
    assert known.c_code is not None
    return arr, known.c_code


def _last_axis(arr: np.ndarray[Any, Any], what: str) -> int:
    if arr.ndim == 0:
        raise ShapeError(f"{what} must have at least one axis, got a 0-d array")
    return int(arr.shape[-1])


def _prepare(data: Any, qtype: Any, imatrix: Any, out: Any = None) -> tuple[Any, ...]:
    """The checked arguments of one tensor: type id, input, its dtype code,
    row length, imatrix (or None) and the output array (``out`` if given)."""
    type_id = _type_id(qtype)
    arr, code = _readable(data)
    n = _last_axis(arr, "data")
    values, nbytes = block_size(type_id)
    if n == 0 or n % values:
        raise ShapeError(
            f"the last axis ({n}) is not a positive multiple of the {_NAMES[type_id]} block size {values}"
        )
    out = _output(out, arr.shape[:-1] + (n // values * nbytes,), np.dtype(np.uint8))
    weights = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    return type_id, arr, code, n, weights, out


def _output(out: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """A fresh result array, or ``out`` checked for what C cannot see (C
    checks its length, alignment and overlap with the input)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not (isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == shape
            and out.flags.c_contiguous and out.flags.writeable):
        raise ShapeError(f"out must be a writeable C-contiguous {dtype} array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}".rstrip())
    return out


def _result(type_id: int, out: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """gguf-py's result type: float32 / float16 arrays for F32 / F16."""
    if _NAMES[type_id] == "F32":
        return out.view(np.float32)
    if _NAMES[type_id] == "F16":
        return out.view(np.float16)
    return out


def quantize(data: Any, qtype: Any, *, imatrix: Any = None, threads: int | None = None,
             out: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
    """Quantizes ``data`` along its last axis to ``qtype``, as ggml's
    ``ggml_quantize_chunk`` (``llama-quantize``). ``imatrix``: None or one
    non-negative weight per column (llama.cpp's importance matrix for this
    tensor). Returns what ``gguf.quants.quantize`` returns, same bytes.
    ``out``: None, or a writeable C-contiguous uint8 array of the result's
    shape to write the bytes into (a buffer reused across calls has its
    pages faulted in once, not once per call); the result is then a view of it.

    Raises QuantizeError subclasses: UnsupportedGgmlTypeError, ShapeError
    (the last axis is not a multiple of the block size), NonFiniteError,
    InvalidImatrixError, UnsupportedDtypeError.
    """
    type_id, arr, code, n, weights, out = _prepare(data, qtype, imatrix, out)
    call(
        lib.pq_ggml_quantize, type_id, code, ffi.from_buffer(arr), arr.size, n,
        ffi.NULL if weights is None else ffi.from_buffer("float[]", weights),
        0 if weights is None else weights.size,
        c_threads(threads), ffi.from_buffer("uint8_t[]", out), out.size,
    )
    return _result(type_id, out)


def quantize_batch(tensors: Sequence[tuple[Any, ...]], *, threads: int | None = None) -> list[np.ndarray[Any, Any]]:
    """Quantizes each ``(data, qtype)`` or ``(data, qtype, imatrix)`` of
    ``tensors`` as :func:`quantize` does, in one native call (all cores,
    GIL released, large tensors split by rows). All or nothing: every tensor
    is checked before any is written; the error message names the index of
    the tensor at fault (``tensor N: ...``)."""
    prepared = []
    for i, entry in enumerate(tensors):
        if not 2 <= len(entry) <= 3:
            raise QuantizeError(f"tensor {i}: expected (data, qtype) or (data, qtype, imatrix), got {len(entry)} fields")
        prepared.append(_prepare(entry[0], entry[1], entry[2] if len(entry) == 3 else None))
    items = ffi.new("PqGgmlQuantizeItem[]", len(prepared))
    keep = []  # the cdata buffers must outlive the call
    for item, (type_id, arr, code, n, weights, out) in zip(items, prepared):
        buffers = (ffi.from_buffer(arr), None if weights is None else ffi.from_buffer("float[]", weights),
                   ffi.from_buffer("uint8_t[]", out))
        keep.append(buffers)
        item.ggml_type, item.dtype, item.input, item.input_len, item.row_len = type_id, code, buffers[0], arr.size, n
        item.imatrix = ffi.NULL if weights is None else buffers[1]
        item.imatrix_len = 0 if weights is None else weights.size
        item.output, item.output_len = buffers[2], out.size
    call_batch(lib.pq_ggml_quantize_batch, items, range(len(prepared)), c_threads(threads))
    return [_result(p[0], p[5]) for p in prepared]


def _prepare_dequantize(data: Any, qtype: Any,
                        out: Any = None) -> tuple[int, np.ndarray[Any, Any], int, np.ndarray[Any, Any]]:
    """Type id, input bytes, row length and the float32 output (``out`` if
    given) of one tensor."""
    type_id = _type_id(qtype)
    raw = np.ascontiguousarray(data)
    if raw.ndim == 0:
        raise ShapeError("data must have at least one axis, got a 0-d array")
    raw = raw.view(np.uint8)
    nbytes = raw.shape[-1]
    values, block_bytes = block_size(type_id)
    if nbytes % block_bytes:
        raise ShapeError(
            f"the last axis holds {nbytes} bytes, not a multiple of the {_NAMES[type_id]} block of {block_bytes}"
        )
    n = nbytes // block_bytes * values
    return type_id, raw, n, _output(out, raw.shape[:-1] + (n,), np.dtype(np.float32))


def dequantize(data: Any, qtype: Any, *, threads: int | None = None,
               out: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
    """Dequantizes ``data`` (the bytes of ``qtype`` along the last axis, any
    dtype viewed as uint8, as gguf-py does) to float32 of shape
    ``(..., bytes / block_bytes * block_values)``, as ggml's ``dequantize_row_*``.
    ``out``: None, or a writeable C-contiguous float32 array of that shape
    to write the values into (reused across calls, as for :func:`quantize`);
    it is then the result.
    """
    type_id, raw, n, out = _prepare_dequantize(data, qtype, out)
    call(
        lib.pq_ggml_dequantize, type_id, ffi.from_buffer("uint8_t[]", raw), raw.size, n, lib.PQ_DTYPE_F32,
        c_threads(threads), ffi.from_buffer(out), out.size,
    )
    return out


def dequantize_batch(tensors: Sequence[tuple[Any, Any]], *, threads: int | None = None) -> list[np.ndarray[Any, Any]]:
    """Dequantizes each ``(data, qtype)`` of ``tensors`` as :func:`dequantize`
    does, in one native call; all or nothing, errors name the tensor index."""
    prepared = [_prepare_dequantize(data, qtype) for data, qtype in tensors]
    items = ffi.new("PqGgmlDequantizeItem[]", len(prepared))
    keep = []  # the cdata buffers must outlive the call
    for item, (type_id, raw, n, out) in zip(items, prepared):
        buffers = (ffi.from_buffer("uint8_t[]", raw), ffi.from_buffer(out))
        keep.append(buffers)
        item.ggml_type, item.input, item.input_len, item.row_len = type_id, buffers[0], raw.size, n
        item.dtype, item.output, item.output_len = lib.PQ_DTYPE_F32, buffers[1], out.size
    call_batch(lib.pq_ggml_dequantize_batch, items, range(len(prepared)), c_threads(threads))
    return [p[3] for p in prepared]

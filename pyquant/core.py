"""Python wrapper over the C ABI: validates dtype, shape, contiguity and
alignment, allocates outputs with numpy, and makes one C call.

``quantize_ptr`` hands the numpy buffer to Rust by address and never copies;
``quantize_copy`` lets Rust copy the bytes into its own memory first. Both
end in the same Rust kernel, so they give the same bytes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

from ._call import SIZE_MAX as _SIZE_MAX, c_threads, call, call_batch
from ._lib import ffi, lib
from .dtypes import BFLOAT16, QUANTIZABLE, QUANTIZABLE_BY_NUMPY
from .errors import (
    CopyRequiredError,
    InvalidBitsError,
    InvalidGroupSizeError,
    QuantizeError,
    ShapeError,
    UnsupportedDtypeError,
)

DTypeLike = Union[str, npt.DTypeLike, None]

SUPPORTED_DTYPES = tuple(d.name for d in QUANTIZABLE)
_QUANTIZABLE = {d.name: d for d in QUANTIZABLE}
_C_CODE = {d.name: d.c_code for d in QUANTIZABLE if d.c_code is not None}
# numpy dtype -> (name, C code), for the common case in one lookup
_NATIVE_DTYPES = {numpy: (d.name, _C_CODE[d.name]) for numpy, d in QUANTIZABLE_BY_NUMPY.items()}
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantized tensor: packed ``codes`` plus per-group ``scales`` and ``mins``.

    For an input of shape ``(..., K)``: ``codes`` is uint8 ``(..., K*bits/8)``,
    ``scales`` and ``mins`` are float32 ``(..., K/group_size)``. Value ``i``
    of a row is code ``q`` at bit offset ``i*bits % 8`` of byte
    ``i*bits // 8``; it dequantizes to ``mins + q * scales``.
    """

    codes: np.ndarray[Any, np.dtype[np.uint8]]
    scales: np.ndarray[Any, np.dtype[np.float32]]
    mins: np.ndarray[Any, np.dtype[np.float32]]
    shape: tuple[int, ...]
    dtype: str
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.dtype not in _QUANTIZABLE:
            raise UnsupportedDtypeError(
                f"dtype {self.dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}"
            )
        for name, want in (("codes", np.uint8), ("scales", np.float32), ("mins", np.float32)):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(want):
                raise UnsupportedDtypeError(f"{name} must be a numpy {np.dtype(want)} array")
            if not arr.flags.c_contiguous:
                raise CopyRequiredError(f"{name} must be C-contiguous")

    @property
    def nbytes(self) -> int:
        """Bytes held by codes, scales and mins together."""
        return int(self.codes.nbytes + self.scales.nbytes + self.mins.nbytes)

    @property
    def original_nbytes(self) -> int:
        """Bytes of the tensor before quantization."""
        return math.prod(self.shape) * _QUANTIZABLE[self.dtype].itemsize

    @property
    def compression_ratio(self) -> float:
        """``original_nbytes / nbytes`` (1.0 for an empty tensor)."""
        return self.original_nbytes / self.nbytes if self.nbytes else 1.0

    def dequantize(self, dtype: DTypeLike = None, *, threads: int | None = None) -> np.ndarray[Any, Any]:
        """See :func:`dequantize`."""
        return dequantize(self, dtype, threads=threads)

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, bits={self.bits}, "
            f"group_size={self.group_size}, nbytes={self.nbytes}, "
            f"compression={self.compression_ratio:.2f}x)"
        )


def quantize_ptr(
    arr: np.ndarray[Any, Any],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    dtype: DTypeLike = None,
    threads: int | None = None,
) -> QuantizedTensor:
    """Quantizes ``arr`` along its last axis, reading its buffer in place.

    Copies: none. The array's memory is passed to Rust by address; the
    outputs are numpy arrays allocated here and filled by Rust. An input that
    would need a copy (not C-contiguous, misaligned, non-native byte order,
    not a numpy array) raises :class:`CopyRequiredError` saying how to fix it.

    Parallelism: one native call with the GIL released; a large tensor is
    split across ``threads`` threads (None: all cores; 1: the calling thread
    only). Results are identical for every thread count.

    ``group_size=None`` makes one group per row. ``dtype="bfloat16"``
    reinterprets a uint16 array as bfloat16 bit patterns. The array must not
    be written to by another thread during the call; use
    :func:`quantize_copy` if it may be.

    Raises QuantizeError subclasses: UnsupportedDtypeError, CopyRequiredError,
    InvalidBitsError, InvalidGroupSizeError, ShapeError, NonFiniteError.
    """
    name, code = _check_in_place(arr, dtype)
    out, row_len = _allocate(arr.shape, name, bits, group_size)
    call(lib.pq_quantize, code, ffi.from_buffer(_raw_view(arr)), arr.size, row_len, out.bits,
         out.group_size, c_threads(threads), *_output_args(out))
    return out


def quantize_copy(
    arr: npt.ArrayLike,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    dtype: DTypeLike = None,
    threads: int | None = None,
) -> QuantizedTensor:
    """Quantizes ``arr`` like :func:`quantize_ptr`, from a copy of its data.

    Copies: Rust copies the input's bytes into memory it owns before
    quantizing (one input-sized allocation), so the input may change during
    the call. Accepts anything ``np.asarray`` accepts (an array-like that
    is not a numpy array and exposes no buffer is converted first: one more
    copy). A strided or byte-swapped array is first made contiguous and
    native-order by numpy in one copy (a second copy, only for those
    inputs); misaligned data is copied byte-wise by Rust. Same bytes out as
    :func:`quantize_ptr` on ``np.ascontiguousarray(arr)``.
    :func:`copy_plan` gives the byte counts.

    Parallelism as :func:`quantize_ptr` (the copy itself is one thread).

    Raises QuantizeError subclasses: UnsupportedDtypeError, InvalidBitsError,
    InvalidGroupSizeError, ShapeError, NonFiniteError.
    """
    a = np.asarray(arr)
    name, code = _resolve_dtype(a, dtype)
    if needs_normalizing(a):  # one numpy copy: contiguous and native order at once
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    a = np.ascontiguousarray(a)  # a 0-d array becomes 1-d; otherwise a no-op
    out, row_len = _allocate(a.shape, name, bits, group_size)
    call(lib.pq_quantize_copy, code, ffi.from_buffer(_raw_view(a)), a.nbytes, row_len, out.bits,
         out.group_size, c_threads(threads), *_output_args(out))
    return out


def dequantize(qt: QuantizedTensor, dtype: DTypeLike = None, *, threads: int | None = None) -> np.ndarray[Any, Any]:
    """Reconstructs ``mins + q * scales`` (float32 arithmetic) with ``qt.shape``.

    ``dtype`` defaults to the original dtype; float32, float16 and bfloat16
    are supported (rounded to nearest-even from the float32 result).
    Copies: none beyond the output array, which is allocated here and
    filled by Rust. Parallelism as :func:`quantize_ptr`. Raises
    UnsupportedDtypeError (``dtype``), BufferSizeError / ShapeError (codes,
    scales or mins that do not fit ``shape``), InvalidBitsError,
    InvalidGroupSizeError.
    """
    code, out = _dequantize_output(qt, dtype)
    call(lib.pq_dequantize, *_dequantize_args(qt), code, c_threads(threads),
         ffi.from_buffer(_raw_view(out), require_writable=True), out.size)
    return out


Layers = Union[Mapping[Any, np.ndarray[Any, Any]], Sequence[np.ndarray[Any, Any]]]
Params = Union[Mapping[Any, tuple[int, Union[int, None]]], Callable[[Any], Optional[tuple[int, Union[int, None]]]], None]


K = TypeVar("K")


@overload
def quantize_batch(layers: Mapping[K, np.ndarray[Any, Any]], *, bits: int = ..., group_size: int | None = ...,
                   params: Params = ..., threads: int | None = ...) -> dict[K, QuantizedTensor]: ...
@overload
def quantize_batch(layers: Sequence[np.ndarray[Any, Any]], *, bits: int = ..., group_size: int | None = ...,
                   params: Params = ..., threads: int | None = ...) -> list[QuantizedTensor]: ...


def quantize_batch(
    layers: Layers,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    params: Params = None,
    threads: int | None = None,
) -> dict[Any, QuantizedTensor] | list[QuantizedTensor]:
    """Quantizes many tensors in one native call.

    ``layers`` is a mapping name -> array or a sequence of arrays; the result
    has the same form (a dict, or a list) of :class:`QuantizedTensor`.
    Tensors may differ in shape and dtype. ``params`` gives some tensors
    their own ``(bits, group_size)``: a mapping name -> pair, or a callable
    name -> pair (or None for the defaults); names of a sequence are its
    indices. Mixed precision is one call.

    Copies: none; every input is read in place, so every input must meet
    :func:`quantize_ptr`'s rules (CopyRequiredError names the tensor that
    does not). Python checks every input and allocates every output first;
    then one C call quantizes them all on ``threads`` threads (None: all
    cores), across tensors and across groups of a large tensor, with the GIL
    released. All or nothing: a bad tensor fails the whole call before any
    output is written, and the error names it. Same bytes as
    :func:`quantize_ptr` on each tensor, for every thread count.

    Raises the errors of :func:`quantize_ptr` (prefixed with the tensor's
    name), and QuantizeError for a ``layers`` that is neither a mapping nor
    a sequence, or ``params`` that do not give a pair.
    """
    names, arrays, as_dict = _unpack(layers)
    n = len(arrays)
    items = np.zeros(n, dtype=_QUANTIZE_ITEM)
    # Tensors of one shape, dtype and layout share one block per output, so
    # that a thousand small layers cost a few numpy calls, not thousands.
    families: dict[tuple[Any, ...], list[int]] = {}
    layouts: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # (shape, bits, group_size) -> layout, per call
    addresses = []
    for i, (name, arr) in enumerate(zip(names, arrays)):
        b, g = _params_for(name, bits, group_size, params)
        try:
            dname, code = _check_in_place(arr, None)
            key = (arr.shape, b, g)
            layout = layouts.get(key)
            if layout is None:
                layout = layouts[key] = quantized_layout(arr.shape, b, g)
        except QuantizeError as exc:
            raise type(exc)(f"tensor {name!r}: {exc}") from None
        families.setdefault((arr.shape, dname, code) + layout, []).append(i)
        addresses.append(_address(arr))
    items["input"] = addresses
    results: list[Any] = [None] * n
    for (shape, dname, code, codes_shape, groups_shape, b, g), members in families.items():
        k = len(members)
        codes = np.empty((k,) + codes_shape, dtype=np.uint8)
        scales = np.empty((k,) + groups_shape, dtype=np.float32)
        mins = np.empty((k,) + groups_shape, dtype=np.float32)
        rows = items[members]
        rows["dtype"], rows["bits"], rows["group_size"] = code, b, g
        rows["input_len"], rows["row_len"] = math.prod(shape), shape[-1]
        for field, block in (("codes", codes), ("scales", scales), ("mins", mins)):
            per = block[0].size if k else 0
            rows[field] = _address(block) + np.arange(k, dtype=np.uintp) * np.uintp(per * block.itemsize)
            rows[field + "_len"] = per
        items[members] = rows
        for i, c, sc, m in zip(members, codes, scales, mins):
            results[i] = _trusted(c, sc, m, shape, dname, b, g)
    call_batch(lib.pq_quantize_batch, ffi.from_buffer("PqQuantizeItem[]", items), names, c_threads(threads))
    return dict(zip(names, results)) if as_dict else results


@overload
def dequantize_batch(tensors: Mapping[K, QuantizedTensor], *, dtype: DTypeLike = ...,
                     threads: int | None = ...) -> dict[K, np.ndarray[Any, Any]]: ...
@overload
def dequantize_batch(tensors: Sequence[QuantizedTensor], *, dtype: DTypeLike = ...,
                     threads: int | None = ...) -> list[np.ndarray[Any, Any]]: ...


def dequantize_batch(
    tensors: Mapping[Any, QuantizedTensor] | Sequence[QuantizedTensor],
    *,
    dtype: DTypeLike = None,
    threads: int | None = None,
) -> dict[Any, np.ndarray[Any, Any]] | list[np.ndarray[Any, Any]]:
    """Dequantizes many :class:`QuantizedTensor` in one native call.

    Returns the same form as given (a dict or a list) of numpy arrays, each
    in ``dtype`` (default: the tensor's original dtype). Outputs are
    allocated here, filled by Rust in place, on ``threads`` threads (None:
    all cores) with the GIL released. Copies: none of the inputs. All or
    nothing: the errors of :func:`dequantize`, naming the tensor.
    """
    names, qts, as_dict = _unpack(tensors)
    n = len(qts)
    items = ffi.new("PqDequantizeItem[]", n)
    keep_alive: list[Any] = []  # CFFI buffers that must outlive the call
    results = []
    for i, (name, qt) in enumerate(zip(names, qts)):
        try:
            code, out = _dequantize_output(qt, dtype)
        except QuantizeError as exc:
            raise type(exc)(f"tensor {name!r}: {exc}") from None
        args = _dequantize_args(qt)
        output = ffi.from_buffer(_raw_view(out), require_writable=True)
        keep_alive += (args[0], args[2], args[4], output)
        it = items[i]
        (it.codes, it.codes_len, it.scales, it.scales_len, it.mins, it.mins_len,
         it.row_len, it.bits, it.group_size) = args
        it.dtype, it.output, it.output_len = code, output, out.size
        results.append(out)
    call_batch(lib.pq_dequantize_batch, items, names, c_threads(threads))
    return dict(zip(names, results)) if as_dict else results


def _unpack(layers: Any) -> tuple[list[Any], list[Any], bool]:
    if isinstance(layers, Mapping):
        return list(layers.keys()), list(layers.values()), True
    if isinstance(layers, (np.ndarray, str, bytes)) or not isinstance(layers, Sequence):
        raise QuantizeError(
            f"expected a mapping name -> tensor or a sequence of tensors, got {type(layers).__name__}"
        )
    return list(range(len(layers))), list(layers), False


def _params_for(name: Any, bits: int, group_size: int | None, params: Params) -> tuple[int, int | None]:
    if params is None:
        return bits, group_size
    chosen = params(name) if callable(params) else params.get(name)
    if chosen is None:
        return bits, group_size
    try:
        b, g = chosen
    except (TypeError, ValueError):
        raise QuantizeError(f"tensor {name!r}: params must give (bits, group_size), got {chosen!r}") from None
    return b, g


def _check_in_place(arr: Any, dtype: DTypeLike) -> tuple[str, int]:
    """The dtype name and C code of an array the zero-copy path can read as
    it is; CopyRequiredError (saying how to fix it) for any other."""
    if not isinstance(arr, np.ndarray):
        raise CopyRequiredError(
            f"quantize_ptr needs a numpy array, got {type(arr).__name__}; "
            "use quantize_copy, or np.asarray(...) first"
        )
    name, code = _resolve_dtype(arr, dtype)
    problem = in_place_problem(arr)
    if problem is not None:
        what, fix = problem
        raise CopyRequiredError(f"{what}; quantize_ptr never copies: use quantize_copy, or {fix}")
    return name, code


def in_place_problem(arr: np.ndarray[Any, Any]) -> tuple[str, str] | None:
    """Why the zero-copy path cannot read ``arr`` as it is, and the fix, as
    ``(what, fix)``: non-native byte order, not C-contiguous, or misaligned.
    None if it can. The one definition of "needs a copy", shared by
    :func:`quantize_ptr`, :func:`quantize_batch` and the dispatch of
    :func:`pyquant.quantize`."""
    if not arr.dtype.isnative:
        return (f"the array's byte order is {_byte_order_name(arr.dtype)}, not the machine's",
                "arr.astype(arr.dtype.newbyteorder('='))")
    if not arr.flags.c_contiguous:
        return ("the array is not C-contiguous (a strided or transposed view)",
                "np.ascontiguousarray(arr)")
    if not arr.flags.aligned:
        return (f"the array's data at address {arr.ctypes.data:#x} is not aligned to "
                f"{arr.dtype.itemsize} bytes", "arr.copy()")
    return None


def copy_plan(arr: np.ndarray[Any, Any]) -> tuple[int, int]:
    """The bytes :func:`quantize_copy` copies for ``arr`` (already a numpy
    array): ``(numpy_bytes, rust_bytes)``. numpy makes one contiguous,
    native-order copy only when ``arr`` is strided or byte-swapped; Rust then
    always copies the (normalized) input into its own memory."""
    numpy_bytes = arr.nbytes if needs_normalizing(arr) else 0
    return numpy_bytes, arr.nbytes


def needs_normalizing(arr: np.ndarray[Any, Any]) -> bool:
    """Whether :func:`quantize_copy` first makes a contiguous, native-order
    copy of ``arr`` in numpy (misaligned data is left to Rust's byte-wise copy)."""
    return not arr.dtype.isnative or not arr.flags.c_contiguous


def _dequantize_output(qt: QuantizedTensor, dtype: DTypeLike) -> tuple[int, np.ndarray[Any, Any]]:
    name = qt.dtype if dtype is None else _dtype_name(np.dtype(dtype))
    d = _QUANTIZABLE[name]
    return _C_CODE[name], np.empty(qt.shape, dtype=d.numpy)


def _dequantize_args(qt: QuantizedTensor) -> tuple[Any, ...]:
    """codes, scales, mins (pointer, length) and row_len, bits, group_size."""
    return (
        ffi.from_buffer("uint8_t[]", qt.codes), qt.codes.size,
        ffi.from_buffer("float[]", qt.scales), qt.scales.size,
        ffi.from_buffer("float[]", qt.mins), qt.mins.size,
        qt.shape[-1] if qt.shape else 0,
        _c_uint(qt.bits, "bits", _UINT32_MAX, InvalidBitsError),
        _c_uint(qt.group_size, "group_size", _SIZE_MAX, InvalidGroupSizeError),
    )


def _dtype_name(dt: np.dtype[Any]) -> str:
    for d in QUANTIZABLE:
        if dt == d.numpy or dt == d.numpy.newbyteorder("S"):
            return d.name
    raise UnsupportedDtypeError(
        f"dtype {dt} is not supported; supported dtypes: {', '.join(SUPPORTED_DTYPES)} "
        "(and uint16 holding bfloat16 bits, with dtype='bfloat16')"
    )


def _resolve_dtype(arr: np.ndarray[Any, Any], dtype: DTypeLike) -> tuple[str, int]:
    """The dtype name and C code the kernel reads ``arr`` as."""
    if dtype is not None and _is_bfloat16_request(dtype):
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
            return "bfloat16", _C_CODE["bfloat16"]
        if arr.dtype == BFLOAT16 or arr.dtype == BFLOAT16.newbyteorder("S"):
            return "bfloat16", _C_CODE["bfloat16"]
        raise UnsupportedDtypeError(
            f"dtype='bfloat16' needs a uint16 or bfloat16 array, got {arr.dtype}"
        )
    known = _NATIVE_DTYPES.get(arr.dtype)
    if known is not None and dtype is None:
        return known
    name = _dtype_name(arr.dtype)
    if dtype is not None and _dtype_name(np.dtype(dtype)) != name:
        raise UnsupportedDtypeError(f"dtype={dtype!r} does not match the array's dtype {arr.dtype}")
    return name, _C_CODE[name]


def _is_bfloat16_request(dtype: DTypeLike) -> bool:
    if isinstance(dtype, str):
        return dtype == "bfloat16"
    try:
        return bool(np.dtype(dtype) == BFLOAT16)
    except TypeError:
        return False


def _byte_order_name(dt: np.dtype[Any]) -> str:
    return {">": "big-endian ('>')", "<": "little-endian ('<')"}.get(dt.byteorder, dt.byteorder)


def _raw_view(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``arr``, or a byte view of it where numpy cannot export a buffer
    (bfloat16 and other extension dtypes)."""
    if arr.dtype.char in "efBHb?":  # float32 'f', float16 'e', and plain ints export directly
        return arr
    return arr.view(np.uint8) if arr.ndim else arr.reshape(1).view(np.uint8)


def _c_uint(value: Any, what: str, limit: int, error: type[QuantizeError]) -> int:
    """``value`` as a C unsigned integer; the rules themselves are Rust's to check."""
    if type(value) is int and 0 <= value <= limit:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= limit:
        raise error(f"{what} must be a non-negative integer that fits the C ABI, got {value!r}")
    return int(value)


def quantized_layout(
    shape: tuple[int, ...], bits: int, group_size: int | None
) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """``(codes_shape, groups_shape, bits, group_size)`` for quantizing a tensor
    of ``shape``, checked by the C ABI's layout rules; raises QuantizeError."""
    if len(shape) == 0:
        raise ShapeError("cannot quantize a 0-d array: it needs at least one axis")
    row_len = shape[-1]
    g = row_len if group_size is None else _c_uint(group_size, "group_size", _SIZE_MAX, InvalidGroupSizeError)
    bits = _c_uint(bits, "bits", _UINT32_MAX, InvalidBitsError)
    codes_len, n_groups = _row_sizes(row_len, bits, g)
    lead = tuple(shape[:-1])
    return lead + (codes_len,), lead + (n_groups,), bits, g


@functools.lru_cache(maxsize=4096)
def _row_sizes(row_len: int, bits: int, group_size: int) -> tuple[int, int]:
    """Codes bytes and groups of one row, from the C ABI (cached: a pure
    function of its arguments; errors are raised, never cached)."""
    sizes = ffi.new("size_t[2]")
    call(lib.pq_quantized_sizes, row_len, row_len, bits, group_size, sizes, sizes + 1)
    return sizes[0], sizes[1]


def _allocate(
    shape: tuple[int, ...], dtype: str, bits: int, group_size: int | None
) -> tuple[QuantizedTensor, int]:
    """Output arrays for ``shape``, sized by the C ABI's layout rules."""
    codes_shape, groups_shape, bits, g = quantized_layout(shape, bits, group_size)
    qt = _trusted(np.empty(codes_shape, dtype=np.uint8), np.empty(groups_shape, dtype=np.float32),
                  np.empty(groups_shape, dtype=np.float32), shape, dtype, bits, g)
    return qt, shape[-1]


def _trusted(codes: Any, scales: Any, mins: Any, shape: tuple[int, ...], dtype: str, bits: int,
             group_size: int) -> QuantizedTensor:
    """A QuantizedTensor built without __post_init__'s checks, for arrays
    that are right by construction (it saves microseconds per tensor)."""
    qt = object.__new__(QuantizedTensor)
    qt.__dict__.update(codes=codes, scales=scales, mins=mins, shape=tuple(shape), dtype=dtype,
                       bits=bits, group_size=group_size)
    return qt


def _address(arr: np.ndarray[Any, Any]) -> int:
    """The address of an array's data (through the buffer protocol: fast)."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(_raw_view(arr))))


def _struct_dtype(ctype: str, fields: dict[str, Any]) -> np.dtype[Any]:
    """A numpy record type laid out exactly like the C struct ``ctype``."""
    return np.dtype({
        "names": list(fields),
        "formats": list(fields.values()),
        "offsets": [ffi.offsetof(ctype, f) for f in fields],
        "itemsize": ffi.sizeof(ctype),
    })


_QUANTIZE_ITEM = _struct_dtype("PqQuantizeItem", {
    "dtype": np.uint32, "input": np.uintp, "input_len": np.uintp, "row_len": np.uintp,
    "bits": np.uint32, "group_size": np.uintp, "codes": np.uintp, "codes_len": np.uintp,
    "scales": np.uintp, "scales_len": np.uintp, "mins": np.uintp, "mins_len": np.uintp,
})


def _output_args(qt: QuantizedTensor) -> tuple[Any, ...]:
    return (
        ffi.from_buffer("uint8_t[]", qt.codes, require_writable=True),
        qt.codes.size,
        ffi.from_buffer("float[]", qt.scales, require_writable=True),
        qt.scales.size,
        ffi.from_buffer("float[]", qt.mins, require_writable=True),
        qt.mins.size,
    )

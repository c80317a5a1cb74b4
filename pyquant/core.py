"""Python wrapper over the C ABI: validates dtype, shape, contiguity and
alignment, allocates outputs with numpy, and makes one C call.

``quantize_ptr`` hands the numpy buffer to Rust by address and never copies;
``quantize_copy`` lets Rust copy the bytes into its own memory first. Both
end in the same Rust kernel, so they give the same bytes.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

from ._call import SIZE_MAX as _SIZE_MAX, c_threads, call, call_batch, error_struct, raise_for
from ._lib import ffi, lib
from .dtypes import BFLOAT16, QUANTIZABLE, QUANTIZABLE_BY_NUMPY
from .errors import (
    CopyRequiredError,
    InvalidBitsError,
    InvalidGroupSizeError,
    InvalidImatrixError,
    InvalidSchemeError,
    MisalignedError,
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
# The quantization schemes (docs/scheme.md, "Methods and scale dtypes"):
# name -> C code. The first of each is the original format and the default.
METHODS = {"minmax": lib.PQ_METHOD_MIN_MAX, "search": lib.PQ_METHOD_SEARCH}
SCALE_DTYPES = {"float32": lib.PQ_SCALE_DTYPE_F32, "float16": lib.PQ_SCALE_DTYPE_F16}


class _Meta:
    """What a :class:`QuantizedTensor` is besides its arrays; one is shared
    by every result of a :class:`_Plan`, which also gives the layout of a
    block to view lazily (``codes_shape``, ``groups_shape``, ``n_groups``)."""

    __slots__ = ("shape", "dtype", "bits", "group_size", "method", "scale_dtype", "axis", "codes_shape",
                 "groups_shape", "n_groups")

    def __init__(self, shape: tuple[int, ...], dtype: str, bits: int, group_size: int, method: str,
                 scale_dtype: str, axis: int, codes_shape: tuple[int, ...] = (), groups_shape: tuple[int, ...] = (),
                 n_groups: int = 0) -> None:
        self.shape, self.dtype, self.bits, self.group_size = shape, dtype, bits, group_size
        self.method, self.scale_dtype, self.axis = method, scale_dtype, axis
        self.codes_shape, self.groups_shape, self.n_groups = codes_shape, groups_shape, n_groups


class QuantizedTensor:
    """A quantized tensor: packed ``codes`` plus per-group ``scales`` and ``mins``.

    For an input of shape ``(..., K)``: ``codes`` is uint8 ``(..., K*bits/8)``,
    ``scales`` and ``mins`` are float32 ``(..., K/group_size)``. Value ``i``
    of a row is code ``q`` at bit offset ``i*bits % 8`` of byte
    ``i*bits // 8``; it dequantizes to ``mins + q * scales``.

    ``method`` says how the scales and mins were chosen (``"minmax"`` or
    ``"search"``); with ``scale_dtype="float16"`` every scale and min is
    exactly a float16 value (held as float32 in memory, stored as float16
    in checkpoints, counted as 2 bytes by :attr:`nbytes`).

    ``axis=0`` (2-D tensors only): the groups ran down the columns; codes,
    scales and mins are exactly those of the transpose quantized along its
    rows, shaped as for ``shape[::-1]`` (docs/scheme.md, "Axis").

    Immutable attributes; equality is identity; pickles by value. A result
    of the quantize functions holds one block (scales, mins, codes) and
    makes its three arrays on first access, which keeps a call cheap.
    """

    __slots__ = ("_meta", "_block", "_at", "_codes", "_scales", "_mins", "__weakref__")
    _meta: _Meta
    _block: Any  # a CFFI block, or a family's numpy block; unset when built from arrays
    _at: int  # the offset of this result in a family's block (quantize_batch); unset otherwise
    _codes: np.ndarray[Any, np.dtype[np.uint8]]
    _scales: np.ndarray[Any, np.dtype[np.float32]]
    _mins: np.ndarray[Any, np.dtype[np.float32]]

    def __init__(self, codes: np.ndarray[Any, np.dtype[np.uint8]], scales: np.ndarray[Any, np.dtype[np.float32]],
                 mins: np.ndarray[Any, np.dtype[np.float32]], shape: tuple[int, ...], dtype: str, bits: int,
                 group_size: int, method: str = "minmax", scale_dtype: str = "float32", axis: int = -1) -> None:
        scheme_codes(method, scale_dtype)
        axis_code(axis, tuple(shape))
        if dtype not in _QUANTIZABLE:
            raise UnsupportedDtypeError(
                f"dtype {dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}"
            )
        for name, arr, want in (("codes", codes, np.uint8), ("scales", scales, np.float32),
                                ("mins", mins, np.float32)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(want):
                raise UnsupportedDtypeError(f"{name} must be a numpy {np.dtype(want)} array")
            if not arr.flags.c_contiguous:
                raise CopyRequiredError(f"{name} must be C-contiguous")
        if scale_dtype == "float16":
            for name, arr in (("scales", scales), ("mins", mins)):
                with np.errstate(over="ignore"):
                    exact = np.array_equal(arr.astype(np.float16).astype(np.float32), arr)
                if not exact:
                    raise UnsupportedDtypeError(f"{name} must hold float16 values when scale_dtype is 'float16'")
        self._meta = _Meta(shape, dtype, bits, group_size, method, scale_dtype, axis)
        self._codes, self._scales, self._mins = codes, scales, mins

    def _view(self) -> None:
        """Makes the three arrays from the block. Idempotent (the block is
        kept), so two threads making them at once both get valid views."""
        m, block = self._meta, self._block
        if type(block) is np.ndarray:  # a family's block, shared from this result's offset: quantize_batch
            at = self._at
        else:  # a CFFI block of its own: quantize_ptr, quantize_copy
            block, at = np.frombuffer(ffi.buffer(block), np.uint8), 0
        n = m.n_groups
        self._scales = np.ndarray(m.groups_shape, _F32, block, at)
        self._mins = np.ndarray(m.groups_shape, _F32, block, at + 4 * n)
        self._codes = np.ndarray(m.codes_shape, _U8, block, at + 8 * n)

    @property
    def codes(self) -> np.ndarray[Any, np.dtype[np.uint8]]:
        try:
            return self._codes
        except AttributeError:
            self._view()
            return self._codes

    @property
    def scales(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        try:
            return self._scales
        except AttributeError:
            self._view()
            return self._scales

    @property
    def mins(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        try:
            return self._mins
        except AttributeError:
            self._view()
            return self._mins

    @property
    def shape(self) -> tuple[int, ...]:
        return self._meta.shape

    @property
    def dtype(self) -> str:
        return self._meta.dtype

    @property
    def bits(self) -> int:
        return self._meta.bits

    @property
    def group_size(self) -> int:
        return self._meta.group_size

    @property
    def method(self) -> str:
        return self._meta.method

    @property
    def scale_dtype(self) -> str:
        return self._meta.scale_dtype

    @property
    def axis(self) -> int:
        return self._meta.axis

    def __reduce__(self) -> tuple[Any, ...]:
        return (QuantizedTensor, (self.codes, self.scales, self.mins, self.shape, self.dtype, self.bits,
                                  self.group_size, self.method, self.scale_dtype, self.axis))

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales and mins as stored (scales and mins in
        ``scale_dtype``: 2 bytes each for float16)."""
        per = 2 if self.scale_dtype == "float16" else 4
        return int(self.codes.nbytes + per * (self.scales.size + self.mins.size))

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per value: ``8 * nbytes / values``."""
        n = math.prod(self.shape)
        return 8 * self.nbytes / n if n else 0.0

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

    def _scheme_repr(self) -> str:
        axis = "" if self.axis == -1 else f"axis={self.axis}, "
        if (self.method, self.scale_dtype) == ("minmax", "float32"):
            return axis
        return f"method={self.method}, scale_dtype={self.scale_dtype}, {axis}"

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, bits={self.bits}, "
            f"group_size={self.group_size}, {self._scheme_repr()}nbytes={self.nbytes}, "
            f"compression={self.compression_ratio:.2f}x)"
        )


def quantize_ptr(
    arr: np.ndarray[Any, Any],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    dtype: DTypeLike = None,
    threads: int | None = None,
    out: Out = None,
    method: str = "minmax",
    scale_dtype: str = "float32",
    importance: npt.ArrayLike | None = None,
    axis: int = -1,
) -> QuantizedTensor:
    """Quantizes ``arr`` along its last axis, reading its buffer in place.

    Copies: none. The array's memory is passed to Rust by address; the
    outputs are one block allocated here (codes, scales and mins are three
    views of it) and filled by Rust. An input that would need a copy (not
    C-contiguous, misaligned, non-native byte order, not a numpy array)
    raises :class:`CopyRequiredError` saying how to fix it.

    ``out`` (a :class:`QuantizedTensor`, e.g. an earlier result, or a tuple
    ``(codes, scales, mins)`` of numpy arrays) makes Rust write into those
    arrays instead, so that a loop over layers reuses warm memory: they must
    have the result's dtypes (uint8, float32, float32) and shapes, be
    C-contiguous and writable (QuantizeError otherwise), aligned and not
    overlap ``arr`` (MisalignedError / OverlapError, from the C ABI). The
    result's arrays are then ``out``'s. On an error about a value (NaN,
    Inf, a range that overflows) ``out`` may have been partly written.

    Parallelism: one native call with the GIL released; a large tensor is
    split across ``threads`` threads (None: all cores; 1: the calling thread
    only). Results are identical for every thread count.

    ``group_size=None`` makes one group per row. ``dtype="bfloat16"``
    reinterprets a uint16 array as bfloat16 bit patterns. The array must not
    be written to by another thread during the call; use
    :func:`quantize_copy` if it may be.

    ``method``: ``"minmax"`` (each group's range) or ``"search"`` (an
    error-minimizing search of each group's scale and min, several times
    slower, lower error: docs/scheme.md). ``scale_dtype``: ``"float32"`` or
    ``"float16"`` (scales and mins rounded to float16 before the codes are
    chosen, half their storage). ``importance``: optional per-column weights
    (``K`` finite, non-negative values, e.g. an imatrix) for ``"search"``.
    ``axis``: -1 (groups along rows) or, for a 2-D ``arr``, 0 (groups down
    the columns): exactly the result of ``np.ascontiguousarray(arr.T)`` with
    axis -1 (codes, scales and mins shaped for ``arr.T``; ``importance`` then
    has one weight per row of ``arr``), computed in tiles of columns without
    a transposed copy; ``dequantize`` gives back ``arr``'s shape.

    Raises QuantizeError subclasses: UnsupportedDtypeError, CopyRequiredError,
    InvalidBitsError, InvalidGroupSizeError, ShapeError, NonFiniteError,
    InvalidSchemeError, InvalidImatrixError.
    """
    # Python checks only what C cannot see (type, strides, dtype); C checks
    # lengths, alignment and overlaps.
    if not isinstance(arr, np.ndarray):
        _check_in_place(arr, dtype)
    try:
        plan = _plan(arr.dtype, arr.shape, bits, group_size, dtype, method, scale_dtype, axis)
    except QuantizeError as exc:
        raise _copy_first(arr, dtype, exc) from None
    # numpy exports a buffer this way (no strides) only for a C-contiguous
    # array: that is the contiguity check. Alignment is checked by C; its
    # error is explained below.
    try:
        inp = ffi.from_buffer(arr if plan.exports else _raw_view(arr))
    except ValueError as exc:
        raise _copy_first(arr, dtype, exc) from None
    if out is None and plan.plain and importance is None:
        # The common case, kept short (it is the per-call cost): one block
        # (plan.new, inlined), one C call, the threads check inlined.
        block = _alloc(plan.block_type)
        if status := lib.pq_quantize_block(
                plan.code, inp, plan.size, plan.row_len,
                plan.bits, plan.group_size,
                0 if threads is None else threads if type(threads) is int and 0 < threads <= _SIZE_MAX
                else c_threads(threads), block, plan.nbytes, err := error_struct()):
            _check_in_place(arr, dtype)  # a misaligned array is a CopyRequiredError, as without C
            raise_for(status, err)
        qt = _new(QuantizedTensor)
        qt._meta, qt._block = plan.meta, block
        return qt
    if not arr.flags.aligned:
        _check_in_place(arr, dtype)
    if out is None:
        qt, block = plan.new()
        codes, scales, mins = plan.pointers(block)
    else:
        qt, *arrays = plan.reuse(out)
        codes, scales, mins = ffi.from_buffer("uint8_t[]", arrays[0]), *(ffi.from_buffer("float[]", a) for a in arrays[1:])
    if plan.method or plan.scale_dtype or plan.axis or importance is not None:
        # Other schemes are fields of the batch item: a batch of one.
        item = ffi.new("PqQuantizeItem *")
        (item.dtype, item.input, item.input_len, item.row_len, item.bits, item.group_size) = (
            plan.code, inp, plan.size, plan.row_len, plan.bits, plan.group_size)
        (item.codes, item.codes_len, item.scales, item.scales_len, item.mins, item.mins_len) = (
            codes, plan.codes_len, scales, plan.n_groups, mins, plan.n_groups)
        item.method, item.scale_dtype, item.axis = plan.method, plan.scale_dtype, plan.axis
        w = None if importance is None else _importance(importance)
        if w is not None:
            item.importance, item.importance_len = ffi.from_buffer("float[]", w), w.size
        call(lib.pq_quantize_batch, item, 1, c_threads(threads), ffi.NULL)
        return qt
    err = error_struct()
    status = lib.pq_quantize(plan.code, inp, plan.size,
                             plan.row_len, plan.bits, plan.group_size, 0 if threads is None else c_threads(threads),
                             codes, plan.codes_len, scales, plan.n_groups, mins, plan.n_groups, err)
    if status:
        raise_for(status, err)
    return qt


def quantize_copy(
    arr: npt.ArrayLike,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    dtype: DTypeLike = None,
    threads: int | None = None,
    method: str = "minmax",
    scale_dtype: str = "float32",
    importance: npt.ArrayLike | None = None,
    axis: int = -1,
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
    ``method``, ``scale_dtype``, ``importance`` and ``axis`` as there (with a scheme
    other than the default, numpy makes the one copy and Rust reads it).

    Raises QuantizeError subclasses: UnsupportedDtypeError, InvalidBitsError,
    InvalidGroupSizeError, ShapeError, NonFiniteError, InvalidSchemeError,
    InvalidImatrixError.
    """
    a = np.asarray(arr)
    name, code = _resolve_dtype(a.dtype, dtype)
    if needs_normalizing(a):  # one numpy copy: contiguous and native order at once
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    a = np.ascontiguousarray(a)  # a 0-d array becomes 1-d; otherwise a no-op
    plan = _plan(a.dtype, a.shape, bits, group_size, dtype, method, scale_dtype, axis)
    if plan.method or plan.scale_dtype or plan.axis or importance is not None:
        return quantize_ptr(np.array(a, order="C", copy=True), bits=bits, group_size=group_size, dtype=dtype,
                            threads=threads, method=method, scale_dtype=scale_dtype, importance=importance, axis=axis)
    qt, block = plan.new()
    codes, scales, mins = plan.pointers(block)
    call(lib.pq_quantize_copy, code, ffi.from_buffer(_raw_view(a)), a.nbytes, plan.row_len, plan.bits,
         plan.group_size, c_threads(threads), codes, plan.codes_len, scales, plan.n_groups, mins, plan.n_groups)
    return qt


def dequantize(qt: QuantizedTensor, dtype: DTypeLike = None, *, threads: int | None = None,
               out: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
    """Reconstructs ``mins + q * scales`` (float32 arithmetic) with ``qt.shape``.

    ``dtype`` defaults to the original dtype (or ``out``'s); float32, float16
    and bfloat16 are supported (rounded to nearest-even from the float32
    result). Copies: none beyond the output array, which is allocated here
    and filled by Rust; ``out`` (a writable, C-contiguous array of that dtype
    and ``qt.shape``) makes Rust write into it instead and is returned (on a
    non-finite scale or min it may have been partly written). Parallelism
    as :func:`quantize_ptr`. Raises UnsupportedDtypeError (``dtype``),
    BufferSizeError / ShapeError (codes, scales or mins that do not fit
    ``shape``), InvalidBitsError, InvalidGroupSizeError; for ``out``,
    ShapeError, CopyRequiredError, MisalignedError, OverlapError.
    """
    if out is not None and dtype is None and isinstance(out, np.ndarray):
        dtype = out.dtype
    code, out = _dequantize_output(qt, dtype, out)
    if qt.axis != -1:  # the axis is a field of the batch item: a batch of one
        items = ffi.new("PqDequantizeItem[]", 1)
        keep = _dequantize_item(items[0], qt, code, out)
        call(lib.pq_dequantize_batch, items, 1, c_threads(threads), ffi.NULL)
        del keep
        return out
    call(lib.pq_dequantize, *_dequantize_args(qt), code, c_threads(threads),
         ffi.from_buffer(_raw_view(out)), out.size)
    return out


def _dequantize_item(it: Any, qt: QuantizedTensor, code: int, out: np.ndarray[Any, Any]) -> list[Any]:
    """Fills the C item ``it``; returns the CFFI buffers that must outlive the call."""
    args = _dequantize_args(qt)
    output = ffi.from_buffer(_raw_view(out), require_writable=True)
    (it.codes, it.codes_len, it.scales, it.scales_len, it.mins, it.mins_len,
     it.row_len, it.bits, it.group_size) = args
    it.dtype, it.output, it.output_len = code, output, out.size
    it.axis = axis_code(qt.axis, tuple(qt.shape))
    return [args[0], args[2], args[4], output]


Layers = Union[Mapping[Any, np.ndarray[Any, Any]], Sequence[np.ndarray[Any, Any]]]
Params = Union[Mapping[Any, tuple[int, Union[int, None]]], Callable[[Any], Optional[tuple[int, Union[int, None]]]], None]


K = TypeVar("K")


@overload
def quantize_batch(layers: Mapping[K, np.ndarray[Any, Any]], *, bits: int = ..., group_size: int | None = ...,
                   params: Params = ..., threads: int | None = ...,
                   out: Mapping[K, Out] | None = ..., method: str = ..., scale_dtype: str = ...,
                   importance: Mapping[K, npt.ArrayLike] | None = ..., axis: int = ...) -> dict[K, QuantizedTensor]: ...
@overload
def quantize_batch(layers: Sequence[np.ndarray[Any, Any]], *, bits: int = ..., group_size: int | None = ...,
                   params: Params = ..., threads: int | None = ...,
                   out: Sequence[Out] | None = ..., method: str = ..., scale_dtype: str = ...,
                   importance: Mapping[int, npt.ArrayLike] | None = ..., axis: int = ...) -> list[QuantizedTensor]: ...


def quantize_batch(
    layers: Layers,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    params: Params = None,
    threads: int | None = None,
    out: Mapping[Any, Out] | Sequence[Out] | None = None,
    method: str = "minmax",
    scale_dtype: str = "float32",
    importance: Mapping[Any, npt.ArrayLike] | None = None,
    axis: int = -1,
) -> dict[Any, QuantizedTensor] | list[QuantizedTensor]:
    """Quantizes many tensors in one native call.

    ``layers`` is a mapping name -> array or a sequence of arrays; the result
    has the same form (a dict, or a list) of :class:`QuantizedTensor`.
    Tensors may differ in shape and dtype. ``params`` gives some tensors
    their own ``(bits, group_size)``: a mapping name -> pair, or a callable
    name -> pair (or None for the defaults); names of a sequence are its
    indices. Mixed precision is one call.

    ``out`` (the same form as the result, e.g. an earlier result) makes Rust
    write each tensor's result into the given arrays, as ``out=`` of
    :func:`quantize_ptr` does; no output may overlap any input or output
    (OverlapError).

    Copies: none; every input is read in place, so every input must meet
    :func:`quantize_ptr`'s rules (CopyRequiredError names the tensor that
    does not). Python checks every input and sets up every output first
    (tensors of one shape, dtype and layout share one output block); then
    one C call quantizes them all on ``threads`` threads (None: all cores),
    across tensors and across groups of a large tensor, with the GIL
    released. A bad tensor fails the whole call and the error names it: a
    bad shape, dtype or layout before anything is written; a bad value (NaN,
    Inf) as the first one in tensor order, for every thread count, with
    outputs (fresh ones unless ``out`` is given) possibly partly written.
    Same bytes as :func:`quantize_ptr` on each tensor, for every thread count.

    ``method``, ``scale_dtype`` and ``axis`` as for :func:`quantize_ptr`, for every
    tensor; ``importance`` maps names (indices of a sequence) to per-column
    weights for some tensors.

    Raises the errors of :func:`quantize_ptr` (prefixed with the tensor's
    name), and QuantizeError for a ``layers`` that is neither a mapping nor
    a sequence, or ``params`` that do not give a pair.
    """
    names, arrays, as_dict = _unpack(layers)
    n = len(arrays)
    outs = None if out is None else _unpack_out(out, names, as_dict)
    # Per tensor, only what C cannot see (type, strides, dtype) and the
    # cached plan; tensors with one plan form a family.
    families: dict[_Plan, list[int]] = {}
    inputs, from_buffer = [], ffi.from_buffer  # the C pointers to the inputs' data
    b, g = bits, group_size
    last: tuple[Any, ...] = (None, None, None, None)  # a run of like tensors skips the plan lookup
    for i, arr in enumerate(arrays):
        if params is not None:
            b, g = _params_for(names[i], bits, group_size, params)
        try:
            if not isinstance(arr, np.ndarray):
                _check_in_place(arr, None)
            if arr.dtype is not last[1] or arr.shape != last[0] or b is not last[2] or g is not last[3]:
                plan = _plan(arr.dtype, arr.shape, b, g, None, method, scale_dtype, axis)
                members = families.setdefault(plan, [])
                last = (arr.shape, arr.dtype, b, g)
            # C-contiguity is checked by the export, as in quantize_ptr;
            # alignment by C (explained below).
            inputs.append(from_buffer(arr if plan.exports else _raw_view(arr)))
        except ValueError as exc:  # a QuantizeError, or numpy refusing to export a strided array
            exc = _copy_first(arr, None, exc)
            raise type(exc)(f"tensor {names[i]!r}: {exc}") from None
        members.append(i)
    items = np.zeros(n, dtype=_QUANTIZE_ITEM)
    items["input"] = _pointer_values(inputs)
    results: list[Any] = [None] * n
    for plan, members in families.items():
        whole = len(members) == n  # one family (the common case): no gather and scatter
        rows = items if whole else items[members]
        rows["dtype"], rows["bits"], rows["group_size"] = plan.code, plan.bits, plan.group_size
        rows["input_len"], rows["row_len"] = plan.size, plan.row_len
        rows["codes_len"], rows["scales_len"], rows["mins_len"] = plan.codes_len, plan.n_groups, plan.n_groups
        rows["method"], rows["scale_dtype"], rows["axis"] = plan.method, plan.scale_dtype, plan.axis
        if outs is None:
            _carve(plan, members, rows, results)
        else:
            given: list[Any] = []
            reuse, extend = plan.reuse, given.extend
            for i in members:
                try:
                    results[i], *arrs = reuse(outs[i])
                except QuantizeError as exc:
                    raise type(exc)(f"tensor {names[i]!r}: {exc}") from None
                extend(arrs)
            at = _addresses(given).reshape(-1, 3)
            rows["codes"], rows["scales"], rows["mins"] = at[:, 0], at[:, 1], at[:, 2]
        if not whole:
            items[members] = rows
    weights = []  # kept alive until the call returns
    index = {name: i for i, name in enumerate(names)} if importance else {}
    for name, w in (importance or {}).items():
        if name not in index:
            raise QuantizeError(f"importance names {name!r}, which is not a tensor of layers")
        i = index[name]
        try:
            weights.append(_importance(w))
        except QuantizeError as exc:
            raise type(exc)(f"tensor {name!r}: {exc}") from None
        items[i]["importance"], items[i]["importance_len"] = _address(weights[-1]), weights[-1].size
    try:
        call_batch(lib.pq_quantize_batch, ffi.from_buffer("PqQuantizeItem[]", items), names, c_threads(threads))
    except MisalignedError:
        for i, arr in enumerate(arrays):  # as in quantize_ptr, a misaligned input is a CopyRequiredError
            if not arr.flags.aligned:
                try:
                    _check_in_place(arr, None)
                except QuantizeError as exc:
                    raise type(exc)(f"tensor {names[i]!r}: {exc}") from None
        raise
    return dict(zip(names, results)) if as_dict else results


def _importance(w: npt.ArrayLike) -> np.ndarray[Any, Any]:
    """Per-column weights as a 1-D float32 array (C checks length and values)."""
    arr = np.ascontiguousarray(w, dtype=np.float32)
    if arr.ndim != 1:
        raise InvalidImatrixError(f"importance must be 1-D (one weight per column), got shape {arr.shape}")
    return arr


def axis_code(axis: Any, shape: tuple[int, ...] | None) -> int:
    """The C code (``PQ_AXIS_*``) of ``axis`` for a tensor of ``shape``:
    -1 for any tensor, 0 only for a 2-D one (``shape`` None: not checked
    here; the Arrow path checks each tensor's shape in Rust)."""
    if type(axis) is int and axis == -1:
        return int(lib.PQ_AXIS_LAST)
    if type(axis) is not int or axis != 0:
        raise InvalidSchemeError(f"axis must be -1 (groups along rows) or 0 (along columns), got {axis!r}")
    if shape is not None and len(shape) != 2:
        raise ShapeError(f"axis=0 is for 2-D tensors; this one has shape {shape}")
    return int(lib.PQ_AXIS_FIRST)


def scheme_codes(method: Any, scale_dtype: Any) -> tuple[int, int]:
    """The C codes of a method and scale dtype name."""
    try:
        return METHODS[method], SCALE_DTYPES[scale_dtype]
    except (KeyError, TypeError):
        if method not in METHODS:
            raise InvalidSchemeError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}") from None
        raise InvalidSchemeError(
            f"scale_dtype must be one of {', '.join(map(repr, SCALE_DTYPES))}, got {scale_dtype!r}") from None


def _carve(plan: _Plan, members: list[int], rows: np.ndarray[Any, Any], results: list[Any]) -> None:
    """Fresh outputs of a family of ``k`` tensors: one block of ``k`` results
    end to end (each laid out as :meth:`_Plan.new`'s); their addresses go
    into ``rows``."""
    k, nbytes = len(members), plan.nbytes
    block = _fresh_block(k * nbytes)
    at = np.uintp(_address(block)) + np.arange(k, dtype=np.uintp) * np.uintp(nbytes)
    rows["scales"], rows["mins"], rows["codes"] = at, at + np.uintp(4 * plan.n_groups), at + np.uintp(8 * plan.n_groups)
    meta, new = plan.meta, _new
    for j, i in enumerate(members):  # per tensor: only the object; its arrays are made when first used
        qt = results[i] = new(QuantizedTensor)
        qt._meta, qt._block, qt._at = meta, block, j * nbytes  # no tuple: fewer objects for the GC to count


def _unpack_out(out: Any, names: list[Any], as_dict: bool) -> list[Any]:
    """``out`` of :func:`quantize_batch` as a list in the order of ``names``."""
    if as_dict:
        if not isinstance(out, Mapping):
            raise QuantizeError(f"out must be a mapping like layers, got {type(out).__name__}")
        missing = [name for name in names if name not in out]
        if missing:
            raise QuantizeError(f"out has no tensor {missing[0]!r}")
        return [out[name] for name in names]
    if isinstance(out, Mapping) or not isinstance(out, Sequence) or len(out) != len(names):
        raise QuantizeError(f"out must be a sequence of {len(names)} outputs, like layers")
    return list(out)


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
        keep_alive += _dequantize_item(items[i], qt, code, out)
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
    name, code = _resolve_dtype(arr.dtype, dtype)
    problem = in_place_problem(arr)
    if problem is not None:
        what, fix = problem
        raise CopyRequiredError(f"{what}; quantize_ptr never copies: use quantize_copy, or {fix}")
    return name, code


def _copy_first(arr: np.ndarray[Any, Any], dtype: DTypeLike, exc: ValueError) -> ValueError:
    """The error to raise for ``arr`` when building its plan or exporting its
    buffer raised ``exc``: a layout that needs a copy is named first, as it
    is checked first (the plan is only looked up first because that is
    cheaper)."""
    try:
        _check_in_place(arr, dtype)
    except CopyRequiredError as copy_error:
        return copy_error
    except QuantizeError:
        pass
    return exc


def in_place_problem(arr: np.ndarray[Any, Any]) -> tuple[str, str] | None:
    """Why the zero-copy path cannot read ``arr`` as it is, and the fix, as
    ``(what, fix)``: non-native byte order, not C-contiguous, or misaligned.
    None if it can. The one definition of "needs a copy", shared by
    :func:`quantize_ptr`, :func:`quantize_batch` and the dispatch of
    :func:`pyquant.quantize`."""
    if not arr.dtype.isnative:
        return _byte_order_problem(arr.dtype)
    if not arr.flags.c_contiguous:
        return ("the array is not C-contiguous (a strided or transposed view)",
                "np.ascontiguousarray(arr)")
    if not arr.flags.aligned:
        return (f"the array's data at address {arr.ctypes.data:#x} is not aligned to "
                f"{arr.dtype.itemsize} bytes", "arr.copy()")
    return None


def _byte_order_problem(dt: np.dtype[Any]) -> tuple[str, str]:
    return (f"the array's byte order is {_byte_order_name(dt)}, not the machine's",
            "arr.astype(arr.dtype.newbyteorder('='))")


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


def _dequantize_output(qt: QuantizedTensor, dtype: DTypeLike,
                       out: np.ndarray[Any, Any] | None = None) -> tuple[int, np.ndarray[Any, Any]]:
    """The C dtype code and the output array: ``out`` (checked), or a fresh one."""
    name = qt.dtype if dtype is None else _dtype_name(np.dtype(dtype))
    want = _QUANTIZABLE[name].numpy
    if out is None:
        return _C_CODE[name], np.empty(qt.shape, dtype=want)
    _check_output("out", out, want, tuple(qt.shape))
    return _C_CODE[name], out


def _dequantize_args(qt: QuantizedTensor) -> tuple[Any, ...]:
    """codes, scales, mins (pointer, length) and row_len, bits, group_size."""
    return (
        ffi.from_buffer("uint8_t[]", qt.codes), qt.codes.size,
        ffi.from_buffer("float[]", qt.scales), qt.scales.size,
        ffi.from_buffer("float[]", qt.mins), qt.mins.size,
        (qt.shape[0] if qt.axis == 0 else qt.shape[-1]) if qt.shape else 0,
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


def _resolve_dtype(arr_dtype: np.dtype[Any], dtype: DTypeLike) -> tuple[str, int]:
    """The dtype name and C code the kernel reads an array of ``arr_dtype`` as."""
    if dtype is not None and _is_bfloat16_request(dtype):
        if arr_dtype.kind == "u" and arr_dtype.itemsize == 2:
            return "bfloat16", _C_CODE["bfloat16"]
        if arr_dtype == BFLOAT16 or arr_dtype == BFLOAT16.newbyteorder("S"):
            return "bfloat16", _C_CODE["bfloat16"]
        raise UnsupportedDtypeError(
            f"dtype='bfloat16' needs a uint16 or bfloat16 array, got {arr_dtype}"
        )
    known = _NATIVE_DTYPES.get(arr_dtype)
    if known is not None and dtype is None:
        return known
    name = _dtype_name(arr_dtype)
    if dtype is not None and _dtype_name(np.dtype(dtype)) != name:
        raise UnsupportedDtypeError(f"dtype={dtype!r} does not match the array's dtype {arr_dtype}")
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
    if _exports_buffer(arr.dtype):
        return arr
    return arr.view(np.uint8) if arr.ndim else arr.reshape(1).view(np.uint8)


def _exports_buffer(dt: np.dtype[Any]) -> bool:
    """Whether numpy exports a buffer of this dtype to CFFI."""
    return dt.char in "efBHb?"  # float32 'f', float16 'e', and plain ints


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


class _Plan:
    """Everything about quantizing one (dtype, shape, bits, group_size) that
    does not depend on the values: C codes, lengths, output shapes, and the
    record type of the one output block. Built once, cached (see :func:`_plan`)."""

    __slots__ = ("code", "size", "row_len", "bits", "group_size", "codes_len", "n_groups", "codes_shape",
                 "groups_shape", "exports", "nbytes", "block_type", "meta", "method", "scale_dtype", "axis", "plain")

    def __init__(self, arr_dtype: np.dtype[Any], shape: tuple[int, ...], bits: int, group_size: int | None,
                 dtype: DTypeLike, method: str = "minmax", scale_dtype: str = "float32", axis: int = -1) -> None:
        self.method, self.scale_dtype = scheme_codes(method, scale_dtype)
        self.axis = axis_code(axis, tuple(shape))
        self.plain = not (self.method or self.scale_dtype or self.axis)  # what pq_quantize_block does
        name, self.code = _resolve_dtype(arr_dtype, dtype)
        if not arr_dtype.isnative:
            problem = _byte_order_problem(arr_dtype)
            raise CopyRequiredError(f"{problem[0]}; quantize_ptr never copies: use quantize_copy, or {problem[1]}")
        # With axis 0 the outputs are those of the transpose, rows of shape[0].
        grouped = tuple(shape[::-1]) if self.axis else tuple(shape)
        self.codes_shape, self.groups_shape, self.bits, self.group_size = quantized_layout(grouped, bits, group_size)
        self.size, self.row_len = math.prod(shape), grouped[-1]
        self.codes_len, self.n_groups = math.prod(self.codes_shape), math.prod(self.groups_shape)
        self.exports = _exports_buffer(arr_dtype)
        # One block per result: scales, then mins, then codes (the layout of
        # pq_quantize_block); every offset a multiple of 4, and the size too,
        # so that the results of a family, end to end, keep their floats aligned.
        floats = -(-(8 * self.n_groups + self.codes_len) // 4)
        self.nbytes = 4 * floats
        self.block_type = ffi.typeof(f"float[{floats}]")  # a parsed C type: the cheapest allocation
        self.meta = _Meta(tuple(shape), name, self.bits, self.group_size, method, scale_dtype, axis,
                          self.codes_shape, self.groups_shape, self.n_groups)

    def new(self) -> tuple[QuantizedTensor, Any]:
        """A result over one fresh block (a CFFI ``float[]``: no buffer
        export needed to pass it to C), and the block; its arrays are made
        when first used."""
        block = _alloc(self.block_type)
        qt = _new(QuantizedTensor)
        qt._meta, qt._block = self.meta, block
        return qt, block

    def pointers(self, block: Any) -> tuple[Any, Any, Any]:
        """The C pointers to the codes, scales and mins in ``block`` (a CFFI ``float[]``)."""
        n = self.n_groups
        return ffi.cast("uint8_t *", block + 2 * n), block, block + n

    def reuse(self, out: Out) -> tuple[QuantizedTensor, np.ndarray[Any, Any], np.ndarray[Any, Any],
                                       np.ndarray[Any, Any]]:
        """A result over the caller's arrays ``out``, and those arrays,
        checked for what the C ABI cannot see: dtype, shape, strides,
        writability."""
        if isinstance(out, QuantizedTensor):
            codes, scales, mins = out.codes, out.scales, out.mins
        elif isinstance(out, tuple) and len(out) == 3:
            codes, scales, mins = out
        else:
            raise QuantizeError(f"out must be a QuantizedTensor or a tuple (codes, scales, mins), got {type(out).__name__}")
        groups = self.groups_shape
        # The common case in one expression (this runs per tensor of a
        # batch); anything else goes through the checks that name the problem.
        if not (type(codes) is np.ndarray and type(scales) is np.ndarray and type(mins) is np.ndarray
                and codes.dtype is _U8 and scales.dtype is _F32 and mins.dtype is _F32
                and codes.shape == self.codes_shape and scales.shape == groups and mins.shape == groups
                and (f := codes.flags).c_contiguous and f.writeable and (f := scales.flags).c_contiguous
                and f.writeable and (f := mins.flags).c_contiguous and f.writeable):
            _check_output("out codes", codes, _U8, self.codes_shape)
            _check_output("out scales", scales, _F32, groups)
            _check_output("out mins", mins, _F32, groups)
        qt = _new(QuantizedTensor)
        qt._meta, qt._codes, qt._scales, qt._mins = self.meta, codes, scales, mins
        return qt, codes, scales, mins


_U8, _F32 = np.dtype(np.uint8), np.dtype(np.float32)
_alloc = ffi.new_allocator(should_clear_after_alloc=False)  # C writes every byte a result views
# The storage of the last large output block that was freed, kept for the
# next one of about its size: its pages are already mapped, where a fresh
# block's fault in at first touch (zeroed by the kernel; about a third of a
# 100-tensor batch's time on this machine). At most one block is kept, of at
# most _RECYCLE_MAX bytes (a larger one would hold too much memory idle).
_RECYCLE_MIN, _RECYCLE_MAX = 1 << 20, 256 << 20
_spare: list[np.ndarray[Any, Any]] = []


def _fresh_block(nbytes: int) -> np.ndarray[Any, Any]:
    """A uint8 array of ``nbytes`` uninitialized bytes for outputs. A large
    one reuses the spare storage when it fits (``nbytes`` up to twice as
    large as needed); when the array and every view of it are gone, its
    storage becomes the spare."""
    if not _RECYCLE_MIN <= nbytes <= _RECYCLE_MAX:
        return np.empty(nbytes, np.uint8)
    try:
        storage = _spare.pop()
    except IndexError:  # none, or another thread took it
        storage = None
    if storage is None or not nbytes <= storage.size <= 2 * nbytes:
        storage = None  # freed before allocating: peak memory
        storage = np.empty(nbytes, np.uint8)
    block = np.frombuffer(storage.data[:nbytes], np.uint8)
    # Every view of the block keeps the block alive (numpy ends a view's chain
    # of bases at an array whose base is not an array, as here).
    weakref.finalize(block, _spare_storage, storage).atexit = False
    return block


def _spare_storage(storage: np.ndarray[Any, Any]) -> None:
    _spare[:] = [storage]


_new = object.__new__
Out = Union["QuantizedTensor", tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]], None]
_PLANS: dict[tuple[Any, ...], _Plan] = {}
_MAX_PLANS = 4096


def _plan(arr_dtype: np.dtype[Any], shape: tuple[int, ...], bits: Any, group_size: Any, dtype: DTypeLike,
          method: Any = "minmax", scale_dtype: Any = "float32", axis: Any = -1) -> _Plan:
    """The cached :class:`_Plan` (errors are raised, never cached). The key
    has the types of ``bits`` and ``group_size``, since ``4.0 == 4``."""
    key = (arr_dtype, shape, bits, type(bits), group_size, type(group_size), dtype, method, scale_dtype, axis,
           type(axis))
    try:
        return _PLANS[key]
    except KeyError:
        plan = _PLANS[key] = _Plan(arr_dtype, shape, bits, group_size, dtype, method, scale_dtype, axis)
        if len(_PLANS) > _MAX_PLANS:
            _PLANS.clear()
        return plan
    except TypeError:  # an unhashable argument: not cached
        return _Plan(arr_dtype, shape, bits, group_size, dtype, method, scale_dtype, axis)


def _check_output(what: str, arr: Any, want: np.dtype[Any], shape: tuple[int, ...]) -> None:
    """A caller-provided output: a writable, C-contiguous numpy array of
    dtype ``want`` and ``shape``."""
    if not isinstance(arr, np.ndarray) or arr.dtype != want:
        got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise UnsupportedDtypeError(f"{what} must be a numpy {want} array, got {got}")
    if arr.shape != shape:
        raise ShapeError(f"{what} has shape {arr.shape}, the result has {shape}")
    if not arr.flags.c_contiguous:
        raise CopyRequiredError(f"{what} must be C-contiguous")
    if not arr.flags.writeable:
        raise QuantizeError(f"{what} is read-only")


def _addresses(arrays: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """The data addresses of many arrays, as uintp."""
    return _pointer_values([ffi.from_buffer(a) for a in arrays])


def _pointer_values(pointers: list[Any]) -> np.ndarray[Any, Any]:
    """Many C pointers as uintp: through one C array of them, cheaper than
    one ``int()`` each."""
    if not pointers:
        return np.zeros(0, np.uintp)
    return np.frombuffer(ffi.buffer(ffi.new("void *[]", pointers)), np.uintp)


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
    "method": np.uint32, "scale_dtype": np.uint32, "importance": np.uintp, "importance_len": np.uintp,
    "axis": np.uint32,
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

"""One front door: :func:`quantize` picks the path for its input, and
:func:`explain` says which path that is, why, and what it copies.

Both go through one decision function (``_decide``), so what
:func:`explain` reports is what :func:`quantize` does. The rules, in order
(input -> path: input bytes copied):

- ``str`` / ``os.PathLike`` -> ``file``: an Arrow IPC file (magic
  ``ARROW1``) goes to :func:`quantize_arrow_file`, a ``.safetensors`` file
  or sharded model directory to :func:`quantize_file`. 0 (a hand-made
  safetensors file's misaligned tensors: their bytes, via ``quantize_copy``).
- a numpy array, C-contiguous, aligned, native byte order -> ``ptr``: 0.
- any other numpy array, or an array-like -> ``copy``: the input's nbytes
  (Rust's copy), plus nbytes for numpy's contiguous / native-order copy of
  a strided or byte-swapped array, plus nbytes for ``np.asarray``'s
  conversion of an array-like that is not a numpy array.
- an object with ``__arrow_c_array__`` / ``__arrow_c_stream__`` -> ``arrow``: 0.
- a mapping name -> array, or a list / tuple of numpy arrays -> ``batch``: 0.

``batch`` never copies: with ``path="auto"``, a mapping or list holding an
array that needs a copy still goes to ``batch``; :func:`explain` names that
tensor in its reason, and :func:`quantize` raises :class:`CopyRequiredError`
naming it (make it contiguous first, or quantize it alone).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, overload

import numpy as np
import numpy.typing as npt

from .arrow import check_input_type, quantize_arrow
from .formats import is_arrow
from .pipeline import Summary, quantize_arrow_file, quantize_file
from .plan import check_options, plan_tensors
from ._call import c_threads
from .core import (
    DTypeLike,
    axis_code,
    Params,
    QuantizedTensor,
    _check_in_place as check_in_place,
    _params_for as params_for,
    _resolve_dtype as resolve_dtype,
    copy_plan,
    in_place_problem,
    quantize_batch,
    quantize_copy,
    quantize_ptr,
    quantized_layout,
)
from .errors import CopyRequiredError, PathError, QuantizeError
from .safetensors_io import Checkpoint

PathName = Literal["ptr", "copy", "batch", "arrow", "file"]
PathArg = Literal["auto", "ptr", "copy", "batch", "arrow", "file"]
PATHS: tuple[str, ...] = ("auto", "ptr", "copy", "batch", "arrow", "file")
StrPath = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class PathChoice:
    """What :func:`quantize` does with an input (see :func:`explain`).

    ``path``: ``"ptr"``, ``"copy"``, ``"batch"``, ``"arrow"`` or ``"file"``.
    ``reason``: why, in words. ``bytes_copied``: bytes of the input copied
    before the kernel reads them (0 for the zero-copy paths; outputs are
    not counted). ``parallelism``: how the work is spread over threads.
    """

    path: PathName
    reason: str
    bytes_copied: int
    parallelism: str


@dataclass(frozen=True)
class _Decision:
    choice: PathChoice
    data: Any  # the input as the chosen path's function takes it
    arrow_file: bool = False


def _threads_text(threads: int | None) -> str:
    return "all cores" if threads is None else f"{threads} thread{'s' if threads != 1 else ''}"


def _kind(x: object) -> str:
    if isinstance(x, (str, os.PathLike)):
        return "file"
    if isinstance(x, np.ndarray):
        return "array"
    if hasattr(x, "__arrow_c_array__") or hasattr(x, "__arrow_c_stream__"):
        return "arrow"
    if isinstance(x, Mapping):
        return "batch"
    if isinstance(x, (list, tuple)) and (not x or any(isinstance(e, np.ndarray) for e in x)):
        return "batch"
    return "array-like"


_KIND_NAMES = {
    "file": "a file path",
    "array": "a numpy array",
    "arrow": "an Arrow object",
    "batch": "a mapping or list of arrays",
    "array-like": "an array-like",
}
_PATHS_OF_KIND = {
    "file": ("file",),
    "array": ("ptr", "copy"),
    "arrow": ("arrow",),
    "batch": ("batch",),
    "array-like": ("copy",),
}


def _decide(
    x: object, path: str, threads: int | None, dtype: DTypeLike, params: Params,
    bits: int, group_size: int | None, axis: int = -1,
) -> _Decision:
    """The one decision function behind :func:`quantize` and :func:`explain`."""
    if path not in PATHS:
        raise PathError(f"path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    kind = _kind(x)
    allowed = _PATHS_OF_KIND[kind]
    if path != "auto" and path not in allowed:
        if path == "ptr" and kind == "array-like":
            raise CopyRequiredError(
                f"path='ptr' needs a numpy array, got {type(x).__name__}; "
                "use path='copy', or np.asarray(...) first"
            )
        raise PathError(
            f"path={path!r} does not take {_KIND_NAMES[kind]} ({type(x).__name__}); "
            f"it goes to {' or '.join(map(repr, allowed))}"
        )
    t = _threads_text(threads)
    decision = _decide_kind(kind, x, path, t, bits, group_size)
    chosen = decision.choice.path
    if dtype is not None and chosen not in ("ptr", "copy"):
        raise PathError(f"dtype= is only for a single array (ptr or copy path), not the {chosen} path")
    if params is not None and chosen != "batch":
        raise PathError(f"params= is only for the batch path, not the {chosen} path")
    if threads is not None and chosen == "file":
        raise PathError("threads= is not taken by the file path (it uses all cores)")
    _check_call(decision, bits, group_size, dtype, params, threads, axis)
    return decision


def _check_call(decision: _Decision, bits: int, group_size: int | None, dtype: DTypeLike,
                params: Params, threads: int | None, axis: int = -1) -> None:
    """The argument checks the chosen path's function runs before it reads
    any value, by the very functions it calls, so that :func:`explain`
    raises what :func:`quantize` would: the dtype (e.g. float64), bits,
    group size against the shape, threads, an Arrow object's type when it
    can be read without consuming the object (:func:`check_input_type`).
    Not the values (NaN, Inf)."""
    chosen, data = decision.choice.path, decision.data
    if chosen == "file":
        check_options(bits, group_size)  # quantize_file's first step
        axis_code(axis, None)
        return
    c_threads(threads)
    if chosen == "arrow":
        axis_code(axis, None)  # each tensor's shape is checked in Rust
        check_input_type(data)  # the type check pq_quantize_arrow runs first
    if chosen == "ptr":
        check_in_place(data, dtype)
        quantized_layout(_grouped(data.shape, axis), bits, group_size)
    elif chosen == "copy":
        resolve_dtype(data.dtype, dtype)
        quantized_layout(_grouped(data.shape or (1,), axis), bits, group_size)  # quantize_copy makes a 0-d array 1-d
    elif chosen == "batch":
        items = data.items() if isinstance(data, Mapping) else enumerate(data)
        for name, arr in items:
            if not isinstance(arr, np.ndarray) or in_place_problem(arr) is not None:
                continue  # the CopyRequiredError the reason announces
            b, g = params_for(name, bits, group_size, params)
            try:
                resolve_dtype(arr.dtype, None)
                quantized_layout(_grouped(arr.shape, axis), b, g)
            except QuantizeError as exc:  # named as quantize_batch names it
                raise type(exc)(f"tensor {name!r}: {exc}") from None


def _grouped(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """The shape whose rows are grouped: ``shape`` reversed for axis 0."""
    return tuple(shape[::-1]) if axis_code(axis, tuple(shape)) else tuple(shape)


def _decide_kind(kind: str, x: Any, path: str, t: str, bits: int, group_size: int | None) -> _Decision:
    if kind == "array":
        problem = in_place_problem(x)
        if problem is None and path != "copy":
            return _Decision(PathChoice(
                "ptr", "a C-contiguous, aligned, native-order numpy array: read in place",
                0, f"one native call, GIL released; a large tensor split across {t}"), x)
        if problem is not None and path == "ptr":
            what, fix = problem
            raise CopyRequiredError(f"path='ptr': {what}; the ptr path never copies: "
                                    f"use path='copy' (or 'auto'), or {fix}")
        why = "path='copy' was asked for" if problem is None else f"{problem[0]}: the ptr path cannot read it in place"
        return _copy_decision(x, 0, why, t)
    if kind == "array-like":
        a = np.asarray(x)
        converted = a.nbytes if a.flags.owndata else 0  # numpy made new memory for it
        return _copy_decision(a, converted, f"not a numpy array ({type(x).__name__}): converted by np.asarray", t)
    if kind == "arrow":
        return _Decision(PathChoice(
            "arrow", "an Arrow object (PyCapsule interface): values read in place", 0,
            f"one native call per record batch, all tensors of a batch across {t}, GIL released"), x)
    if kind == "batch":
        return _batch_decision(x, t)
    return _file_decision(os.fspath(x), bits, group_size)


def _copy_decision(a: np.ndarray[Any, Any], converted: int, why: str, t: str) -> _Decision:
    numpy_bytes, rust_bytes = copy_plan(a)
    parts = [f"{converted} B np.asarray conversion"] if converted else []
    if numpy_bytes:
        parts.append(f"{numpy_bytes} B numpy contiguous/native-order copy")
    parts.append(f"{rust_bytes} B copied into Rust memory")
    return _Decision(PathChoice(
        "copy", f"{why}; copies: {', '.join(parts)}", converted + numpy_bytes + rust_bytes,
        f"the copy on one thread, then one native call across {t}, GIL released"), a)


def _batch_decision(x: Mapping[Any, Any] | Sequence[Any], t: str) -> _Decision:
    items = x.items() if isinstance(x, Mapping) else enumerate(x)
    reason = f"{len(x)} tensors, one native call, every input read in place"
    for name, arr in items:
        if not isinstance(arr, np.ndarray):
            problem = f"it is a {type(arr).__name__}, not a numpy array"
        else:
            found = in_place_problem(arr)
            if found is None:
                continue
            problem = found[0]
        reason += (f"; but tensor {name!r} needs a copy ({problem}): the batch path never copies, "
                   "so quantize() raises CopyRequiredError; make it contiguous first or "
                   "quantize it alone with path='copy'")
        break
    return _Decision(PathChoice(
        "batch", reason, 0,
        f"one native call for all tensors, across tensors and the groups of large ones, on {t}, "
        "GIL released"), x)


def _file_decision(src: str, bits: int, group_size: int | None) -> _Decision:
    if is_arrow(src):
        return _Decision(PathChoice(
            "file", "an Arrow IPC file (magic ARROW1): quantize_arrow_file, memory-mapped, batch by batch",
            0, "one native call per record batch, all cores, GIL released"), src, arrow_file=True)
    copied = 0
    with Checkpoint(src) as ckpt:  # reads the headers only; the CheckpointError for a bad file
        for plan in plan_tensors(ckpt, bits=bits, group_size=group_size):
            if plan.bits is not None and not ckpt.array(plan.name).flags.aligned:
                copied += plan.nbytes  # quantize_file sends a misaligned tensor to quantize_copy
    note = "" if not copied else "; misaligned tensors go through quantize_copy"
    return _Decision(PathChoice(
        "file", f"a safetensors file or model directory: quantize_file, memory-mapped, in place{note}",
        copied, "runs of consecutive tensors, one quantize_batch call per run on all cores"), src)


def explain(
    x: object,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    path: PathArg = "auto",
    threads: int | None = None,
    dtype: DTypeLike = None,
    params: Params = None,
) -> PathChoice:
    """Which path :func:`quantize` takes for ``x`` with these arguments, why,
    the input bytes it copies first, and its parallelism; nothing is quantized.

    The same decision function as :func:`quantize`, so it raises what that
    decision raises: :class:`PathError` for an input that does not fit a
    forced ``path`` (or an argument the path does not take),
    :class:`CopyRequiredError` for ``path="ptr"`` on an array that needs a
    copy, and :class:`CheckpointError` for a file that cannot be read (the
    safetensors header is read to count misaligned tensors). It also runs
    the checks the chosen path runs before reading any value, with the same
    functions, and raises the error :func:`quantize` would:
    :class:`UnsupportedDtypeError` (a float64 array, say),
    :class:`InvalidBitsError`, :class:`InvalidGroupSizeError` and
    :class:`ShapeError` (the group size against the shape), a bad
    ``threads``. Copies: an array-like that is not a numpy array is
    converted with ``np.asarray`` (to count its bytes); nothing else. The
    values themselves are not read (NaN and Inf are found by
    :func:`quantize`). An Arrow object's type is checked by the Rust check
    :func:`quantize_arrow` runs (float64 weights, a missing column) when it
    can be read without consuming the object: arrays and pyarrow
    Tables, readers and chunked arrays; other streams (polars, duckdb,
    nanoarrow) are checked as they are read.
    """
    return _decide(x, path, threads, dtype, params, bits, group_size).choice


@overload
def quantize(x: np.ndarray[Any, Any], *, bits: int = ..., group_size: int | None = ...,
             path: PathArg = ..., threads: int | None = ..., dtype: DTypeLike = ...,
             params: Params = ..., method: str = ..., scale_dtype: str = ..., dst: None = ..., force: bool = ..., axis: int = ...,
             importance: Any = ...) -> QuantizedTensor: ...
@overload
def quantize(x: Mapping[str, np.ndarray[Any, Any]], *, bits: int = ..., group_size: int | None = ...,
             path: PathArg = ..., threads: int | None = ..., dtype: DTypeLike = ...,
             params: Params = ..., method: str = ..., scale_dtype: str = ..., dst: None = ..., force: bool = ..., axis: int = ...,
             importance: Any = ...) -> dict[str, QuantizedTensor]: ...
@overload
def quantize(x: list[np.ndarray[Any, Any]] | tuple[np.ndarray[Any, Any], ...], *, bits: int = ...,
             group_size: int | None = ..., path: PathArg = ..., threads: int | None = ...,
             dtype: DTypeLike = ..., params: Params = ..., method: str = ..., scale_dtype: str = ..., dst: None = ...,
             force: bool = ..., axis: int = ..., importance: Any = ...) -> list[QuantizedTensor]: ...
@overload
def quantize(x: StrPath, *, bits: int = ..., group_size: int | None = ..., path: PathArg = ...,
             threads: int | None = ..., dtype: DTypeLike = ..., params: Params = ...,
             dst: StrPath, force: bool = ...) -> Summary: ...
@overload
def quantize(x: npt.ArrayLike | object, *, bits: int = ..., group_size: int | None = ...,
             path: PathArg = ..., threads: int | None = ..., dtype: DTypeLike = ...,
             params: Params = ..., method: str = ..., scale_dtype: str = ..., dst: StrPath | None = ..., force: bool = ...,
             axis: int = ..., importance: Any = ...) -> Any: ...


def quantize(
    x: object,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    path: PathArg = "auto",
    threads: int | None = None,
    dtype: DTypeLike = None,
    params: Params = None,
    method: str = "minmax",
    scale_dtype: str = "float32",
    dst: StrPath | None = None,
    force: bool = False,
    axis: int = -1,
    importance: Any = None,
) -> Any:
    """Quantizes ``x`` by the path that fits it (or the one forced with ``path=``).

    ``path="auto"`` picks, in this order (:func:`explain` tells which and why):

    - ``str`` / ``os.PathLike``: ``"file"``. An Arrow IPC file (magic
      ``ARROW1``) goes to :func:`quantize_arrow_file`, a ``.safetensors``
      file or sharded model directory to :func:`quantize_file`; both return
      a :class:`Summary`. ``dst`` (the output file) is required;
      ``force=True`` replaces an existing one.
    - a C-contiguous, aligned, native-order numpy array: ``"ptr"``
      (:func:`quantize_ptr`, zero-copy) -> :class:`QuantizedTensor`.
    - any other numpy array (strided, byte-swapped, misaligned) or
      array-like: ``"copy"`` (:func:`quantize_copy`) -> :class:`QuantizedTensor`.
    - an object with ``__arrow_c_array__`` / ``__arrow_c_stream__``:
      ``"arrow"`` (:func:`quantize_arrow`) -> a pyarrow RecordBatch, Table
      or RecordBatchReader.
    - a mapping name -> array, or a list / tuple of numpy arrays: ``"batch"``
      (:func:`quantize_batch`, ``params`` for per-tensor bits and group
      size) -> a dict or list of :class:`QuantizedTensor`.

    ``method``, ``scale_dtype`` and ``axis`` (see :func:`quantize_ptr`) are
    for every path (Arrow results and files carry them in their schema,
    safetensors checkpoints in their metadata). ``importance`` (per-column
    weights for ``method="search"``) is one array for the ptr and copy
    paths, a mapping tensor name -> array for batch (as
    :func:`quantize_batch`) and arrow (as :func:`quantize_arrow`); the
    file path does not take it (:class:`PathError`).
    ``dtype`` (e.g. ``"bfloat16"`` for uint16 bit patterns) is for the
    single-array paths only, ``params`` for ``batch`` only, ``threads``
    for every path but ``file``; giving one to another path is a
    :class:`PathError`.

    Copies: those of the path taken (``explain(x).bytes_copied``): none for
    ptr, batch, arrow and file (except misaligned tensors of a hand-made
    safetensors file); for copy, the input once into Rust memory, plus one
    numpy copy for a strided or byte-swapped array and one conversion for
    an array-like that is not a numpy array.

    Parallelism: that of the path taken; all cores by default
    (``threads=None``), the GIL released during native calls; the bytes
    are the same for every thread count.

    Raises: :class:`PathError` (unknown ``path``, an input that does not
    fit the forced path, ``dst`` missing for a file or given for anything
    else, an argument the path does not take); :class:`CopyRequiredError`
    (``path="ptr"`` on an array that needs a copy; the batch path when a
    tensor needs one, naming it); and whatever the chosen path's function
    raises (every error a :class:`QuantizeError`).
    """
    decision = _decide(x, path, threads, dtype, params, bits, group_size, axis)
    chosen, data = decision.choice.path, decision.data
    if chosen == "file":
        if importance is not None:
            raise PathError("importance= is not taken by the file path: quantize the tensors with path='batch' "
                            "or quantize_arrow")
        if dst is None:
            raise PathError(f"quantize({data!r}) writes a quantized checkpoint: pass dst='output path'")
        if decision.arrow_file:
            return quantize_arrow_file(data, dst, bits=bits, group_size=group_size, force=force, method=method,
                                       scale_dtype=scale_dtype, axis=axis)
        return quantize_file(data, dst, bits=bits, group_size=group_size, force=force, method=method,
                             scale_dtype=scale_dtype, axis=axis)
    if dst is not None or force:
        raise PathError(f"dst= and force= are only for file inputs, not the {chosen} path")
    if chosen == "ptr":
        return quantize_ptr(data, bits=bits, group_size=group_size, dtype=dtype, threads=threads, method=method,
                            scale_dtype=scale_dtype, axis=axis, importance=importance)
    if chosen == "copy":
        return quantize_copy(data, bits=bits, group_size=group_size, dtype=dtype, threads=threads, method=method,
                             scale_dtype=scale_dtype, axis=axis, importance=importance)
    if chosen == "batch":
        return quantize_batch(data, bits=bits, group_size=group_size, params=params, threads=threads, method=method,
                              scale_dtype=scale_dtype, axis=axis, importance=importance)
    return quantize_arrow(data, bits=bits, group_size=group_size, threads=threads, method=method, scale_dtype=scale_dtype,
                          axis=axis, importance=importance)

"""The one way Python calls the C ABI (the pattern of symbolic's ``rustcall``).

Every fallible C function takes a caller-allocated ``PqError *`` last and
returns a ``PqStatus``. :func:`call` supplies the error struct, makes the
call and turns a non-OK status into the exception of :data:`_BY_STATUS`
with the native message; :func:`call_batch` does the same for the batch
functions and puts the failing tensor's name (from ``failed_item``) in
front of the message. Nothing else in the package allocates a ``PqError``
or looks at a status.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._lib import ffi, lib
from .errors import (
    ArrowDataError,
    BufferSizeError,
    InternalError,
    InvalidBitsError,
    InvalidGroupSizeError,
    InvalidImatrixError,
    InvalidSchemeError,
    MisalignedError,
    NonFiniteError,
    NullPointerError,
    OverlapError,
    QuantizeError,
    ShapeError,
    SizeOverflowError,
    UnsupportedDtypeError,
    UnsupportedGgmlTypeError,
)

# Each C status (include/pyquant.h, PQ_STATUS_*) -> its exception class. A
# status the header does not define (PQ_STATUS_INTERNAL before ABI 3) is
# left out; an unknown status from the library is an InternalError.
_STATUS_CLASSES: dict[str, type[QuantizeError]] = {
    "PQ_STATUS_PANIC": InternalError,
    "PQ_STATUS_INTERNAL": InternalError,
    "PQ_STATUS_NULL_POINTER": NullPointerError,
    "PQ_STATUS_MISALIGNED": MisalignedError,
    "PQ_STATUS_OVERLAP": OverlapError,
    "PQ_STATUS_BUFFER_TOO_SMALL": BufferSizeError,
    "PQ_STATUS_SIZE_OVERFLOW": SizeOverflowError,
    "PQ_STATUS_INVALID_BITS": InvalidBitsError,
    "PQ_STATUS_INVALID_GROUP_SIZE": InvalidGroupSizeError,
    "PQ_STATUS_SHAPE_MISMATCH": ShapeError,
    "PQ_STATUS_NON_FINITE": NonFiniteError,
    "PQ_STATUS_UNSUPPORTED_DTYPE": UnsupportedDtypeError,
    "PQ_STATUS_INVALID_ARROW": ArrowDataError,
    "PQ_STATUS_UNSUPPORTED_GGML_TYPE": UnsupportedGgmlTypeError,
    "PQ_STATUS_INVALID_IMATRIX": InvalidImatrixError,
    "PQ_STATUS_INVALID_SCHEME": InvalidSchemeError,
}
_BY_STATUS: dict[int, type[QuantizeError]] = {
    getattr(lib, name): cls for name, cls in _STATUS_CLASSES.items() if hasattr(lib, name)
}
_OK = lib.PQ_STATUS_OK
SIZE_MAX = 2**64 - 1

_per_thread = threading.local()


def error_struct() -> Any:
    """The calling thread's caller-allocated ``PqError``, for one C call.

    Reused per thread (each call overwrites it and it is read right after
    the call), which saves an allocation per call."""
    try:
        return _per_thread.error
    except AttributeError:
        _per_thread.error = ffi.new("PqError *")
        return _per_thread.error


def error_class(status: int) -> type[QuantizeError]:
    """The exception class of a (non-OK) C status."""
    return _BY_STATUS.get(status, InternalError)


def message(err: Any) -> str:
    """The native message in an error struct."""
    return str(ffi.string(err.message).decode("utf-8", "replace"))


def check(status: int, err: Any) -> None:
    """Raises the exception for ``status`` with the message in ``err``, if not OK."""
    if status != _OK:
        raise_for(status, err)


def raise_for(status: int, err: Any) -> None:
    """Raises the exception for a non-OK ``status`` with the message in ``err``
    (for callers that make the C call themselves, on their fast path)."""
    raise error_class(status)(message(err))


def call(function: Any, *args: Any) -> None:
    """``function(*args, err)``; raises the status's exception if not OK."""
    err = error_struct()
    check(function(*args, err), err)


def call_batch(function: Any, items: Any, names: Sequence[Any], threads: int) -> None:
    """``function(items, n, threads, failed_item, err)`` for a batch of
    ``len(names)`` items; an error names the tensor ``failed_item`` points at."""
    n = len(names)
    failed = ffi.new("size_t *")
    err = error_struct()
    status = function(items, n, threads, failed, err)
    if status == _OK:
        return
    if failed[0] < n:
        raise error_class(status)(f"tensor {names[failed[0]]!r}: {message(err)}")
    raise error_class(status)(message(err))


def c_threads(threads: int | None) -> int:
    """The C ABI's ``threads`` argument: 0 for all cores (None), else n >= 1."""
    if type(threads) is int and 1 <= threads <= SIZE_MAX:
        return threads
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= SIZE_MAX:
        raise QuantizeError(f"threads must be None (all cores) or a positive integer, got {threads!r}")
    return int(threads)

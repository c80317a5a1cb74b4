"""The exception hierarchy, and the one place C status codes become exceptions.

Every error pyquant raises is a :class:`QuantizeError` (a ``ValueError``).
Each C status has exactly one class, named by ``status_name``; Python-side
checks raise the same classes, plus :class:`CopyRequiredError`, which only
the zero-copy paths raise, and :class:`PathError`, which only
:func:`pyquant.quantize` raises.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from ._lib import ffi, lib


class QuantizeError(ValueError):
    """Base class of every pyquant error."""

    status_name: ClassVar[str | None] = None


class InternalError(QuantizeError):
    """A panic was caught inside the native library (a bug in pyquant)."""

    status_name = "PQ_STATUS_PANIC"


class NullPointerError(QuantizeError):
    """A NULL buffer with a non-zero length reached the C ABI."""

    status_name = "PQ_STATUS_NULL_POINTER"


class MisalignedError(QuantizeError):
    """A buffer is not aligned for its element type."""

    status_name = "PQ_STATUS_MISALIGNED"


class OverlapError(QuantizeError):
    """An output buffer shares memory with an input or another output."""

    status_name = "PQ_STATUS_OVERLAP"


class BufferSizeError(QuantizeError):
    """A buffer is too small, or an input's length does not match its layout."""

    status_name = "PQ_STATUS_BUFFER_TOO_SMALL"


class SizeOverflowError(QuantizeError):
    """A size computation overflowed."""

    status_name = "PQ_STATUS_SIZE_OVERFLOW"


class InvalidBitsError(QuantizeError):
    """``bits`` is not 2, 4 or 8."""

    status_name = "PQ_STATUS_INVALID_BITS"


class InvalidGroupSizeError(QuantizeError):
    """The group size is not usable (0, too large, or not filling whole bytes)."""

    status_name = "PQ_STATUS_INVALID_GROUP_SIZE"


class ShapeError(QuantizeError):
    """The tensor's shape does not fit the layout rules (e.g. ``K % G != 0``)."""

    status_name = "PQ_STATUS_SHAPE_MISMATCH"


class NonFiniteError(QuantizeError):
    """The input holds NaN or infinity, or a group's range overflows float32."""

    status_name = "PQ_STATUS_NON_FINITE"


class UnsupportedDtypeError(QuantizeError):
    """The input's dtype is not float32, float16 or bfloat16."""

    status_name = "PQ_STATUS_UNSUPPORTED_DTYPE"


class ArrowDataError(QuantizeError):
    """An Arrow input is released (already consumed), breaks the C Data
    Interface rules, holds nulls, or lacks a column pyquant needs."""

    status_name = "PQ_STATUS_INVALID_ARROW"


class UnsupportedGgmlTypeError(QuantizeError):
    """The GGML type is not one pyquant implements (see ``pyquant.gguf.SUPPORTED_TYPES``)."""

    status_name = "PQ_STATUS_UNSUPPORTED_GGML_TYPE"


class InvalidImatrixError(QuantizeError):
    """An importance matrix has the wrong length or a negative or non-finite entry."""

    status_name = "PQ_STATUS_INVALID_IMATRIX"


class CheckpointError(QuantizeError):
    """A file is missing, unreadable, malformed or inconsistent, or an output
    cannot be written."""


class CopyRequiredError(QuantizeError):
    """``quantize_ptr`` was given an input it could only use after a copy."""


class PathError(QuantizeError):
    """:func:`pyquant.quantize` was given an input that no path takes, or
    that does not fit the path forced with ``path=`` (a strided array forced
    onto ``path="ptr"`` raises :class:`CopyRequiredError` instead), or
    arguments that the chosen path does not take."""


_BY_STATUS: dict[int, type[QuantizeError]] = {
    getattr(lib, cls.status_name): cls
    for cls in QuantizeError.__subclasses__()
    if cls.status_name is not None
}


_per_thread = threading.local()


def new_error_struct() -> Any:
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


def check(status: int, error: Any) -> None:
    """Raises the exception for ``status`` with the native message, if not OK."""
    if status == lib.PQ_STATUS_OK:
        return
    raise error_class(status)(ffi.string(error.message).decode("utf-8", "replace"))

"""The exception hierarchy.

Every error pyquant raises is a :class:`QuantizeError` (a ``ValueError``).
Each C status has one class (the map is in ``pyquant._call``); Python-side
checks raise the same classes, plus :class:`CheckpointError` for files,
:class:`CopyRequiredError`, which only the zero-copy paths raise, and
:class:`PathError`, which only :func:`pyquant.quantize` raises.
"""

from __future__ import annotations


class QuantizeError(ValueError):
    """Base class of every pyquant error."""


class InternalError(QuantizeError):
    """The native library caught a panic or hit an internal error (a bug in pyquant)."""


class NullPointerError(QuantizeError):
    """A NULL buffer with a non-zero length reached the C ABI."""


class MisalignedError(QuantizeError):
    """A buffer is not aligned for its element type."""


class OverlapError(QuantizeError):
    """An output buffer shares memory with an input or another output."""


class BufferSizeError(QuantizeError):
    """A buffer is too small, or an input's length does not match its layout."""


class SizeOverflowError(QuantizeError):
    """A size computation overflowed."""


class InvalidBitsError(QuantizeError):
    """``bits`` is not 2, 3, 4 or 8."""


class InvalidGroupSizeError(QuantizeError):
    """The group size is not usable (0, too large, or not filling whole bytes)."""


class ShapeError(QuantizeError):
    """The tensor's shape does not fit the layout rules (e.g. ``K % G != 0``)."""


class NonFiniteError(QuantizeError):
    """The input holds NaN or infinity, or a group's range overflows float32."""


class UnsupportedDtypeError(QuantizeError):
    """The input's dtype is not float32, float16 or bfloat16."""


class ArrowDataError(QuantizeError):
    """An Arrow input is released (already consumed), breaks the C Data
    Interface rules, holds nulls, or lacks a column pyquant needs."""


class UnsupportedGgmlTypeError(QuantizeError):
    """The GGML type is not one pyquant implements (see ``pyquant.gguf.SUPPORTED_TYPES``)."""


class InvalidImatrixError(QuantizeError):
    """An importance matrix has the wrong length or a negative or non-finite entry."""


class InvalidSchemeError(QuantizeError):
    """The quantization ``method`` or ``scale_dtype`` is unknown, or
    importance weights were given to a method that does not use them."""


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

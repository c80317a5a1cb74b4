"""What happens to each tensor of a checkpoint, and why: quantized with
which bits and group size, or carried over unchanged with the reason.

Pure decisions from the tensors' names, dtypes and shapes; nothing is read
or written here (see :mod:`pyquant.pipeline` for that).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .core import SUPPORTED_DTYPES, quantized_layout
from .dtypes import BY_SAFETENSORS
from .errors import InvalidBitsError, InvalidGroupSizeError, QuantizeError
from .safetensors_io import Checkpoint


@dataclass(frozen=True)
class Plan:
    """What happens to one tensor: quantized with ``bits``/``group_size``, or kept (with why)."""

    name: str
    dtype: str  # safetensors code of the input
    shape: tuple[int, ...]
    nbytes: int
    bits: int | None = None
    group_size: int | None = None
    kept_because: str | None = None
    axis: int = -1  # 0: groups down the columns of a 2-D tensor

    @property
    def grouped_shape(self) -> tuple[int, ...]:
        """The shape whose rows are grouped: the transpose's with axis 0."""
        return tuple(self.shape[::-1]) if self.axis == 0 else tuple(self.shape)


BITS = (2, 3, 4, 8)


def check_options(bits: int, group_size: int | None,
                  bits_for: Mapping[str, int] | Sequence[tuple[str, int]] = ()) -> None:
    """Refuses, before any work, options no tensor could be quantized with:
    bits not 2, 3, 4 or 8 (``bits`` or a ``bits_for`` width), a group size that
    is not a positive integer, or one whose codes do not fill whole bytes
    (group size x bits must be a multiple of 8). Raises InvalidBitsError or
    InvalidGroupSizeError."""
    widths = [bits, *(bits_for.values() if isinstance(bits_for, Mapping) else (b for _, b in bits_for))]
    for b in widths:
        if isinstance(b, bool) or b not in BITS:
            raise InvalidBitsError(f"bits must be 2, 3, 4 or 8, got {b!r}")
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise InvalidGroupSizeError(f"group size must be a positive integer or 'row', got {group_size!r}")
    for b in sorted(set(widths)):
        if group_size * b % 8:
            raise InvalidGroupSizeError(f"group size {group_size} with {b}-bit codes does not fill whole bytes "
                                        "(group size x bits must be a multiple of 8)")


def plan_tensors(
    ckpt: Checkpoint,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    skip: Sequence[str] = (),
    bits_for: Mapping[str, int] | Sequence[tuple[str, int]] = (),
    keep_1d: bool = True,
    axis: int = -1,
) -> list[Plan]:
    """Decides, per tensor, whether it is quantized and how.

    Kept unchanged: tensors that are not float32/float16/bfloat16, 1-D
    tensors (biases, norms) when ``keep_1d``, tensors whose name matches a
    ``skip`` regular expression (``re.search``), and tensors whose last axis
    does not fit the group size. ``bits_for`` maps regular expressions to
    bit widths; the first match wins over ``bits``. With ``axis=0`` groups
    run down the columns of 2-D tensors (the group size must fit the first
    axis) and tensors of more axes are kept.
    """
    skip_res = [_regex(p, "--skip") for p in skip]
    rules = [(_regex(p, "--bits-for"), b) for p, b in (bits_for.items() if isinstance(bits_for, Mapping) else bits_for)]
    plans = []
    for name in ckpt.names():
        info = ckpt.info(name)
        base = (name, info.dtype, info.shape, info.nbytes)
        reason = None
        if not BY_SAFETENSORS[info.dtype].quantizable:
            reason = f"dtype {info.dtype} is not floating point ({', '.join(SUPPORTED_DTYPES)})"
        elif len(info.shape) < 2 and keep_1d:
            reason = "1-D (bias or norm)"
        elif any(r.search(name) for r in skip_res):
            reason = "matches --skip"
        elif math.prod(info.shape) == 0:
            reason = "empty"
        elif axis == 0 and len(info.shape) != 2:
            reason = "not 2-D (axis=0 groups the columns of 2-D tensors)"
        if reason:
            plans.append(Plan(*base, kept_because=reason))
            continue
        b = next((b for r, b in rules if r.search(name)), bits)
        try:
            _, _, b, g = quantized_layout(tuple(info.shape[::-1]) if axis == 0 else info.shape, b, group_size)
        except InvalidBitsError as exc:
            raise InvalidBitsError(f"tensor {name!r}: {exc}") from None
        except QuantizeError as exc:
            # A shape that doesn't fit the group size is carried over, not lost.
            plans.append(Plan(*base, kept_because=f"does not fit: {exc}"))
            continue
        plans.append(Plan(*base, bits=b, group_size=g, axis=axis))
    return plans


def _regex(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise QuantizeError(f"{what} pattern {pattern!r} is not a valid regular expression: {exc}") from None


def parse_bits_for(items: Iterable[str]) -> list[tuple[str, int]]:
    """``PATTERN=BITS`` strings (CLI ``--bits-for``) as (pattern, bits) pairs."""
    out = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern or not value.isdigit():
            raise QuantizeError(f"--bits-for expects PATTERN=BITS, got {item!r}")
        _regex(pattern, "--bits-for")
        out.append((pattern, int(value)))
    return out

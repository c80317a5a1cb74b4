"""The one table of element types pyquant knows, and every code each has.

Each :class:`Dtype` carries its name (numpy's, e.g. ``"float32"``), its
numpy dtype (little-endian, as the file formats store it), its safetensors
code (``"F32"``), its C ABI code (``PQ_DTYPE_*``; only the dtypes the
kernel quantizes have one) and its GGML tensor type id (GGUF files; None
where GGML has no such type). Everything else indexes this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ._lib import lib


@dataclass(frozen=True)
class Dtype:
    """One element type and its codes in numpy, safetensors, the C ABI and GGML."""

    name: str
    numpy: np.dtype[Any]
    safetensors: str
    c_code: int | None  # PQ_DTYPE_*: None if the kernel does not quantize it
    ggml_type: int | None  # ggml_type in GGUF files: None if GGML has no such type

    @property
    def quantizable(self) -> bool:
        """Whether the kernel quantizes this dtype (it has a C code)."""
        return self.c_code is not None

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# The quantizable float32, float16 and bfloat16, and the dtypes a checkpoint
# may carry over unchanged (every safetensors dtype numpy can hold).
ALL: tuple[Dtype, ...] = (
    Dtype("float64", np.dtype("<f8"), "F64", None, 28),
    Dtype("float32", np.dtype("<f4"), "F32", lib.PQ_DTYPE_F32, 0),
    Dtype("float16", np.dtype("<f2"), "F16", lib.PQ_DTYPE_F16, 1),
    Dtype("bfloat16", BFLOAT16, "BF16", lib.PQ_DTYPE_BF16, 30),
    Dtype("int64", np.dtype("<i8"), "I64", None, 27),
    Dtype("int32", np.dtype("<i4"), "I32", None, 26),
    Dtype("int16", np.dtype("<i2"), "I16", None, 25),
    Dtype("int8", np.dtype("i1"), "I8", None, 24),
    Dtype("uint64", np.dtype("<u8"), "U64", None, None),
    Dtype("uint32", np.dtype("<u4"), "U32", None, None),
    Dtype("uint16", np.dtype("<u2"), "U16", None, None),
    Dtype("uint8", np.dtype("u1"), "U8", None, None),
    Dtype("bool", np.dtype("?"), "BOOL", None, None),
)
QUANTIZABLE: tuple[Dtype, ...] = tuple(d for d in ALL if d.quantizable)
# numpy dtype -> the quantizable Dtype: what the kernels read in place
QUANTIZABLE_BY_NUMPY: dict[np.dtype[Any], Dtype] = {d.numpy: d for d in QUANTIZABLE}
BY_NAME: dict[str, Dtype] = {d.name: d for d in ALL}
BY_SAFETENSORS: dict[str, Dtype] = {d.safetensors: d for d in ALL}

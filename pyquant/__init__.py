"""pyquant: fast, zero-copy 2/4/8-bit weight quantization.

A Rust core behind a plain C ABI (``include/pyquant.h``), used from Python
through CFFI. Main entry points:

- :func:`quantize_ptr`: zero-copy; the numpy buffer is read in place.
- :func:`quantize_copy`: the same bytes out, from a copy of the input.
- :func:`dequantize` / :meth:`QuantizedTensor.dequantize`: the way back.
- :func:`quantize_batch` / :func:`dequantize_batch`: many tensors, one
  native call, all cores, GIL released.
- :func:`quantize_file`, :func:`dequantize_file`, :func:`load_quantized`,
  :func:`error_report`: whole safetensors checkpoints, bounded memory.
- :func:`quantize_arrow` / :func:`dequantize_arrow` / :func:`quantize_arrow_file`:
  Arrow arrays, record batches, streams and IPC files, zero-copy through the
  Arrow C Data Interface (needs pyarrow, imported only when called).

The scheme (normative): per group of ``group_size`` values along the last
axis, ``lo = min``, ``scale = (max - min) / (2**bits - 1)``, codes
``round_half_even((x - lo) / scale)`` packed little-endian in bytes.
Errors are :class:`QuantizeError` subclasses (``ValueError``).
"""

from ._version import __version__
from .arrow import dequantize_arrow, quantize_arrow, quantize_arrow_file, quantized_schema
from .core import (
    SUPPORTED_DTYPES,
    QuantizedTensor,
    dequantize,
    dequantize_batch,
    quantize_batch,
    quantize_copy,
    quantize_ptr,
)
from .errors import (
    CheckpointError,
    ArrowDataError,
    BufferSizeError,
    CopyRequiredError,
    InternalError,
    InvalidBitsError,
    InvalidGroupSizeError,
    MisalignedError,
    NonFiniteError,
    NullPointerError,
    OverlapError,
    QuantizeError,
    ShapeError,
    SizeOverflowError,
    UnsupportedDtypeError,
)
from .metrics import ErrorStats, error_stats
from . import safetensors_io
from .checkpoint import dequantize_file, error_report, load_quantized, quantize_file

__all__ = [
    "__version__",
    "SUPPORTED_DTYPES",
    "QuantizedTensor",
    "quantize_ptr",
    "quantize_copy",
    "dequantize",
    "quantize_batch",
    "dequantize_batch",
    "quantize_file",
    "dequantize_file",
    "load_quantized",
    "error_report",
    "CheckpointError",
    "quantize_arrow",
    "dequantize_arrow",
    "quantize_arrow_file",
    "quantized_schema",
    "error_stats",
    "ErrorStats",
    "QuantizeError",
    "ArrowDataError",
    "BufferSizeError",
    "CopyRequiredError",
    "InternalError",
    "InvalidBitsError",
    "InvalidGroupSizeError",
    "MisalignedError",
    "NonFiniteError",
    "NullPointerError",
    "OverlapError",
    "ShapeError",
    "SizeOverflowError",
    "UnsupportedDtypeError",
]

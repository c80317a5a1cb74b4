"""pyquant: fast, zero-copy 2/4/8-bit weight quantization.

A Rust core behind a plain C ABI (``include/pyquant.h``), used from Python
through CFFI. The front door:

- :func:`quantize`: picks the path that fits its input (numpy array,
  array-like, mapping or list of arrays, Arrow object, file path);
  :func:`explain` returns which path, why, the bytes it copies and its
  parallelism (a :class:`PathChoice`), with the same decision function.

The paths it chooses from, each callable directly:

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
docs/api-guide.md in the source tree has a decision table and an FAQ.
"""

from ._version import __version__
from . import gguf
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
    PathError,
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
from .checkpoint import Summary, dequantize_file, error_report, load_quantized, quantize_file
from .dispatch import PathChoice, explain, quantize

__all__ = [
    "__version__",
    "SUPPORTED_DTYPES",
    "quantize",
    "explain",
    "PathChoice",
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
    "Summary",
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
    "PathError",
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

"""pyquant: fast, zero-copy 2/3/4/8-bit weight quantization.

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
- :func:`quantize_file`, :func:`dequantize_file`, :func:`quantize_arrow_file`,
  :func:`quantize_gguf` (GGUF in, GGUF out, as llama-quantize),
  :func:`safetensors_to_gguf`, :func:`dequantize_gguf`
  (each returns a :class:`Summary`), :func:`load_quantized`,
  :func:`error_report` (a :class:`Report`), :func:`inspect` (both also
  for GGUF files): whole checkpoints, bounded memory.
- :func:`quantize_arrow` / :func:`dequantize_arrow`: Arrow arrays, record
  batches and streams, zero-copy through the Arrow C Data Interface (needs
  pyarrow, imported only when called).

The scheme: per group of ``group_size`` values along the last axis,
``lo = min``, ``scale = (max - min) / (2**bits - 1)``, codes
``round_half_even((x - lo) / scale)`` packed little-endian in bytes
(docs/scheme.md in the source tree is the normative definition).
Errors are :class:`QuantizeError` subclasses (``ValueError``).
docs/api-guide.md has a decision table and an FAQ; docs/bad-inputs.md what
each bad input gets.
"""

from ._version import __version__
from . import gguf
from .arrow import dequantize_arrow, quantize_arrow, quantized_schema
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
    InvalidSchemeError,
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
from .formats import load_quantized
from .pipeline import (
    Progress, ProgressCallback, Summary, dequantize_file, dequantize_gguf, quantize_arrow_file, quantize_file,
    quantize_gguf, safetensors_to_gguf,
)
from .report import InspectRow, Report, TensorReport, error_report, inspect
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
    "quantize_gguf",
    "dequantize_gguf",
    "safetensors_to_gguf",
    "dequantize_file",
    "quantize_arrow_file",
    "load_quantized",
    "error_report",
    "inspect",
    "Summary",
    "Progress",
    "ProgressCallback",
    "Report",
    "TensorReport",
    "InspectRow",
    "quantize_arrow",
    "dequantize_arrow",
    "quantized_schema",
    "error_stats",
    "ErrorStats",
    "QuantizeError",
    "CheckpointError",
    "ArrowDataError",
    "BufferSizeError",
    "CopyRequiredError",
    "PathError",
    "InternalError",
    "InvalidBitsError",
    "InvalidGroupSizeError",
    "InvalidSchemeError",
    "MisalignedError",
    "NonFiniteError",
    "NullPointerError",
    "OverlapError",
    "ShapeError",
    "SizeOverflowError",
    "UnsupportedDtypeError",
]

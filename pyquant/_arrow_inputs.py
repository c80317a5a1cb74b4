"""What data engines hand a map function, made into what quantize_arrow reads.

Ray Data's default batch is a dict of numpy arrays; engines name columns
their own way (``columns=``), carry null rows (``on_null="skip"``) and
float64 weights (refused here with the exact cast for the column's type).
The Rust side reads the result as it reads any batch; nothing here touches
the values except to drop skipped rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ArrowDataError, UnsupportedDtypeError

ROLES = ("name", "weights", "shape")
ON_NULL = ("error", "skip")


def prepare(obj: Any, columns: dict[str, str] | None, on_null: str) -> Any:
    """``obj`` as an Arrow object quantize_arrow reads: a dict of numpy
    arrays becomes a pyarrow Table; with ``columns`` or
    ``on_null="skip"`` a batch, Table or RecordBatchReader is renamed and
    filtered batch by batch (lazily for a reader). Other objects are
    returned as they are, after the float64 check where their schema shows."""
    if on_null not in ON_NULL:
        raise ValueError(f"on_null must be one of {ON_NULL}, got {on_null!r}")
    if columns is not None:
        unknown = set(columns) - set(ROLES)
        if unknown:
            raise ValueError(f"columns maps {sorted(unknown)}: its keys are the roles {ROLES}")
    if isinstance(obj, dict):
        obj = from_numpy(obj)
    if columns is None and on_null == "error":
        # An array or batch is quantized at once: its float64 weights are
        # refused by Rust, with the exact cast added by explain_float64 (not
        # looked for here: the per-call cost). A stream's, before it is read.
        if hasattr(obj, "__arrow_c_array__") or not _has_float64(obj):
            return obj
    import pyarrow as pa

    if isinstance(obj, (pa.Array, pa.ChunkedArray)):
        return obj  # plain tensors: no columns to map, no rows to skip
    if not isinstance(obj, (pa.RecordBatch, pa.Table, pa.RecordBatchReader)):
        if hasattr(obj, "__arrow_c_array__"):
            obj = pa.record_batch(obj)
        elif hasattr(obj, "__arrow_c_stream__"):
            obj = pa.table(obj)
        else:
            return obj
    if not hasattr(obj, "schema") or not isinstance(obj.schema, pa.Schema):
        return obj

    def one(batch: Any) -> Any:
        batch = _rename(batch, columns)
        _check_float64(batch.schema)
        return _skip_nulls(batch) if on_null == "skip" else batch

    if isinstance(obj, pa.RecordBatch):
        return one(obj)
    schema = one(empty_batch(obj.schema)).schema
    if isinstance(obj, pa.RecordBatchReader):
        return pa.RecordBatchReader.from_batches(schema, (one(b) for b in obj))
    return pa.Table.from_batches([one(b) for b in obj.to_batches()], schema=schema)


def from_numpy(batch: dict[str, Any]) -> Any:
    """A dict of numpy arrays (Ray Data's ``batch_format="numpy"``) as a
    pyarrow Table of one batch (what Ray's map_batches takes back): an n-d numeric array becomes an
    ``arrow.fixed_shape_tensor`` column (one tensor per row, its shape kept),
    an object array of arrays a list column, anything else ``pa.array``'s
    conversion. Values are not converted: float64 stays float64 (and is
    refused with the cast to make)."""
    import pyarrow as pa

    arrays = {}
    for key, value in batch.items():
        value = np.asarray(value) if not isinstance(value, np.ndarray) else value
        if value.ndim > 1 and value.dtype.kind in "fiub":
            arrays[key] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(value))
        elif value.dtype == object:  # rows of arrays (ragged lists), as Ray makes them
            arrays[key] = pa.array([np.asarray(v.tolist()) if isinstance(v, np.ndarray) and v.dtype == object
                                    else v for v in value])
        else:
            arrays[key] = pa.array(value)
    return pa.table(arrays)


def empty_array(t: Any) -> Any:
    """An empty array of type ``t`` (pyarrow's own cannot make one of
    ``arrow.fixed_shape_tensor`` type, nor of a struct holding one)."""
    import pyarrow as pa

    if isinstance(t, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(t, empty_array(t.storage_type))
    if pa.types.is_struct(t) and t.num_fields:
        return pa.StructArray.from_arrays([empty_array(f.type) for f in t], fields=list(t))
    return pa.array([], t)


def empty_batch(schema: Any) -> Any:
    """A RecordBatch of no rows in ``schema``."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([empty_array(f.type) for f in schema], schema=schema)


def exact_cast(t: Any) -> str | None:
    """The pyarrow expression of ``t`` with its float64 values made float32
    (e.g. ``pa.large_list(pa.float32())``), or None without float64 values."""
    import pyarrow as pa

    if pa.types.is_float64(t):
        return "pa.float32()"
    if isinstance(t, pa.BaseExtensionType):  # a tensor type: rebuilt, not cast
        return None if exact_cast(t.storage_type) is None else "float32 values"
    for test, make in ((pa.types.is_list, "pa.list_"), (pa.types.is_large_list, "pa.large_list"),
                       (pa.types.is_list_view, "pa.list_view"),
                       (pa.types.is_large_list_view, "pa.large_list_view")):
        if test(t):
            inner = exact_cast(t.value_type)
            return None if inner is None else f"{make}({inner})"
    if pa.types.is_fixed_size_list(t):
        inner = exact_cast(t.value_type)
        return None if inner is None else f"pa.list_({inner}, {t.list_size})"
    return None


def _has_float64(obj: Any) -> bool:
    """Whether a pyarrow object's schema (others are not looked into) has float64 weights."""
    import sys

    pa = sys.modules.get("pyarrow")
    schema = getattr(obj, "schema", None)
    if pa is None or not isinstance(schema, pa.Schema) or "weights" not in schema.names:
        return False
    return exact_cast(schema.field("weights").type) is not None


def explain_float64(obj: Any) -> None:
    """Raises the error with the exact cast to make if ``obj`` (a pyarrow
    object) has float64 weights: what Rust's refusal of them becomes."""
    if _has_float64(obj):
        _check_float64(obj.schema)


def _check_float64(schema: Any) -> None:
    import pyarrow as pa

    if "weights" not in schema.names:
        return
    t = schema.field("weights").type
    cast = exact_cast(t)
    if cast is not None and isinstance(t, pa.BaseExtensionType):
        raise UnsupportedDtypeError(
            f'column "weights" holds {t}, of float64 values: float64 is not quantized; make the tensors '
            f'float32 first (a numpy batch: x.astype(np.float32); Arrow: '
            f'pa.FixedShapeTensorArray.from_numpy_ndarray(x.astype(np.float32)))')
    if cast is not None:
        raise UnsupportedDtypeError(
            f'column "weights" holds {t}: float64 is not quantized; cast it to float32 first: '
            f'batch.set_column(batch.schema.get_field_index("weights"), "weights", '
            f'batch.column("weights").cast({cast}))')


def _rename(batch: Any, columns: dict[str, str] | None) -> Any:
    if not columns:
        return batch
    names = list(batch.schema.names)
    for role, source in columns.items():
        if source not in names:
            raise ArrowDataError(f"columns maps {role!r} to {source!r}, which the input does not have "
                                 f"(its columns: {names})")
        if role != source and role in names:
            raise ArrowDataError(f"columns maps {role!r} to {source!r}, but the input also has a column {role!r}")
    rename = {source: role for role, source in columns.items()}
    return batch.rename_columns([rename.get(n, n) for n in names])


def _skip_nulls(batch: Any) -> Any:
    """``batch`` without its rows that a null makes unreadable: a null row,
    name, weights or shape, or a null value inside weights or shape."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = np.ones(batch.num_rows, bool)
    for role in ROLES:
        if role not in batch.schema.names:
            continue
        column = batch.column(role)
        if isinstance(column.type, pa.BaseExtensionType):
            column = column.storage
        keep &= ~np.asarray(column.is_null(), bool)
        if role != "name" and hasattr(column, "flatten"):
            flat = column.flatten()
            if flat.null_count:
                parents = np.asarray(pc.list_parent_indices(column))
                keep[parents[np.asarray(flat.is_null(), bool)]] = False
    return batch if keep.all() else batch.filter(pa.array(keep))

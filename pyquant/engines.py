"""pyquant as the map function of a data engine: Ray Data, Spark, Dask, Daft.

Each engine hands its workers batches of rows (``name``, ``weights``,
``shape``: README "Arrow"); these recipes quantize each batch with
:func:`pyquant.quantize_arrow` and hand back what that engine can hold.
Inside a worker ``threads=1``: the engine already runs one task per core,
and a worker that also spreads over all cores oversubscribes them. Every
recipe gives the bytes of :func:`pyquant.quantize_ptr` (examples/engines/).

None of the engines is imported by ``import pyquant`` or by this module;
each recipe imports its engine when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from .arrow import _pyarrow, quantize_arrow

#: Spark's DDL schema of a quantized batch after :func:`spark_ready` (for
#: ``mapInArrow``): Spark has no unsigned types, so ``bits`` is a TINYINT and
#: ``group_size`` a BIGINT (the uint32 widened, never truncated).
SPARK_SCHEMA = ("name STRING, codes BINARY, scales ARRAY<FLOAT>, mins ARRAY<FLOAT>, shape ARRAY<BIGINT>, "
                "dtype STRING, bits TINYINT, group_size BIGINT")


def spark_schema(method: str = "minmax", axis: int = -1) -> str:
    """:data:`SPARK_SCHEMA` for batches quantized with ``method`` and
    ``axis``: with ``"search"`` they have a ``method`` column too, with
    ``axis=0`` an ``axis`` column (TINYINT). (Whatever the ``scale_dtype``,
    scales and mins are FLOAT: :func:`spark_ready`.)"""
    from .core import axis_code, scheme_codes

    scheme_codes(method, "float32")
    axis_code(axis, None)
    return (SPARK_SCHEMA + ("" if method == "minmax" else ", method STRING")
            + ("" if axis == -1 else ", axis TINYINT"))


def spark_arrow_schema() -> Any:
    """The pyarrow schema :func:`spark_ready` casts to: :data:`SPARK_SCHEMA`
    as Arrow types (signed integers; 32-bit ``binary`` codes, as Spark's
    ``BINARY`` is exchanged by default: a batch's codes must stay under
    2 GiB, so keep ``spark.sql.execution.arrow.maxRecordsPerBatch`` small
    for large tensors)."""
    pa = _pyarrow()
    return pa.schema([
        ("name", pa.string()), ("codes", pa.binary()), ("scales", pa.list_(pa.float32())),
        ("mins", pa.list_(pa.float32())), ("shape", pa.list_(pa.int64())), ("dtype", pa.string()),
        ("bits", pa.int8()), ("group_size", pa.int64()),
    ])


def spark_ready(batch: Any) -> Any:
    """A quantized pyarrow RecordBatch in :func:`spark_arrow_schema`
    (the columns passed through after it, unchanged; a ``method`` column is
    one of them). The values are the same: Spark has no float16, so
    float16 scales and mins are widened to float32, exactly, and
    :func:`pyquant.dequantize_arrow` reads the batch back as it is, to the
    same values (as min-max with float32 scales: the scale dtype is not
    kept)."""
    pa = _pyarrow()
    target = spark_arrow_schema()
    fields = [target.field(f.name) if f.name in target.names else f for f in batch.schema]
    return batch.cast(pa.schema(fields))


def spark_quantize(batches: Iterable[Any], *, bits: int = 4, group_size: int | None = 128,
                   **options: Any) -> Iterator[Any]:
    """The function for Spark's ``DataFrame.mapInArrow``::

        df.mapInArrow(partial(pyquant.engines.spark_quantize, bits=4), pyquant.engines.SPARK_SCHEMA)

    Quantizes each Arrow batch of a partition (one thread: Spark runs a
    task per core) and yields it Spark-ready (:func:`spark_ready`).
    ``options`` go to :func:`pyquant.quantize_arrow` (``columns``,
    ``on_null``, ``method``, ``scale_dtype``, ``axis``, ``importance``);
    columns passed through must be added to the DDL schema
    (``method="search"``, ``axis=0``: :func:`spark_schema`)."""
    for batch in batches:
        yield spark_ready(quantize_arrow(batch, bits=bits, group_size=group_size, threads=1, **options))


def ray_quantize(ds: Any, *, bits: int = 4, group_size: int | None = 128, **options: Any) -> Any:
    """``ds.map_batches`` with pyquant: a lazy Ray Dataset of quantized
    rows. ``batch_format="pyarrow"`` hands pyquant the Arrow blocks without
    a conversion (Ray's default numpy batches also work, converted first);
    one thread per task. ``options`` go to :func:`pyquant.quantize_arrow`."""
    fn = partial(quantize_arrow, bits=bits, group_size=group_size, threads=1, **options)
    return ds.map_batches(fn, batch_format="pyarrow", zero_copy_batch=True)


def dask_meta(like: Any = None, method: str = "minmax", scale_dtype: str = "float32", axis: int = -1) -> Any:
    """The ``meta`` of :func:`dask_quantize`'s result: an empty pandas
    DataFrame of the quantized schema, its columns Arrow-backed
    (``pd.ArrowDtype``), so that Dask need not run the function to learn it.
    ``like``: the input Dask (or pandas) DataFrame, whose other columns the
    result passes through (appended, as they are). ``method``,
    ``scale_dtype`` and ``axis``: those passed to :func:`dask_quantize`."""
    from .arrow import quantized_schema

    meta = quantized_schema(method, scale_dtype, axis).empty_table().to_pandas(types_mapper=_arrow_dtype())
    if like is None:
        return meta
    like = getattr(like, "_meta", like)
    extra = [c for c in like.columns if c not in ("name", "weights", "shape")]
    pd = importlib.import_module("pandas")
    return pd.concat([meta, like[extra].iloc[:0].reset_index(drop=True)], axis=1)


def dask_quantize(df: Any, *, bits: int = 4, group_size: int | None = 128, **options: Any) -> Any:
    """The function for Dask's ``map_partitions``::

        ddf.map_partitions(pyquant.engines.dask_quantize, meta=pyquant.engines.dask_meta(ddf))

    A pandas partition (columns ``name``, ``weights``, ``shape``, as Dask
    reads them from Parquet) quantized into an Arrow-backed pandas
    DataFrame, one thread (Dask runs a task per core)."""
    pa = _pyarrow()
    table = pa.Table.from_pandas(df, preserve_index=False)
    out = quantize_arrow(table, bits=bits, group_size=group_size, threads=1, **options)
    return out.to_pandas(types_mapper=_arrow_dtype())


def daft_quantize(df: Any, *, bits: int = 4, group_size: int | None = 128, method: str = "minmax",
                  scale_dtype: str = "float32", axis: int = -1) -> Any:
    """A Daft DataFrame of quantized rows from one of ``name``, ``weights``,
    ``shape`` columns: pyquant as a Daft batch UDF (``daft.func.batch``)
    that returns the quantized columns as one struct, unnested into
    columns (Daft UDFs return one column); the other columns of ``df``
    follow, as they are."""
    import daft

    pa = _pyarrow()
    from .arrow import quantized_schema

    struct = pa.struct(list(quantized_schema(method, scale_dtype, axis)))

    @daft.func.batch(return_dtype=daft.DataType.from_arrow_type(struct), unnest=True)
    def quantize(name: Any, weights: Any, shape: Any) -> Any:
        batch = pa.record_batch({"name": name.to_arrow(), "weights": weights.to_arrow(),
                                 "shape": shape.to_arrow()})
        out = quantize_arrow(batch, bits=bits, group_size=group_size, threads=1, method=method,
                             scale_dtype=scale_dtype, axis=axis)
        return pa.StructArray.from_arrays(out.columns, fields=list(out.schema))

    others = [daft.col(c) for c in df.column_names if c not in ("name", "weights", "shape")]
    return df.select(quantize(daft.col("name"), daft.col("weights"), daft.col("shape")), *others)


def _arrow_dtype() -> Any:
    """pandas' ArrowDtype (pandas imported here: Dask's dependency, not pyquant's)."""
    return importlib.import_module("pandas").ArrowDtype

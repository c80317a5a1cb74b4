"""Every Arrow producer we can install, as its users hand data over: each
must give the same bytes as quantize_ptr on the same values (issue 12).
The README's Arrow section lists these producers and types; PRODUCERS is
that table, and each case checks the types it claims."""

from __future__ import annotations

import duckdb
import nanoarrow as na
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import pyquant

RNG = np.random.default_rng(12)
A = RNG.normal(0, 0.02, (4, 128)).astype(np.float32)
B = RNG.normal(0, 0.02, (2, 256)).astype(np.float32)
TENSORS = {"a": A, "b": B}


def batch() -> pa.RecordBatch:
    return pa.record_batch({
        "name": list(TENSORS),
        "weights": pa.array([t.ravel() for t in TENSORS.values()], pa.list_(pa.float32())),
        "shape": pa.array([list(t.shape) for t in TENSORS.values()], pa.list_(pa.int64())),
    })


def frame() -> pl.DataFrame:
    return pl.DataFrame({"name": list(TENSORS), "weights": [t.ravel() for t in TENSORS.values()],
                         "shape": [list(t.shape) for t in TENSORS.values()]},
                        schema={"name": pl.String, "weights": pl.List(pl.Float32), "shape": pl.List(pl.Int64)})


def duck(sql_types: str = "weights::FLOAT[] AS weights, shape::INTEGER[] AS shape"):
    con = duckdb.connect()
    con.register("src", pa.table(batch()))
    return con.sql(f"SELECT name, {sql_types} FROM src ORDER BY name")


def polars_series():
    s = pl.Series("a", A.ravel())
    return s, {"a": A.ravel()}


# producer, kind, make() -> (object, {tensor name: values}), the Arrow types the object carries.
PRODUCERS = [
    ("pyarrow", "RecordBatch", lambda: (batch(), TENSORS), "string, list<float32>, list<int64>"),
    ("pyarrow", "Table", lambda: (pa.Table.from_batches([batch().slice(0, 1), batch().slice(1)]), TENSORS),
     "string, list<float32>, list<int64>"),
    ("pyarrow", "RecordBatchReader", lambda: (pa.RecordBatchReader.from_batches(batch().schema, [batch()]), TENSORS),
     "string, list<float32>, list<int64>"),
    ("pyarrow", "ChunkedArray", lambda: (pa.chunked_array([A.ravel()]), {"": A.ravel()}), "float32"),
    ("pyarrow", "StructArray", lambda: (pa.StructArray.from_arrays(batch().columns, names=batch().schema.names),
                                         TENSORS), "string, list<float32>, list<int64>"),
    ("pyarrow", "sliced RecordBatch", lambda: (batch().slice(1, 1), {"b": B}), "string, list<float32>, list<int64>"),
    ("pyarrow", "large_list / large_string / list_view",
     lambda: (pa.record_batch({"name": batch()["name"].cast(pa.large_string()),
                               "weights": pa.ListViewArray.from_arrays([0, 512], [512, 512], pa.array(
                                   np.concatenate([A.ravel(), B.ravel()]))),
                               "shape": batch()["shape"].cast(pa.large_list(pa.uint32()))}), TENSORS),
     "large_string, list_view<float32>, large_list<uint32>"),
    ("pyarrow", "fixed_size_list<float16>",
     lambda: (pa.record_batch({"name": ["a"], "weights": pa.FixedSizeListArray.from_arrays(
         pa.array(A.ravel().astype(np.float16)), A.size)}), {"a": A.ravel().astype(np.float16)}),
     "string, fixed_size_list<float16>"),
    ("polars", "DataFrame", lambda: (frame(), TENSORS), "string_view, large_list<float32>, large_list<int64>"),
    ("polars", "Series", polars_series, "float32"),
    ("polars", "LazyFrame collected", lambda: (frame().lazy().filter(pl.col("name") != "x").collect(), TENSORS),
     "string_view, large_list<float32>, large_list<int64>"),
    ("duckdb", "relation (PyCapsule stream)", lambda: (duck(), TENSORS), "string, list<float32>, list<int32>"),
    ("duckdb", ".arrow()", lambda: (duck().arrow(), TENSORS), "string, list<float32>, list<int32>"),
    ("nanoarrow", "c_array", lambda: (na.c_array(batch()), TENSORS), "string, list<float32>, list<int64>"),
    ("nanoarrow", "c_array (float32)", lambda: (na.c_array(A.ravel()), {"": A.ravel()}), "float32"),
    ("nanoarrow", "c_array_stream", lambda: (na.c_array_stream(pa.table(batch())), TENSORS),
     "string, list<float32>, list<int64>"),
]


def arrow_types(obj) -> str:
    """The Arrow types obj carries, in the README's notation."""
    if hasattr(obj, "__arrow_c_array__"):
        schema = pa.array(obj).type if not isinstance(obj, pa.RecordBatch) else pa.struct(obj.schema)
    else:
        schema = pa.chunked_array(obj).type
    def name(t) -> str:
        if pa.types.is_struct(t):
            return ", ".join(name(t.field(i).type) for i in range(t.num_fields))
        if isinstance(t, (pa.ListType, pa.LargeListType, pa.ListViewType, pa.FixedSizeListType)):
            kind = {pa.ListType: "list", pa.LargeListType: "large_list", pa.ListViewType: "list_view",
                    pa.FixedSizeListType: "fixed_size_list"}[type(t)]
            return f"{kind}<{name(t.value_type)}>"
        return {"float": "float32", "halffloat": "float16", "string": "string"}.get(str(t), str(t))
    return name(schema)


def expected(values: np.ndarray, shape: tuple[int, ...], group_size: int) -> tuple[bytes, bytes, bytes]:
    qt = pyquant.quantize_ptr(np.ascontiguousarray(values).reshape(shape), bits=4, group_size=group_size)
    return qt.codes.tobytes(), qt.scales.tobytes(), qt.mins.tobytes()


@pytest.mark.parametrize("producer,kind,make,types", PRODUCERS, ids=[f"{p}-{k}" for p, k, _, _ in PRODUCERS])
def test_every_producer_gives_the_bytes_of_quantize_ptr(producer, kind, make, types):
    if producer != "duckdb":  # duckdb's types: test_duckdb_types_are_what_the_table_says
        assert arrow_types(make()[0]) == types  # a fresh object: streams are consumed once
    obj, tensors = make()
    q = pyquant.quantize_arrow(obj, bits=4, group_size=64)
    rows = pa.table(q).to_pylist() if not isinstance(q, pa.RecordBatchReader) else q.read_all().to_pylist()
    assert sorted(r["name"] for r in rows) == sorted(tensors)
    for r in rows:
        values = tensors[r["name"]]
        shape = tuple(r["shape"])
        assert shape == (TENSORS[r["name"]].shape if len(shape) > 1 else (values.size,))
        codes, scales, mins = expected(values, shape, 64)
        assert r["codes"] == codes
        assert np.array(r["scales"], np.float32).tobytes() == scales
        assert np.array(r["mins"], np.float32).tobytes() == mins


def test_duckdb_types_are_what_the_table_says():
    assert pa.RecordBatchReader.from_stream(duck()).schema.types == [
        pa.string(), pa.list_(pa.field("l", pa.float32())), pa.list_(pa.field("l", pa.int32()))]


def test_polars_round_trip_in_both_directions():
    """dequantize_arrow(pl.from_arrow(q)): polars hands the quantized batch
    back as string_view, binary_view and large_list columns."""
    q = pyquant.quantize_arrow(frame(), bits=4, group_size=64)
    back = pl.from_arrow(q)
    assert pa.table(back).schema.field("codes").type == pa.binary_view()
    assert pa.table(back).schema.field("name").type == pa.string_view()
    want = pyquant.dequantize_arrow(q)
    got = pyquant.dequantize_arrow(back)
    assert got.to_pylist() == want.to_pylist()
    for r in got.to_pylist():
        qt = pyquant.quantize_ptr(TENSORS[r["name"]], bits=4, group_size=64)
        assert np.array(r["weights"], np.float32).tobytes() == qt.dequantize().tobytes()
    # and the dequantized polars frame quantizes again to the same bytes
    again = pyquant.quantize_arrow(pl.from_arrow(got), bits=4, group_size=64)
    assert pa.table(again)["codes"].to_pylist() == pa.table(q)["codes"].to_pylist()


def test_a_stream_of_float_arrays_is_one_tensor_per_chunk():
    s = pl.concat([pl.Series("w", A.ravel()), pl.Series("w", B.ravel())], rechunk=False)
    assert s.n_chunks() == 2
    rows = pyquant.quantize_arrow(s, bits=4, group_size=64).to_pylist()
    assert [r["name"] for r in rows] == ["w.0", "w.1"]
    assert rows[1]["codes"] == expected(B.ravel(), (B.size,), 64)[0]
    rows = pyquant.quantize_arrow(pa.chunked_array([A.ravel(), B.ravel()]), bits=4, group_size=64).to_pylist()
    assert [r["name"] for r in rows] == ["0", "1"]
    assert pyquant.quantize_arrow(s.rechunk(), bits=4, group_size=64).num_rows == 1


@pytest.mark.parametrize("make", [
    lambda: duck("weights::DOUBLE[] AS weights"),
    lambda: frame().with_columns(pl.col("weights").cast(pl.List(pl.Float64))),
    lambda: pa.array(A.ravel().astype(np.float64)),
    lambda: pl.Series("w", A.ravel().astype(np.float64)),
], ids=["duckdb DOUBLE[]", "polars List(Float64)", "pyarrow float64", "polars Float64 Series"])
def test_float64_weights_say_how_to_cast(make):
    with pytest.raises(pyquant.UnsupportedDtypeError, match=r"float64 is not quantized: cast to float32 first"):
        pyquant.quantize_arrow(make())

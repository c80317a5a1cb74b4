"""Inputs data engines hand pyquant (issue 17), the recipes of
pyquant.engines, and the examples/engines scripts, each run in a fresh
process on its engine in local mode (skipped where the engine is not
installed; test.sh installs them)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyquant
import pyquant.engines

pa = pytest.importorskip("pyarrow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(17)


def tensors(n=3, shape=(4, 128)):
    return [RNG.normal(0, 0.02, shape).astype(np.float32) for _ in range(n)]


def assert_rows_match(out, xs, bits=4, group_size=64):
    """Every row of ``out`` holds the bytes of quantize_ptr on its tensor."""
    assert out.num_rows == len(xs)
    for i, x in enumerate(xs):
        want = pyquant.quantize_ptr(x, bits=bits, group_size=group_size)
        assert out.column("codes")[i].as_py() == want.codes.tobytes()
        assert np.array_equal(np.asarray(out.column("scales")[i].as_py(), np.float32), want.scales.ravel())
        assert np.array_equal(np.asarray(out.column("mins")[i].as_py(), np.float32), want.mins.ravel())
        assert out.column("shape")[i].as_py() == list(x.shape)


# --- Tensor extension types ------------------------------------------------------


def test_fixed_shape_tensor_weights_keep_their_shape():
    xs = tensors(3, (2, 4, 128))
    batch = pa.record_batch({"name": ["a", "b", "c"],
                             "weights": pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(xs))})
    assert_rows_match(pyquant.quantize_arrow(batch, group_size=64), xs)
    # A shape column that agrees is fine; one that does not is an error, not a silent choice.
    agree = batch.append_column("shape", pa.array([[2, 4, 128]] * 3, pa.list_(pa.int32())))
    assert_rows_match(pyquant.quantize_arrow(agree, group_size=64), xs)
    differ = batch.append_column("shape", pa.array([[8, 128]] * 3))
    with pytest.raises(pyquant.ShapeError, match="differs from the"):
        pyquant.quantize_arrow(differ, group_size=64)


def test_empty_tables_of_tensor_types():
    """An empty partition of a tensor-typed column (pyarrow cannot build an
    empty fixed_shape_tensor array itself) gives an empty quantized result."""
    t = pa.fixed_shape_tensor(pa.float32(), (4, 128))
    schema = pa.schema([("name", pa.string()), ("data", t), ("id", pa.int64())])
    for empty in (pa.Table.from_batches([], schema),
                  pa.RecordBatchReader.from_batches(schema, [])):
        out = pyquant.quantize_arrow(empty, columns={"weights": "data"}, on_null="skip")
        out = out.read_all() if isinstance(out, pa.RecordBatchReader) else out
        assert out.num_rows == 0 and out.schema.names == list(pyquant.quantized_schema().names) + ["id"]


def test_fixed_shape_tensor_with_a_permutation_is_refused():
    t = pa.fixed_shape_tensor(pa.float32(), (4, 128), permutation=[1, 0])
    storage = pa.array([np.ones(512, np.float32)], pa.list_(pa.float32(), 512))
    batch = pa.record_batch({"name": ["a"], "weights": pa.ExtensionArray.from_storage(t, storage)})
    with pytest.raises(pyquant.UnsupportedDtypeError, match="permutation"):
        pyquant.quantize_arrow(batch, group_size=64)


def ray_field(name, metadata, storage_type):
    return pa.field("weights", storage_type, metadata={b"ARROW:extension:name": name,
                                                       b"ARROW:extension:metadata": metadata})


def test_ray_tensor_type_gives_its_shape():
    """Ray's tensor type as it crosses the C Data Interface (extension name
    and JSON shape in the field metadata, storage a list): no Ray needed."""
    xs = tensors(2, (4, 128))
    for name, storage in ((b"ray.data.arrow_tensor", pa.list_(pa.float32())),
                          (b"ray.data.arrow_tensor_v2", pa.large_list(pa.float32()))):
        schema = pa.schema([("name", pa.string()), ray_field(name, json.dumps([4, 128]).encode(), storage)])
        batch = pa.record_batch([pa.array(["a", "b"]), pa.array([x.ravel() for x in xs], storage)], schema=schema)
        assert_rows_match(pyquant.quantize_arrow(batch, group_size=64), xs)
    variable = pa.schema([("name", pa.string()),
                          ray_field(b"ray.data.arrow_variable_shaped_tensor", b"2", pa.list_(pa.float32()))])
    batch = pa.record_batch([pa.array(["a"]), pa.array([np.ones(8, np.float32)], pa.list_(pa.float32()))],
                            schema=variable)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="variable-shaped.*shape"):
        pyquant.quantize_arrow(batch, group_size=8)


# --- Inputs engines produce ------------------------------------------------------


def test_dict_of_numpy_batch_and_columns_mapping():
    xs = tensors(3, (4, 128))
    out = pyquant.quantize_arrow({"tensor": np.array(["a", "b", "c"]), "data": np.stack(xs), "id": np.arange(3)},
                                 columns={"name": "tensor", "weights": "data"}, group_size=64)
    assert isinstance(out, pa.Table)  # what Ray's map_batches takes back
    assert_rows_match(out, xs)
    assert out.schema.names[-1] == "id" and out.column("id").to_pylist() == [0, 1, 2]
    ragged = {"name": np.array(["a", "b"]), "weights": np.array([xs[0].ravel(), xs[1][:2].ravel()], dtype=object),
              "shape": np.array([np.array([4, 128]), np.array([2, 128])], dtype=object)}
    assert_rows_match(pyquant.quantize_arrow(ragged, group_size=64), [xs[0], xs[1][:2]])
    for doubles in ({"name": np.array(["a"]), "weights": np.ones((1, 4, 8))},
                    {"name": np.array(["a"]), "data": np.ones((1, 4, 8)), "other": np.ones((1, 2, 2))}):
        with pytest.raises(pyquant.UnsupportedDtypeError, match=r"astype\(np.float32\)"):
            pyquant.quantize_arrow(doubles, columns={"weights": "data"} if "data" in doubles else None)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="float64"):  # not the float64 one: passed through
        pyquant.quantize_arrow({"name": np.array(["a"]), "weights": np.ones((1, 4, 8))}, columns={"name": "name"})
    other = pyquant.quantize_arrow({"name": np.array(["a"]), "weights": np.ones((1, 4, 8), np.float32),
                                    "extra": np.ones((1, 2, 2))}, group_size=8)
    assert other.column("extra").type.storage_type.value_type == pa.float64()
    with pytest.raises(ValueError, match="roles"):
        pyquant.quantize_arrow({"name": np.array(["a"])}, columns={"tensor": "name"})
    with pytest.raises(pyquant.ArrowDataError, match="does not have"):
        pyquant.quantize_arrow({"name": np.array(["a"])}, columns={"weights": "w"})


def test_extra_columns_pass_through_unchanged():
    xs = tensors(2)
    extra = pa.array([{"layer": 1}, {"layer": 2}])
    batch = pa.record_batch({"id": [10, 11], "name": ["a", "b"], "weights": pa.array([x.ravel() for x in xs]),
                             "shape": pa.array([[4, 128]] * 2, pa.list_(pa.uint16())), "meta": extra})
    out = pyquant.quantize_arrow(batch, group_size=64)
    assert out.schema.names == list(pyquant.quantized_schema().names) + ["id", "meta"]
    assert out.column("meta").equals(extra) and out.column("id").to_pylist() == [10, 11]
    assert_rows_match(out, xs)
    table = pyquant.quantize_arrow(pa.Table.from_batches([batch, batch]), group_size=64)
    assert table.num_rows == 4 and table.schema == out.schema
    empty = pyquant.quantize_arrow(batch.schema.empty_table(), group_size=64)
    assert empty.num_rows == 0 and empty.schema == out.schema


def test_extra_columns_of_other_types_pass_through_sliced():
    import datetime

    xs = tensors(3, (2, 64))
    extras = {"f": pa.array([1.5, None, 2.5]), "ok": pa.array([True, None, False]),
              "ts": pa.array([datetime.datetime(2024, 1, d) for d in (1, 2, 3)]),
              "day": pa.array([datetime.date(2024, 1, d) for d in (1, 2, 3)]),
              "words": pa.array([["a"], [], None], pa.list_(pa.string()))}
    batch = pa.record_batch({"name": ["a", "b", "c"], "weights": pa.array([x.ravel() for x in xs]),
                             "shape": pa.array([[2, 64]] * 3), **extras})
    out = pyquant.quantize_arrow(batch.slice(1), group_size=64)
    assert_rows_match(out, xs[1:])
    for name, column in extras.items():
        assert out.column(name).equals(column.slice(1)), name
    coded = batch.append_column("code", pa.array(["x", "y", "x"]).dictionary_encode())
    with pytest.raises(pyquant.UnsupportedDtypeError, match="dictionary-encoded"):
        pyquant.quantize_arrow(coded, group_size=64)


@pytest.mark.parametrize("width", [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64()])
def test_shape_of_any_integer_width(width):
    xs = tensors(1, (4, 64))  # int8 holds 64, not 128
    batch = pa.record_batch({"name": ["a"], "weights": pa.array([xs[0].ravel()]),
                             "shape": pa.array([[4, 64]], pa.large_list(width))})
    assert_rows_match(pyquant.quantize_arrow(batch, group_size=64), xs)


def test_on_null_skip_drops_unreadable_rows():
    xs = tensors(4, (2, 64))
    weights = pa.array([xs[0].ravel(), None, list(xs[2].ravel()[:-1]) + [None], xs[3].ravel()], pa.list_(pa.float32()))
    batch = pa.record_batch({"name": ["a", "b", "c", None], "weights": weights,
                             "shape": pa.array([[2, 64]] * 4)})
    with pytest.raises(pyquant.ArrowDataError, match="null"):
        pyquant.quantize_arrow(batch, group_size=64)
    out = pyquant.quantize_arrow(batch, group_size=64, on_null="skip")
    assert out.column("name").to_pylist() == ["a"]
    assert_rows_match(out, xs[:1])
    reader = pa.RecordBatchReader.from_batches(batch.schema, [batch, batch])
    assert pyquant.quantize_arrow(reader, group_size=64, on_null="skip").read_all().num_rows == 2
    with pytest.raises(ValueError, match="on_null"):
        pyquant.quantize_arrow(batch, on_null="drop")


@pytest.mark.parametrize("make, cast", [
    (lambda v: pa.array(v, pa.list_(pa.float64())), "pa.list_(pa.float32())"),
    (lambda v: pa.array(v, pa.large_list(pa.float64())), "pa.large_list(pa.float32())"),
    (lambda v: pa.array(v, pa.list_(pa.float64(), 8)), "pa.list_(pa.float32(), 8)"),
])
def test_float64_error_names_the_exact_cast(make, cast):
    batch = pa.record_batch({"name": ["a"], "weights": make([[1.0] * 8])})
    with pytest.raises(pyquant.UnsupportedDtypeError) as e:
        pyquant.quantize_arrow(batch, group_size=8)
    assert f".cast({cast})" in str(e.value)


# --- Dequantize: empty input, what engines write back -------------------------------


def test_dequantize_an_empty_table_or_reader():
    empty = pyquant.quantized_schema().empty_table()
    out = pyquant.dequantize_arrow(empty)
    assert out.num_rows == 0 and out.schema.names == ["name", "weights", "shape"]
    assert out.schema.field("weights").type == pa.list_(pa.float32())
    reader = pa.RecordBatchReader.from_batches(pyquant.quantized_schema(), [])
    assert pyquant.dequantize_arrow(reader).read_all().schema.names == ["name", "dtype", "shape", "data"]
    spark_empty = pyquant.engines.spark_arrow_schema().empty_table()
    assert pyquant.dequantize_arrow(spark_empty).num_rows == 0


def test_spark_ready_round_trips_through_dequantize():
    xs = tensors(3)
    batch = pa.record_batch({"name": ["a", "b", "c"], "weights": pa.array([x.ravel() for x in xs]),
                             "shape": pa.array([[4, 128]] * 3)})
    q = pyquant.quantize_arrow(batch, group_size=64)
    ready = pyquant.engines.spark_ready(q)
    assert ready.schema == pyquant.engines.spark_arrow_schema()
    assert_rows_match(ready, xs)
    assert pyquant.dequantize_arrow(ready).equals(pyquant.dequantize_arrow(q))
    spark_iter = list(pyquant.engines.spark_quantize(iter([batch]), group_size=64))
    assert spark_iter[0].equals(ready)
    # Out-of-range values in a signed column are an error, not a wrap-around.
    bad = ready.set_column(6, "bits", pa.array([-1, 4, 4], pa.int8()))
    with pytest.raises(pyquant.ArrowDataError, match="bits -1 is out of range"):
        pyquant.dequantize_arrow(bad)
    # The DDL names the columns of the Arrow schema, in order.
    ddl = [c.split()[0] for c in pyquant.engines.SPARK_SCHEMA.split(", ")]
    assert ddl == pyquant.engines.spark_arrow_schema().names


@pytest.mark.parametrize("method, axis", [("minmax", -1), ("search", -1), ("search", 0)])
def test_spark_ready_and_dask_meta_with_other_schemes(method, axis):
    """float16 scales are widened exactly for Spark; the search's method
    column and axis 0's axis column are in the DDL of spark_schema; the same
    values come back."""
    g = 64 if axis == -1 else 4  # axis 0 groups down the 4 rows
    xs = tensors(2)
    batch = pa.record_batch({"name": ["a", "b"], "weights": pa.array([x.ravel() for x in xs]),
                             "shape": pa.array([[4, 128]] * 2)})
    q = pyquant.quantize_arrow(batch, group_size=g, method=method, scale_dtype="float16", axis=axis)
    assert q.schema.field("scales").type == pa.list_(pa.float16())
    ready = pyquant.engines.spark_ready(q)
    ddl = [c.split()[0] for c in pyquant.engines.spark_schema(method, axis).split(", ")]
    assert ready.schema.names == ddl and ready.schema.field("scales").type == pa.list_(pa.float32())
    for part in ("scales", "mins"):
        np.testing.assert_array_equal(ready.column(part).flatten().to_numpy(),
                                      q.column(part).flatten().to_numpy().astype(np.float32))
    assert pyquant.dequantize_arrow(ready).equals(pyquant.dequantize_arrow(q))
    for i, x in enumerate(xs):
        want = pyquant.quantize_ptr(x, group_size=g, method=method, scale_dtype="float16", axis=axis)
        assert ready.column("codes")[i].as_py() == want.codes.tobytes()
        assert ready.column("scales")[i].values.to_numpy().tobytes() == want.scales.tobytes()
    with pytest.raises(pyquant.InvalidSchemeError):
        pyquant.engines.spark_schema("best")
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"name": ["a", "b"], "weights": [x.ravel() for x in xs], "shape": [[4, 128]] * 2})
    df["weights"] = df["weights"].astype(pd.ArrowDtype(pa.list_(pa.float32())))
    out = pyquant.engines.dask_quantize(df, group_size=g, method=method, scale_dtype="float16", axis=axis)
    meta = pyquant.engines.dask_meta(method=method, scale_dtype="float16", axis=axis)
    assert list(out.columns) == list(meta.columns) and (out.dtypes == meta.dtypes).all()


def test_dask_meta_is_the_result_schema():
    pd = pytest.importorskip("pandas")
    xs = tensors(2)
    df = pd.DataFrame({"name": ["a", "b"], "weights": [x.ravel() for x in xs], "shape": [[4, 128]] * 2})
    df["weights"] = df["weights"].astype(pd.ArrowDtype(pa.list_(pa.float32())))
    out = pyquant.engines.dask_quantize(df, group_size=64)
    meta = pyquant.engines.dask_meta()
    assert list(out.columns) == list(meta.columns) and (out.dtypes == meta.dtypes).all()
    df["layer"] = pd.Series([3, 4], dtype=pd.ArrowDtype(pa.int32()))
    out = pyquant.engines.dask_quantize(df, group_size=64)
    meta = pyquant.engines.dask_meta(df)
    assert list(out.columns) == list(meta.columns) and (out.dtypes == meta.dtypes).all()
    assert out["layer"].tolist() == [3, 4]
    assert_rows_match(pa.Table.from_pandas(out, preserve_index=False), xs)


# --- The examples, each engine in local mode ---------------------------------------

ENGINES = {  # script: (module it needs, timeout in s)
    "dask_dataframe.py": ("dask", 120),
    "daft_dataframe.py": ("daft", 120),
    "ray_data.py": ("ray", 240),
    "spark.py": ("pyspark", 240),
}


def test_every_engine_example_is_listed():
    found = {f for f in os.listdir(os.path.join(ROOT, "examples", "engines")) if f.endswith(".py")}
    assert found == set(ENGINES) | {"common.py"}


@pytest.mark.parametrize("script", sorted(ENGINES))
def test_engine_example_runs(script, tmp_path):
    module, timeout = ENGINES[script]
    if os.environ.get("PYQUANT_ENGINE_EXAMPLES") == "0":
        pytest.skip("PYQUANT_ENGINE_EXAMPLES=0 (test.sh's second pass, against the checked build)")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -r requirements-test.txt)")
    package_parent = os.path.dirname(os.path.dirname(pyquant.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0", DAFT_ANALYTICS_ENABLED="0", DO_NOT_TRACK="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "engines", script)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "identical to quantize_ptr: OK" in proc.stdout, proc.stdout

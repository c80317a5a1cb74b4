"""Property tests of the quantization schemes (method "search", float16
scales and mins): every path gives the same bytes, bit for bit, or the same
error; float16 scales are exact halves; the search never does worse than
min-max with the same scale dtype; the default scheme is the original format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import tensors

import pyquant
from pyquant.core import METHODS, SCALE_DTYPES
from pyquant.errors import InvalidImatrixError

SCHEMES = st.tuples(st.sampled_from(sorted(METHODS)), st.sampled_from(sorted(SCALE_DTYPES)))


def outcome(fn):
    """The bytes of a result (codes, scale bits, min bits), or the error it raised."""
    try:
        qt = fn()
    except pyquant.QuantizeError as exc:
        return type(exc), str(exc)
    return (qt.codes.tobytes(), qt.scales.view(np.uint32).tobytes(), qt.mins.view(np.uint32).tobytes(),
            qt.method, qt.scale_dtype)


@given(tensors(), SCHEMES, st.booleans())
def test_every_path_gives_the_same_bytes(case, scheme, weighted):
    x, _, bits, group_size = case
    method, scale_dtype = scheme
    kw = {"bits": bits, "group_size": group_size, "method": method, "scale_dtype": scale_dtype}
    w = None
    if weighted and method == "search":
        w = (np.arange(x.shape[-1]) % 5).astype(np.float32) * 0.75
        kw["importance"] = w
    want = outcome(lambda: pyquant.quantize_ptr(x, threads=1, **kw))
    assert outcome(lambda: pyquant.quantize_ptr(x, **kw)) == want
    assert outcome(lambda: pyquant.quantize_copy(x, threads=2, **kw)) == want
    assert outcome(lambda: pyquant.quantize(x, path="copy", **kw)) == want
    batch_kw = {k: v for k, v in kw.items() if k != "importance"}
    imp = None if w is None else {"b": w}
    got = outcome(lambda: pyquant.quantize_batch({"a": x, "b": x},
                                                 importance=imp, **batch_kw)["b"])
    if isinstance(want[0], type):  # an error names the tensor in a batch
        assert got[0] is want[0] and got[1].endswith(want[1])
    else:
        assert got == want
    if x.dtype in (np.float32, np.float16):  # the Arrow path takes no bfloat16
        expect_arrow(want, x, bits, group_size, method, scale_dtype, importance=w)


def expect_arrow(want, x, bits, group_size, method, scale_dtype, axis=-1, importance=None):
    """The Arrow path (quantize_arrow and pyquant.quantize) gives ``want``:
    the same bytes, or the same error with the tensor named."""
    for front_door in (False, True):
        got = arrow_outcome(x, bits, group_size, method, scale_dtype, axis, importance, front_door)
        if isinstance(want[0], type):
            assert got[0] is want[0] and got[1].endswith(want[1])
        else:
            assert got == want


def arrow_outcome(x, bits, group_size, method, scale_dtype, axis=-1, importance=None, front_door=False):
    """:func:`outcome` of row "b" of ``quantize_arrow`` (or ``pyquant.quantize``)
    on a batch of two copies of ``x``, ``importance`` given for "b" only,
    checked against its schema, a row built by ``quantized_row`` from the
    same parts and ``dequantize_arrow``."""
    import pyarrow as pa

    from pyquant.arrow import dequantize_arrow, quantize_arrow, quantized_row, quantized_schema

    flat = pa.array([x.ravel(), x.ravel()], pa.list_(pa.from_numpy_dtype(x.dtype)))
    batch = pa.record_batch({"name": ["a", "b"], "weights": flat, "shape": pa.array([x.shape] * 2, pa.list_(pa.int64()))})
    kw = {"bits": bits, "group_size": group_size, "method": method, "scale_dtype": scale_dtype, "axis": axis,
          "importance": None if importance is None else {"b": importance}}
    try:
        out = pyquant.quantize(batch, **kw) if front_door else quantize_arrow(batch, **kw)
    except pyquant.QuantizeError as exc:
        return type(exc), str(exc)
    assert out.schema.equals(quantized_schema(method, scale_dtype, axis))
    row = out.slice(1, 1)
    stored = {p: row.column(p)[0].values.to_numpy() for p in ("scales", "mins")}
    assert all(v.dtype == np.dtype(scale_dtype) for v in stored.values())
    scales, mins = (stored[p].astype(np.float32) for p in ("scales", "mins"))
    codes = np.frombuffer(row.column("codes")[0].as_py(), np.uint8)
    got_method = row.column("method")[0].as_py() if "method" in out.schema.names else "minmax"
    assert ("axis" in out.schema.names) == (axis == 0)
    one = quantized_row("b", str(x.dtype), x.shape, bits, row.column("group_size")[0].as_py(), codes, scales, mins,
                        method, scale_dtype, axis)
    assert one.equals(row.select(one.schema.names))
    back = dequantize_arrow(row).column("weights")[0].values.to_numpy()
    want = pyquant.quantize_ptr(x, bits=bits, group_size=group_size, method=method, scale_dtype=scale_dtype,
                                axis=axis, importance=importance)
    np.testing.assert_array_equal(back.view(np.uint8), want.dequantize().ravel().view(np.uint8))
    return (codes.tobytes(), scales.view(np.uint32).tobytes(), mins.view(np.uint32).tobytes(), got_method,
            scale_dtype)


@given(tensors(), st.sampled_from(sorted(METHODS)))
def test_float16_scales_are_exact_and_dequantize_as_stored(case, method):
    x, _, bits, group_size = case
    try:
        qt = pyquant.quantize_ptr(x, bits=bits, group_size=group_size, method=method, scale_dtype="float16")
    except pyquant.NonFiniteError as exc:
        assert "float16" in str(exc)
        return
    for arr in (qt.scales, qt.mins):
        np.testing.assert_array_equal(arr.astype(np.float16).astype(np.float32), arr)
    # Dequantize reads the stored values: a tensor rebuilt from float16
    # scales and mins gives the same bytes.
    rebuilt = pyquant.QuantizedTensor(qt.codes, qt.scales.astype(np.float16).astype(np.float32),
                                      qt.mins.astype(np.float16).astype(np.float32), qt.shape, qt.dtype,
                                      qt.bits, qt.group_size, qt.method, qt.scale_dtype)
    np.testing.assert_array_equal(pyquant.dequantize(rebuilt, "float32").view(np.uint32),
                                  pyquant.dequantize(qt, "float32").view(np.uint32))


@given(tensors(), st.sampled_from(sorted(SCALE_DTYPES)))
def test_search_is_never_worse_than_min_max(case, scale_dtype):
    x, _, bits, group_size = case
    kw = {"bits": bits, "group_size": group_size, "scale_dtype": scale_dtype}
    try:
        mm = pyquant.quantize_ptr(x, method="minmax", **kw)
    except pyquant.NonFiniteError:
        return
    se = pyquant.quantize_ptr(x, method="search", **kw)
    x64 = x.astype(np.float64)
    if not np.isfinite((x64 ** 2).sum()) or np.abs(x64).max(initial=0) > 2.0**60:
        return  # the f32 error sums of the search overflow; no comparison to make
    g = group_size or x.shape[-1]

    def group_err(qt):
        d = (qt.dequantize("float32").astype(np.float64) - x64) ** 2
        return d.reshape(*x.shape[:-1], x.shape[-1] // g, g).sum(-1)

    assert (group_err(se) <= group_err(mm) * (1 + 1e-5) + 1e-30).all()


def test_default_scheme_is_the_original_format():
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    a = pyquant.quantize_ptr(x, bits=4, group_size=64)
    b = pyquant.quantize_ptr(x, bits=4, group_size=64, method="minmax", scale_dtype="float32")
    assert outcome(lambda: a) == outcome(lambda: b) and (a.method, a.scale_dtype) == ("minmax", "float32")
    assert "method" not in repr(a)


def test_bad_scheme_arguments():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(pyquant.InvalidSchemeError, match="method"):
        pyquant.quantize_ptr(x, method="best")
    with pytest.raises(pyquant.InvalidSchemeError, match="scale_dtype"):
        pyquant.quantize_copy(x, scale_dtype="bfloat16")
    with pytest.raises(pyquant.InvalidSchemeError, match="importance"):
        pyquant.quantize_ptr(x, group_size=64, importance=np.ones(64))
    with pytest.raises(pyquant.errors.InvalidImatrixError, match="entries"):
        pyquant.quantize_ptr(x, group_size=64, method="search", importance=np.ones(63))
    with pytest.raises(pyquant.errors.InvalidImatrixError, match="entry 3"):
        w = np.ones(64)
        w[3] = -1
        pyquant.quantize_ptr(x, group_size=64, method="search", importance=w)
    with pytest.raises(pyquant.errors.InvalidImatrixError, match="tensor 'a'"):
        pyquant.quantize_batch({"a": x}, group_size=64, method="search", importance={"a": np.ones((2, 32))})
    with pytest.raises(pyquant.QuantizeError, match="not a tensor"):
        pyquant.quantize_batch({"a": x}, group_size=64, method="search", importance={"b": np.ones(64)})
    with pytest.raises(pyquant.NonFiniteError, match="float16"):
        pyquant.quantize_ptr(np.full((1, 64), 1e6, np.float32), group_size=64, scale_dtype="float16")


def test_float16_scales_halve_the_metadata():
    x = np.random.default_rng(2).standard_normal((16, 512)).astype(np.float32)
    a = pyquant.quantize_ptr(x, bits=4, group_size=64)
    b = pyquant.quantize_ptr(x, bits=4, group_size=64, scale_dtype="float16")
    assert (a.bits_per_weight, b.bits_per_weight) == (5.0, 4.5)


def test_checkpoints_carry_the_scheme(tmp_path):
    import safetensors.numpy

    rng = np.random.default_rng(3)
    tensors = {"a.weight": rng.standard_t(4, (64, 256)).astype(np.float32),
               "b.weight": rng.standard_normal((32, 128)).astype(np.float16)}
    src = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(src))
    for method, scale_dtype in [("search", "float16"), ("search", "float32"), ("minmax", "float16")]:
        dst = tmp_path / f"{method}-{scale_dtype}.safetensors"
        pyquant.quantize_file(src, dst, bits=2, group_size=64, method=method, scale_dtype=scale_dtype)
        with safetensors.safe_open(str(dst), "numpy") as f:
            meta = f.metadata()
            assert (meta["pyquant.method"], meta["pyquant.scale_dtype"]) == (method, scale_dtype)
            assert f.get_tensor("a.weight.scales").dtype == np.dtype(scale_dtype)
        loaded = pyquant.load_quantized(dst)
        for name, x in tensors.items():
            want = outcome(lambda: pyquant.quantize_ptr(x, bits=2, group_size=64, method=method,
                                                        scale_dtype=scale_dtype))
            assert outcome(lambda: loaded[name]) == want
        back = tmp_path / "back.safetensors"
        pyquant.dequantize_file(dst, back, force=True)
        with safetensors.safe_open(str(back), "numpy") as f:
            for name, x in tensors.items():
                y = pyquant.quantize_ptr(x, bits=2, group_size=64, method=method, scale_dtype=scale_dtype).dequantize()
                np.testing.assert_array_equal(f.get_tensor(name), y)
    # The default scheme writes no scheme keys (files as before), and reads back as min-max, float32.
    dst = tmp_path / "plain.safetensors"
    pyquant.quantize_file(src, dst, bits=4, group_size=64)
    with safetensors.safe_open(str(dst), "numpy") as f:
        assert "pyquant.method" not in f.metadata()
    assert (pyquant.load_quantized(dst)["a.weight"].method, pyquant.load_quantized(dst)["a.weight"].scale_dtype) == (
        "minmax", "float32")
    with pytest.raises(pyquant.InvalidSchemeError):
        pyquant.quantize_file(src, tmp_path / "y.safetensors", method="exhaustive")


def weights_file_quantizes_as_quantize_arrow(tmp_path, x, **kw):
    """An Arrow IPC file of weights (``x``, tmp_path/weights.arrow) through
    pyquant.quantize gives quantize_arrow's rows; returns (batch, its rows)."""
    import pyarrow as pa
    import pyarrow.ipc

    weights = tmp_path / "weights.arrow"
    batch = pa.record_batch({"name": ["w"], "weights": pa.array([x.ravel()]), "shape": pa.array([list(x.shape)])})
    with pa.OSFile(str(weights), "wb") as f, pa.ipc.new_file(f, batch.schema) as w:
        w.write_batch(batch)
    q = tmp_path / "q.arrow"
    pyquant.quantize(str(weights), dst=q, force=True, **kw)
    with pa.OSFile(str(q)) as f:
        got = pa.ipc.open_file(f).read_all()
    want = pyquant.quantize_arrow(batch, **kw)
    assert got.equals(pa.Table.from_batches([want]))
    return batch, want


def test_arrow_checkpoints_and_files_carry_the_scheme(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc
    import safetensors.numpy

    rng = np.random.default_rng(5)
    tensors = {"a.weight": rng.standard_t(4, (64, 256)).astype(np.float32),
               "b.weight": rng.standard_normal((32, 128)).astype(np.float16),
               "c.bias": rng.standard_normal(128).astype(np.float32)}
    src = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(src))
    for method, scale_dtype in [("search", "float16"), ("search", "float32"), ("minmax", "float16"),
                                ("minmax", "float32")]:
        dst = tmp_path / f"{method}-{scale_dtype}.arrow"
        pyquant.quantize_file(src, dst, bits=3, group_size=64, format="arrow", method=method, scale_dtype=scale_dtype)
        with pa.OSFile(str(dst)) as f:
            table = pa.ipc.open_file(f).read_all()
        assert table.schema.remove_metadata().equals(pyquant.quantized_schema(method, scale_dtype))
        assert ("pyquant.method" in {k.decode() for k in table.schema.metadata}) == (
            (method, scale_dtype) != ("minmax", "float32"))
        loaded = pyquant.load_quantized(dst)
        back = pyquant.dequantize_arrow(table)
        for name, x in tensors.items():
            if x.ndim == 1:  # carried over, bit for bit
                np.testing.assert_array_equal(loaded[name], x)
                continue
            want = pyquant.quantize_ptr(x, bits=3, group_size=64, method=method, scale_dtype=scale_dtype)
            assert outcome(lambda: loaded[name]) == outcome(lambda: want)
            row = back.column("name").to_pylist().index(name)
            data = np.frombuffer(back.column("data")[row].as_py(), x.dtype).reshape(x.shape)
            np.testing.assert_array_equal(data, want.dequantize())
        out = tmp_path / "back.safetensors"
        pyquant.dequantize_file(dst, out, force=True)
        with safetensors.safe_open(str(out), "numpy") as f:
            np.testing.assert_array_equal(f.get_tensor("a.weight"), pyquant.quantize_ptr(
                tensors["a.weight"], bits=3, group_size=64, method=method, scale_dtype=scale_dtype).dequantize())
    batch, want = weights_file_quantizes_as_quantize_arrow(tmp_path, tensors["a.weight"], bits=2, group_size=32,
                                                           method="search", scale_dtype="float16")
    assert pyquant.quantize(batch, path="arrow", bits=2, group_size=32, method="search",
                            scale_dtype="float16").equals(want)
    # A checkpoint whose schema does not match its scheme metadata is refused.
    bad = tmp_path / "bad.arrow"
    meta = dict(table.schema.metadata or {})
    meta[b"pyquant.method"] = b"search"
    with pa.OSFile(str(bad), "wb") as f, pa.ipc.new_file(f, table.schema.with_metadata(meta)) as w:
        w.write_table(table)
    with pytest.raises(pyquant.CheckpointError, match="method search"):
        pyquant.load_quantized(bad)


def test_cli_quantize_takes_method_and_scale_dtype(tmp_path):
    import subprocess
    import sys

    import safetensors.numpy

    x = np.random.default_rng(4).standard_normal((16, 256)).astype(np.float32)
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    safetensors.numpy.save_file({"w": x}, str(src))
    args = [sys.executable, "-m", "pyquant", "quantize", str(src), str(dst), "--bits", "3", "--group-size", "64",
            "--method", "search", "--scale-dtype", "float16"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = pyquant.load_quantized(dst)["w"]
    want = pyquant.quantize_ptr(x, bits=3, group_size=64, method="search", scale_dtype="float16")
    assert outcome(lambda: got) == outcome(lambda: want)
    bad = subprocess.run(args[:-1] + ["bfloat16"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--scale-dtype" in bad.stderr


# Per-group kinds for the search's lanes (16 groups at once): each group of a
# tensor gets its own, so that a run of lanes mixes them.
GROUP_KINDS = ["random", "constant", "zeros", "negzero", "subnormal", "ties", "outlier", "huge", "tiny",
               "negative", "halfmax", "nan"]


@st.composite
def lane_tensors(draw):
    """(x float32 2-D, bits, group_size) with one kind per group, 1 to 50 groups."""
    bits = draw(st.sampled_from([2, 3, 4, 8]))
    unit = 8 if bits == 3 else 8 // bits
    g = unit * draw(st.integers(1, 64 // unit))
    per_row = draw(st.integers(1, 5))
    rows = draw(st.integers(1, max(1, 50 // per_row)))
    seed = draw(st.integers(0, 2**32 - 1))
    kinds = draw(st.lists(st.sampled_from(GROUP_KINDS), min_size=rows * per_row, max_size=rows * per_row))
    rng = np.random.default_rng(seed)
    groups = []
    for kind in kinds:
        u = rng.standard_t(3, g).astype(np.float32)
        v = {
            "random": u,
            "constant": np.full(g, u[0]),
            "zeros": np.zeros(g),
            "negzero": np.full(g, -0.0),
            "subnormal": u * np.float32(1e-40),
            "ties": rng.integers(0, 2 * (2**bits - 1) + 1, g).astype(np.float32) * 0.5,
            "outlier": np.where(np.arange(g) == g // 3, 100.0, u * 1e-3),
            "huge": u * np.float32(1e30),
            "tiny": u * np.float32(1e-20),
            "negative": -np.abs(u) - 0.25,
            "halfmax": u * np.float32(2e4),
            "nan": np.where(np.arange(g) == g - 1, np.nan, u),
        }[kind]
        groups.append(np.asarray(v, dtype=np.float32))
    x = np.concatenate(groups).reshape(rows, per_row * g)
    return x, bits, g


@given(lane_tensors(), st.sampled_from(sorted(SCALE_DTYPES)), st.booleans(), st.sampled_from([1, None]))
def test_search_kernel_is_the_scalar_reference(case, scale_dtype, weighted, threads):
    """The vectorized search (one lane per group) against the scalar
    definition (pq_debug_search_reference, a test-ffi export): the same bytes,
    or the same error, for mixed groups, with and without importance."""
    from pyquant._lib import ffi, lib

    x, bits, g = case
    k = x.shape[-1]
    w = None
    if weighted:
        w = (np.random.default_rng(k).standard_t(3, k) ** 2).astype(np.float32)
        w[::3] = 0.0
    n_groups = x.size // g
    codes = np.zeros(x.size * bits // 8, np.uint8)
    scales = np.zeros(n_groups, np.float32)
    mins = np.zeros(n_groups, np.float32)
    err = ffi.new("PqError *")
    ptr = lambda a, t: ffi.cast(t, a.ctypes.data) if a is not None else ffi.NULL  # noqa: E731
    status = lib.pq_debug_search_reference(
        ptr(x, "float *"), x.size, k, bits, g, SCALE_DTYPES[scale_dtype], ptr(w, "float *"),
        ptr(codes, "uint8_t *"), ptr(scales, "float *"), ptr(mins, "float *"), err)
    kw = {"bits": bits, "group_size": g, "method": "search", "scale_dtype": scale_dtype, "threads": threads}
    if status != 0:
        with pytest.raises(pyquant.QuantizeError) as exc:
            pyquant.quantize_ptr(x, importance=w, **kw)
        assert ffi.string(err.message).decode() in str(exc.value)
        return
    qt = pyquant.quantize_ptr(x, importance=w, **kw)
    assert qt.codes.tobytes() == codes.tobytes()
    assert qt.scales.view(np.uint32).tobytes() == scales.view(np.uint32).tobytes()
    assert qt.mins.view(np.uint32).tobytes() == mins.view(np.uint32).tobytes()


@given(tensors(), SCHEMES, st.booleans(), st.booleans())
def test_axis_0_is_the_transpose_on_every_path(case, scheme, weighted, strided):
    """quantize(W, axis=0) gives exactly the bytes of quantize(W.T) (W.T made
    contiguous), on every path and thread count; dequantize returns W's shape
    with W.T's values transposed back."""
    x, _, bits, group_size = case
    method, scale_dtype = scheme
    xt = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))  # the transpose of W, rows of K
    w = np.ascontiguousarray(xt.T)  # W: K rows, groups down its columns
    kw = {"bits": bits, "group_size": group_size, "method": method, "scale_dtype": scale_dtype}
    if weighted and method == "search":
        kw["importance"] = (np.arange(w.shape[0]) % 5).astype(np.float32) * 0.75
    want = outcome(lambda: pyquant.quantize_ptr(xt, threads=1, **kw))
    src = np.asfortranarray(w) if strided else w  # quantize_copy takes any layout
    assert outcome(lambda: pyquant.quantize_ptr(w, axis=0, threads=1, **kw)) == want
    assert outcome(lambda: pyquant.quantize_ptr(w, axis=0, **kw)) == want
    assert outcome(lambda: pyquant.quantize_copy(src, axis=0, threads=2, **kw)) == want
    batch_kw = {k: v for k, v in kw.items() if k != "importance"}
    imp = None if "importance" not in kw else {"b": kw["importance"]}
    got = outcome(lambda: pyquant.quantize_batch({"a": w, "b": w}, axis=0, importance=imp, **batch_kw)["b"])
    if w.dtype in (np.float32, np.float16):  # the Arrow path: the same bytes (or error), an axis column
        expect_arrow(want, w, bits, group_size, method, scale_dtype, axis=0, importance=kw.get("importance"))
    if isinstance(want[0], type):
        assert got[0] is want[0] and got[1].endswith(want[1])
        return
    assert got == want
    assert outcome(lambda: pyquant.quantize(w, axis=0, **kw)) == want
    qt = pyquant.quantize_ptr(w, axis=0, **kw)
    ref = pyquant.quantize_ptr(xt, **kw)
    assert (qt.shape, qt.axis, qt.codes.shape, qt.scales.shape) == (w.shape, 0, ref.codes.shape, ref.scales.shape)
    back = pyquant.dequantize(ref)
    for dtype in (None, np.float32):
        y = pyquant.dequantize(qt, dtype, threads=1)
        assert y.shape == w.shape and y.tobytes() == np.ascontiguousarray(pyquant.dequantize(ref, dtype).T).tobytes()
    y2 = pyquant.dequantize_batch([qt, ref])
    assert y2[0].tobytes() == np.ascontiguousarray(back.T).tobytes() and y2[1].tobytes() == back.tobytes()
    out = np.empty_like(y2[0])
    assert pyquant.dequantize(qt, out=out) is out and out.tobytes() == y2[0].tobytes()


def test_axis_0_is_for_2_d_tensors():
    x = np.ones((4, 64), np.float32)
    for bad in (1, -2, 0.0, "0", True):
        with pytest.raises(pyquant.InvalidSchemeError, match="axis"):
            pyquant.quantize_ptr(x, group_size=4, axis=bad)
    for shape in ((64,), (2, 4, 64)):
        with pytest.raises(pyquant.ShapeError, match="axis=0 is for 2-D"):
            pyquant.quantize_ptr(np.ones(shape, np.float32), group_size=64, axis=0)
    with pytest.raises(pyquant.InvalidGroupSizeError):  # the group runs down the 4 rows
        pyquant.quantize_ptr(x, group_size=64, axis=0)
    qt = pyquant.quantize_ptr(x, group_size=4, axis=0)
    assert "axis=0" in repr(qt) and "axis" not in repr(pyquant.quantize_ptr(x, group_size=4))
    with pytest.raises(pyquant.ShapeError, match="axis 0 is for 2-D"):  # the batch's tensor is 1-D
        pyquant.quantize(pa_batch(), axis=0)
    for bad in (1, "0"):
        with pytest.raises(pyquant.InvalidSchemeError, match="axis"):
            pyquant.quantize_arrow(pa_batch(), axis=bad)
        with pytest.raises(pyquant.InvalidSchemeError, match="axis"):
            pyquant.quantized_schema(axis=bad)
    with pytest.raises(pyquant.ShapeError, match="axis=0 is for 2-D"):
        pyquant.QuantizedTensor(qt.codes, qt.scales, qt.mins, (256,), "float32", 4, 4, axis=0)


def pa_batch():
    pa = pytest.importorskip("pyarrow")
    return pa.record_batch({"name": ["w"], "weights": pa.array([[1.0] * 64], pa.list_(pa.float32())),
                            "shape": pa.array([[64]], pa.list_(pa.int64()))})


def assert_axis_0_checkpoint(src, dst, tensors, bits, method, scale_dtype):
    """``dst`` (group size 64, axis 0, either format) loads as the transposes'
    bytes of the 2-D ``tensors`` (the others carried over as they are),
    dequantize_file writes their dequantized values, and the CLI writes the
    same file."""
    import subprocess
    import sys

    import safetensors.numpy

    loaded = pyquant.load_quantized(dst)
    for name, x in tensors.items():
        if x.ndim != 2:
            np.testing.assert_array_equal(loaded[name], x)
            continue
        want = pyquant.quantize_ptr(np.ascontiguousarray(x.T), bits=bits, group_size=64, method=method,
                                    scale_dtype=scale_dtype)
        assert outcome(lambda: loaded[name]) == outcome(lambda: want)
        assert (loaded[name].axis, loaded[name].shape) == (0, x.shape)
    back = dst.parent / "back.safetensors"
    pyquant.dequantize_file(dst, back, force=True)
    with safetensors.safe_open(str(back), "numpy") as f:
        for name, x in tensors.items():
            if x.ndim == 2:
                assert f.get_tensor(name).tobytes() == loaded[name].dequantize().tobytes()
    cli = dst.parent / f"cli-{dst.name}"
    proc = subprocess.run([sys.executable, "-m", "pyquant", "quantize", str(src), str(cli), "--bits", str(bits),
                           "--group-size", "64", "--axis", "0", "--method", method, "--scale-dtype", scale_dtype],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert cli.read_bytes() == dst.read_bytes()


def test_checkpoints_carry_the_axis(tmp_path):
    """quantize_file(axis=0) stores each 2-D tensor as its transpose's codes,
    scales and mins, with pyquant.axis = "0" (absent by default: those files
    are byte-identical to before); load_quantized and dequantize_file honour it."""

    import safetensors.numpy

    rng = np.random.default_rng(5)
    tensors = {"a.weight": rng.standard_t(4, (128, 48)).astype(np.float32),
               "b.weight": rng.standard_normal((64, 256)).astype(np.float16),
               "a.bias": np.ones(48, np.float32), "c": rng.standard_normal((2, 64, 64)).astype(np.float32)}
    src = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(src))
    for method, scale_dtype in [("minmax", "float32"), ("search", "float16")]:
        dst = tmp_path / f"axis0-{method}.safetensors"
        s = pyquant.quantize_file(src, dst, bits=3, group_size=64, axis=0, method=method, scale_dtype=scale_dtype)
        assert s.quantized == 2 and "not 2-D" in s.kept_reasons["c"]
        with safetensors.safe_open(str(dst), "numpy") as f:
            assert f.metadata()["pyquant.axis"] == "0"
        assert_axis_0_checkpoint(src, dst, tensors, 3, method, scale_dtype)
    plain, default = tmp_path / "plain.safetensors", tmp_path / "default.safetensors"
    pyquant.quantize_file(src, plain, bits=3, group_size=64)
    pyquant.quantize_file(src, default, bits=3, group_size=64, axis=-1)
    assert plain.read_bytes() == default.read_bytes()
    with safetensors.safe_open(str(plain), "numpy") as f:
        assert "pyquant.axis" not in f.metadata()
    assert pyquant.load_quantized(plain)["b.weight"].axis == -1
    with pytest.raises(pyquant.InvalidSchemeError, match="axis"):
        pyquant.quantize_file(src, tmp_path / "q2.safetensors", axis=1)


def test_arrow_checkpoints_and_files_carry_the_axis(tmp_path):
    """format="arrow" with axis=0: rows in quantized_schema(..., axis=0), the
    transpose's bytes, pyquant.axis in the metadata; load_quantized,
    dequantize_file and the CLI agree; Arrow IPC weight files too."""

    import pyarrow as pa
    import pyarrow.ipc
    import safetensors.numpy

    rng = np.random.default_rng(7)
    tensors = {"a.weight": rng.standard_t(4, (128, 48)).astype(np.float32),
               "b.weight": rng.standard_normal((64, 32)).astype(np.float16), "a.bias": np.ones(48, np.float32)}
    src = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(src))
    for method, scale_dtype in [("minmax", "float32"), ("search", "float16")]:
        dst = tmp_path / f"axis0-{method}.arrow"
        s = pyquant.quantize_file(src, dst, bits=4, group_size=64, format="arrow", axis=0, method=method,
                                  scale_dtype=scale_dtype)
        assert s.quantized == 2 and s.kept == 1
        with pa.OSFile(str(dst)) as f:
            table = pa.ipc.open_file(f).read_all()
        assert table.schema.remove_metadata().equals(pyquant.quantized_schema(method, scale_dtype, 0))
        assert table.schema.metadata[b"pyquant.axis"] == b"0"
        assert_axis_0_checkpoint(src, dst, tensors, 4, method, scale_dtype)
    # A file whose schema disagrees with its pyquant.axis is refused.
    bad = tmp_path / "bad.arrow"
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"pyquant.axis"}
    with pa.OSFile(str(bad), "wb") as f, pa.ipc.new_file(f, table.schema.with_metadata(meta)) as w:
        w.write_table(table)
    with pytest.raises(pyquant.CheckpointError, match="axis -1"):
        pyquant.load_quantized(bad)
    weights_file_quantizes_as_quantize_arrow(tmp_path, tensors["a.weight"], bits=3, group_size=32, axis=0)
    with pytest.raises(pyquant.InvalidSchemeError, match="axis"):
        pyquant.quantize_arrow_file(tmp_path / "weights.arrow", tmp_path / "q2.arrow", axis=1)
    assert not (tmp_path / "q2.arrow").exists()


def test_arrow_importance_is_named_and_checked(tmp_path):
    """importance on the Arrow path: by tensor name, checked as for quantize_ptr
    (length, sign, finiteness, method), a name that is no tensor refused, in
    streams too (the batches share the mapping)."""
    pa = pytest.importorskip("pyarrow")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    w = rng.random(64).astype(np.float32)
    batch = pa.record_batch({"name": ["a", "b"], "weights": pa.array([x.ravel(), x.ravel()]),
                             "shape": pa.array([list(x.shape)] * 2)})
    kw = {"bits": 3, "group_size": 32, "method": "search"}
    for bad, error, text in [(w[:5], InvalidImatrixError, "one per column"),
                             (-w, InvalidImatrixError, "negative"),
                             (np.full(64, np.nan, np.float32), InvalidImatrixError, "finite"),
                             (w.reshape(8, 8), InvalidImatrixError, "1-D")]:
        for quantize in (pyquant.quantize_ptr, pyquant.quantize_arrow):
            with pytest.raises(error) as exc:
                if quantize is pyquant.quantize_arrow:
                    quantize(batch, importance={"b": bad}, **kw)
                else:
                    quantize(x, importance=bad, **kw)
            assert text in str(exc.value) or text in str(exc.value).lower(), exc.value
            if quantize is pyquant.quantize_arrow:
                assert "'b'" in str(exc.value) or '"b"' in str(exc.value)
    with pytest.raises(pyquant.InvalidSchemeError):  # min-max takes no weights, as quantize_ptr
        pyquant.quantize_arrow(batch, bits=3, group_size=32, importance={"b": w})
    with pytest.raises(pyquant.QuantizeError, match="'c', which is not a tensor"):
        pyquant.quantize_arrow(batch, importance={"c": w}, **kw)
    with pytest.raises(InvalidImatrixError, match="dict"):
        pyquant.quantize_arrow(batch, importance=w, **kw)
    # A stream: each batch takes the entries of its tensors; a reader checks the names once read.
    table = pa.Table.from_batches([batch.slice(0, 1), batch.slice(1, 1)])
    want = pyquant.quantize_ptr(x, importance=w, **kw).codes.tobytes()
    out = pyquant.quantize_arrow(table, importance={"b": w}, **kw)
    assert out.column("codes")[1].as_py() == want != out.column("codes")[0].as_py()
    reader = pyquant.quantize_arrow(pa.RecordBatchReader.from_batches(batch.schema, table.to_batches()),
                                    importance={"b": w, "c": w}, **kw)
    with pytest.raises(pyquant.QuantizeError, match="'c'"):
        reader.read_all()
    import safetensors.numpy

    safetensors.numpy.save_file({"b": x}, str(tmp_path / "model.safetensors"))
    with pytest.raises(pyquant.PathError, match="importance"):
        pyquant.quantize(tmp_path / "model.safetensors", dst=tmp_path / "out.safetensors", importance={"b": w})

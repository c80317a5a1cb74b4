"""The Python API beyond the scheme itself: types, conversions, errors, version."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import pyquant
from pyquant import _call
from pyquant._lib import check_native_version, ffi, lib


def test_every_status_maps_to_one_exception_class():
    statuses = {name: getattr(lib, name) for name in dir(lib) if name.startswith("PQ_STATUS_")}
    assert statuses.pop("PQ_STATUS_OK") == 0
    assert len(set(statuses.values())) == len(statuses)
    for name, value in statuses.items():
        cls = _call._BY_STATUS[value]
        assert cls is _call._STATUS_CLASSES[name]
        assert issubclass(cls, pyquant.QuantizeError) and issubclass(cls, ValueError)
    assert len(_call._BY_STATUS) == len(statuses)
    # Only the internal statuses share a class; an unknown status is internal too.
    shared = [n for n, c in _call._STATUS_CLASSES.items() if c is pyquant.InternalError]
    assert shared == ["PQ_STATUS_PANIC", "PQ_STATUS_INTERNAL"]
    assert _call.error_class(10**6) is pyquant.InternalError


def test_batch_error_names_the_failing_tensor_from_failed_item():
    x = np.ones((2, 128), np.float32)
    bad = x.copy()
    bad[1, 5] = np.inf
    with pytest.raises(pyquant.NonFiniteError) as info:
        pyquant.quantize_batch({"a": x, "b.weight": bad, "c": x})
    text = str(info.value)
    assert text.startswith("tensor 'b.weight': ")
    # The rest is the native message; builds before ABI 3 also began it "item 1: ".
    assert text.removeprefix("tensor 'b.weight': ").removeprefix("item 1: ").startswith("inf at")


def test_exported_names():
    for name in pyquant.__all__:
        assert hasattr(pyquant, name), name


def test_native_version_matches_and_mismatch_is_refused():
    assert ffi.string(lib.pq_version()).decode() == pyquant.__version__
    assert lib.pq_abi_version() == lib.PQ_ABI_VERSION
    with pytest.raises(ImportError, match="native library version 9.9.9"):
        check_native_version("9.9.9", lib.PQ_ABI_VERSION, lib.PQ_ABI_VERSION)
    with pytest.raises(ImportError, match="ABI 2"):
        check_native_version(pyquant.__version__, 2, 1)


def test_versions_agree_across_cargo_and_python():
    import pathlib

    cargo = (pathlib.Path(__file__).parents[1] / "rust" / "Cargo.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', cargo, re.M).group(1) == pyquant.__version__


def test_quantized_tensor_fields_repr_and_sizes():
    a = np.random.default_rng(0).normal(size=(3, 4, 256)).astype(np.float16)
    qt = pyquant.quantize_ptr(a, bits=2, group_size=64)
    assert qt.codes.shape == (3, 4, 64) and qt.codes.dtype == np.uint8
    assert qt.scales.shape == qt.mins.shape == (3, 4, 4) and qt.scales.dtype == np.float32
    assert (qt.shape, qt.dtype, qt.bits, qt.group_size) == ((3, 4, 256), "float16", 2, 64)
    assert qt.nbytes == qt.codes.nbytes + 2 * qt.scales.nbytes
    assert qt.original_nbytes == a.nbytes
    assert qt.compression_ratio == pytest.approx(a.nbytes / qt.nbytes)
    r = repr(qt)
    assert "shape=(3, 4, 256)" in r and "bits=2" in r and "float16" in r and "compression=" in r


def test_group_size_none_is_one_group_per_row():
    a = np.random.default_rng(1).normal(size=(5, 96)).astype(np.float32)
    qt = pyquant.quantize_ptr(a, group_size=None, bits=8)
    assert qt.scales.shape == (5, 1) and qt.group_size == 96
    np.testing.assert_array_equal(qt.mins[:, 0], a.min(axis=1))
    one_d = pyquant.quantize_ptr(a[0], group_size=None)
    assert one_d.scales.shape == (1,)


def test_bfloat16_from_ml_dtypes_and_from_uint16_bits_agree():
    a = np.random.default_rng(2).normal(size=(4, 128)).astype(ml_dtypes.bfloat16)
    via_dtype = pyquant.quantize_ptr(a)
    via_bits = pyquant.quantize_ptr(a.view(np.uint16), dtype="bfloat16")
    via_copy = pyquant.quantize_copy(a.view(np.uint16), dtype=ml_dtypes.bfloat16)
    for other in (via_bits, via_copy):
        assert other.dtype == "bfloat16"
        np.testing.assert_array_equal(other.codes, via_dtype.codes)
    assert via_bits.dequantize().dtype == ml_dtypes.bfloat16
    with pytest.raises(pyquant.UnsupportedDtypeError, match="needs a uint16 or bfloat16 array"):
        pyquant.quantize_ptr(np.zeros((1, 128), np.float32), dtype="bfloat16")
    with pytest.raises(pyquant.UnsupportedDtypeError, match="does not match"):
        pyquant.quantize_ptr(np.zeros((1, 128), np.float32), dtype=np.float16)
    with pytest.raises(pyquant.UnsupportedDtypeError):
        pyquant.quantize_ptr(np.zeros((1, 128), np.uint16))


@pytest.mark.parametrize("out", ["float32", "float16", "bfloat16", np.float32, ml_dtypes.bfloat16])
def test_dequantize_to_each_dtype(out):
    a = np.random.default_rng(3).normal(size=(2, 128)).astype(np.float32)
    qt = pyquant.quantize_ptr(a)
    y32 = pyquant.dequantize(qt)
    y = qt.dequantize(out)
    assert y.dtype == np.dtype(out) and y.shape == a.shape
    np.testing.assert_array_equal(y.view(np.uint8), y32.astype(np.dtype(out)).view(np.uint8))
    with pytest.raises(pyquant.UnsupportedDtypeError):
        qt.dequantize(np.float64)


def test_quantize_copy_accepts_lists_and_ptr_refuses_them():
    rows = [[float(i + j) for i in range(128)] for j in range(2)]
    qt = pyquant.quantize_copy(np.asarray(rows, np.float32))
    with pytest.raises(pyquant.CopyRequiredError, match="needs a numpy array"):
        pyquant.quantize_ptr(rows)
    assert qt.codes.shape == (2, 64)


def test_hand_built_quantized_tensor_is_checked():
    qt = pyquant.quantize_ptr(np.ones((1, 128), np.float32))
    with pytest.raises(pyquant.UnsupportedDtypeError, match="codes must be a numpy uint8"):
        pyquant.QuantizedTensor(qt.codes.astype(np.int16), qt.scales, qt.mins, qt.shape, "float32", 4, 128)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="float64"):
        pyquant.QuantizedTensor(qt.codes, qt.scales, qt.mins, qt.shape, "float64", 4, 128)
    short = pyquant.QuantizedTensor(qt.codes[:, :10], qt.scales, qt.mins, qt.shape, "float32", 4, 128)
    with pytest.raises(pyquant.BufferSizeError, match="codes has 10 elements, needs exactly 64"):
        short.dequantize()


def test_errors_are_value_errors_with_messages():
    with pytest.raises(ValueError, match="bits must be 2, 3, 4 or 8, got 5"):
        pyquant.quantize_ptr(np.zeros((1, 128), np.float32), bits=5)


def test_one_dtype_table():
    from pyquant import dtypes

    assert pyquant.SUPPORTED_DTYPES == ("float32", "float16", "bfloat16")
    assert [d.name for d in dtypes.QUANTIZABLE] == list(pyquant.SUPPORTED_DTYPES)
    c_codes = {name[len("PQ_DTYPE_"):]: getattr(lib, name) for name in dir(lib) if name.startswith("PQ_DTYPE_")}
    assert {d.safetensors: d.c_code for d in dtypes.QUANTIZABLE} == c_codes
    for d in dtypes.ALL:
        assert str(d.numpy) == d.name and dtypes.BY_SAFETENSORS[d.safetensors] is d
        assert d.numpy == d.numpy.newbyteorder("<")  # little-endian, as the file formats store it
    ggml = {d.name: d.ggml_type for d in dtypes.ALL if d.ggml_type is not None}
    assert ggml == {"float32": 0, "float16": 1, "int8": 24, "int16": 25, "int32": 26, "int64": 27,
                    "float64": 28, "bfloat16": 30}


def _same(a: pyquant.QuantizedTensor, b: pyquant.QuantizedTensor) -> bool:
    return (a.codes.tobytes(), a.scales.tobytes(), a.mins.tobytes(), a.shape, a.dtype, a.bits, a.group_size) == (
        b.codes.tobytes(), b.scales.tobytes(), b.mins.tobytes(), b.shape, b.dtype, b.bits, b.group_size)


def test_one_block_per_result_viewed_three_ways():
    x = np.random.default_rng(3).normal(size=(3, 256)).astype(np.float32)
    qt = pyquant.quantize_ptr(x)
    assert qt.codes.base is qt.scales.base is qt.mins.base is not None
    assert (qt.codes.dtype, qt.scales.dtype, qt.mins.dtype) == (np.uint8, np.float32, np.float32)
    assert qt.codes.shape == (3, 128) and qt.scales.shape == qt.mins.shape == (3, 2)
    assert all(a.flags.c_contiguous and a.flags.aligned and a.flags.writeable for a in (qt.codes, qt.scales, qt.mins))
    assert _same(qt, pyquant.quantize_copy(x))
    # Cached plans: a float 4.0 is still refused after an int 4 was seen.
    with pytest.raises(pyquant.InvalidBitsError):
        pyquant.quantize_ptr(x, bits=4.0)  # type: ignore[arg-type]


def test_result_is_immutable_pickles_and_views_its_block_lazily():
    import copy
    import pickle

    x = np.random.default_rng(6).normal(size=(3, 256)).astype(np.float32)
    qt = pyquant.quantize_ptr(x, group_size=64)
    for name in ("codes", "shape", "bits", "method"):
        with pytest.raises(AttributeError):
            setattr(qt, name, None)
    for back in (pickle.loads(pickle.dumps(qt)), copy.deepcopy(qt), copy.copy(qt)):
        assert type(back) is pyquant.QuantizedTensor and back is not qt and back != qt  # equality is identity
        assert _same(back, qt) and (back.method, back.scale_dtype, back.axis) == (qt.method, qt.scale_dtype, qt.axis)
    assert qt == qt and len({qt, qt}) == 1
    # A batch family: one block of results end to end, each viewed at its own offset.
    ys = [x, x[:2], x + 1]
    results = pyquant.quantize_batch(ys, group_size=64)
    assert results[0].codes.base is results[2].codes.base and results[1].codes.base is not results[0].codes.base
    assert all(_same(r, pyquant.quantize_ptr(y, group_size=64)) for r, y in zip(results, ys))
    results[0].codes[...] = 0  # writable, and no result shares bytes with another
    assert _same(results[2], pyquant.quantize_ptr(x + 1, group_size=64))


def test_out_reuses_the_callers_arrays():
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(4, 256)).astype(np.float32) for _ in range(3)]
    out = pyquant.quantize_ptr(np.zeros((4, 256), np.float32))
    for x in xs:
        got = pyquant.quantize_ptr(x, out=out)
        assert got.codes is out.codes and got.scales is out.scales and got.mins is out.mins
        assert _same(got, pyquant.quantize_ptr(x))
    # A tuple of arrays works too, e.g. rows of bigger arrays.
    codes, scales, mins = np.empty((2, 4, 128), np.uint8), np.empty((2, 4, 2), np.float32), np.empty((2, 4, 2), np.float32)
    got = pyquant.quantize_ptr(xs[0], out=(codes[1], scales[1], mins[1]))
    assert got.codes.base is codes and _same(got, pyquant.quantize_ptr(xs[0]))
    # dequantize into a given array, of the result's dtype or another.
    y = np.empty((4, 256), np.float32)
    assert pyquant.dequantize(got, out=y) is y and np.array_equal(y, got.dequantize())
    h = np.empty((4, 256), np.float16)
    assert pyquant.dequantize(got, out=h) is h and np.array_equal(h, got.dequantize(np.float16))
    # quantize_batch into an earlier result (a list, or a dict).
    first = pyquant.quantize_batch(xs)
    again = pyquant.quantize_batch(xs[::-1], out=first)
    assert all(a.codes is b.codes for a, b in zip(again, first))
    assert all(_same(a, pyquant.quantize_ptr(x)) for a, x in zip(again, xs[::-1]))
    named = {f"l{i}": x for i, x in enumerate(xs)}
    d = pyquant.quantize_batch(named, out=pyquant.quantize_batch(named))
    assert all(_same(d[k], pyquant.quantize_ptr(v)) for k, v in named.items())


def test_out_is_checked():
    x = np.random.default_rng(5).normal(size=(4, 256)).astype(np.float32)
    qt = pyquant.quantize_ptr(x)
    with pytest.raises(pyquant.ShapeError, match="out codes has shape"):
        pyquant.quantize_ptr(x[:2], out=qt)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="out scales must be a numpy float32"):
        pyquant.quantize_ptr(x, out=(qt.codes, qt.scales.astype(np.float64), qt.mins))
    strided = np.empty((4, 4), np.float32)[:, ::2]
    with pytest.raises(pyquant.CopyRequiredError, match="out mins must be C-contiguous"):
        pyquant.quantize_ptr(x, out=(qt.codes, qt.scales, strided))
    ro = qt.mins.copy()
    ro.flags.writeable = False
    with pytest.raises(pyquant.QuantizeError, match="read-only"):
        pyquant.quantize_ptr(x, out=(qt.codes, qt.scales, ro))
    with pytest.raises(pyquant.QuantizeError, match="out must be a QuantizedTensor"):
        pyquant.quantize_ptr(x, out=[qt.codes, qt.scales, qt.mins])  # type: ignore[arg-type]
    # Alignment and overlap are the C ABI's checks.
    raw = np.zeros(4 * 2 * 4 + 4, np.uint8)
    misaligned = raw[1:33].view(np.float32).reshape(4, 2)
    with pytest.raises(pyquant.MisalignedError):
        pyquant.quantize_ptr(x, out=(qt.codes, misaligned, qt.mins))
    with pytest.raises(pyquant.OverlapError):
        pyquant.quantize_ptr(x, out=(qt.codes, qt.scales, qt.scales))
    with pytest.raises(pyquant.OverlapError):
        pyquant.quantize_ptr(x, out=(x.view(np.uint8).reshape(-1)[:512].reshape(4, 128), qt.scales, qt.mins))
    y = np.empty((4, 256), np.float32)
    with pytest.raises(pyquant.ShapeError):
        pyquant.dequantize(qt, out=y[:2])
    with pytest.raises(pyquant.UnsupportedDtypeError):
        pyquant.dequantize(qt, np.float16, out=y)
    codes_in_y = y.view(np.uint8).reshape(-1)[:512].reshape(4, 128)
    codes_in_y[...] = qt.codes
    inside = pyquant.QuantizedTensor(codes_in_y, qt.scales, qt.mins, qt.shape, qt.dtype, qt.bits, qt.group_size)
    with pytest.raises(pyquant.OverlapError):
        pyquant.dequantize(inside, out=y)
    # quantize_batch: the failing tensor is named, and outputs may not be shared.
    with pytest.raises(pyquant.ShapeError, match="tensor 'b': out codes"):
        pyquant.quantize_batch({"a": x, "b": x}, out={"a": qt, "b": pyquant.quantize_ptr(x[:2])})
    with pytest.raises(pyquant.QuantizeError, match="out has no tensor 'b'"):
        pyquant.quantize_batch({"a": x, "b": x}, out={"a": qt})
    with pytest.raises(pyquant.OverlapError):
        pyquant.quantize_batch([x, x], out=[qt, qt])

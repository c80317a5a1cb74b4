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
    with pytest.raises(ValueError, match="bits must be 2, 4 or 8, got 3"):
        pyquant.quantize_ptr(np.zeros((1, 128), np.float32), bits=3)


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

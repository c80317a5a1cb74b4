"""Rows 1-20 of docs/bad-inputs.md, from Python. Each test names its row.

Rows that only make sense at the C boundary (NULL pointers, overlapping or
too-small caller buffers, overflowing lengths) call the C ABI through the
CFFI module, as a C host would; tests/c/test_abi.c covers them from C too.
"""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import pyquant
from pyquant._lib import ffi, lib
from pyquant._call import check, error_struct

RNG = np.random.default_rng(1234)


def weights(*shape, dtype=np.float32):
    return RNG.normal(0, 1, size=shape).astype(dtype)


def same(a: pyquant.QuantizedTensor, b: pyquant.QuantizedTensor) -> bool:
    return (
        np.array_equal(a.codes, b.codes)
        and np.array_equal(a.scales.view(np.uint32), b.scales.view(np.uint32))
        and np.array_equal(a.mins.view(np.uint32), b.mins.view(np.uint32))
    )


def c_quantize(x, codes, scales, mins, *, n=None, row_len=None, bits=4, group_size=None, dtype=None):
    """pq_quantize with explicit pointers/lengths; None buffers become NULL."""

    def ptr(a, t):
        return ffi.NULL if a is None else ffi.from_buffer(t, a, require_writable=t != "char[]")

    err = error_struct()
    status = lib.pq_quantize(
        lib.PQ_DTYPE_F32 if dtype is None else dtype,
        ptr(x, "char[]"),
        x.size if n is None else n,
        row_len or (x.shape[-1] if x is not None else 8),
        bits,
        group_size or (x.shape[-1] if x is not None else 8),
        0,  # threads
        ptr(codes, "uint8_t[]"),
        0 if codes is None else codes.size,
        ptr(scales, "float[]"),
        0 if scales is None else scales.size,
        ptr(mins, "float[]"),
        0 if mins is None else mins.size,
        err,
    )
    check(status, err)


# Row 1 -----------------------------------------------------------------------
@pytest.mark.parametrize("view", ["a[::2]", "a.T", "a[::-1]", "a[:, ::2]"])
def test_row01_non_contiguous(view):
    a = weights(64, 64)
    v = eval(view)
    with pytest.raises(pyquant.CopyRequiredError, match="quantize_copy.*np.ascontiguousarray"):
        pyquant.quantize_ptr(v, group_size=32)
    assert same(pyquant.quantize_copy(v, group_size=32), pyquant.quantize_ptr(v.copy(), group_size=32))


# Row 2 -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
def test_row02_misaligned(dtype):
    a = weights(4, 128, dtype=dtype)
    buf = bytearray(a.nbytes + 1)
    buf[1:] = a.tobytes()
    v = np.frombuffer(buf, dtype, offset=1).reshape(4, 128)
    assert not v.flags.aligned
    with pytest.raises(pyquant.CopyRequiredError, match="not aligned"):
        pyquant.quantize_ptr(v)
    assert same(pyquant.quantize_copy(v), pyquant.quantize_ptr(a))


def test_row02_misaligned_pointer_from_c_is_an_error():
    raw = np.zeros(129 * 4 + 4, dtype=np.uint8)
    odd = np.frombuffer(raw.data, np.uint8, count=128 * 4, offset=1)
    with pytest.raises(pyquant.MisalignedError, match="not aligned to 4 bytes"):
        c_quantize(odd, np.empty(64, np.uint8), np.empty(1, np.float32), np.empty(1, np.float32),
                   n=128, row_len=128, group_size=128)


# Row 3 -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [">f4", ">f2"])
def test_row03_non_native_byte_order(dtype):
    native = weights(8, 128, dtype=dtype[1:].join("<" * 0) or "=" + dtype[1:])
    swapped = native.astype(dtype)
    with pytest.raises(pyquant.CopyRequiredError, match="big-endian"):
        pyquant.quantize_ptr(swapped)
    assert same(pyquant.quantize_copy(swapped), pyquant.quantize_ptr(native))


# Row 4 -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, np.uint8, object, np.complex64, np.bool_])
@pytest.mark.parametrize("path", [pyquant.quantize_ptr, pyquant.quantize_copy])
def test_row04_unsupported_dtype(dtype, path):
    a = np.zeros((2, 128), dtype=dtype)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="float32, float16, bfloat16"):
        path(a)


def test_row04_unsupported_dtype_code_from_c():
    x = np.zeros(8, np.float32)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="dtype code 7"):
        c_quantize(x, np.empty(4, np.uint8), np.empty(1, np.float32), np.empty(1, np.float32), dtype=7)


# Row 5 -----------------------------------------------------------------------
@pytest.mark.parametrize("path", [pyquant.quantize_ptr, pyquant.quantize_copy])
def test_row05_read_only_input(path):
    a = weights(4, 256)
    a.setflags(write=False)
    assert same(path(a), pyquant.quantize_ptr(a.copy()))


# Row 6 -----------------------------------------------------------------------
@pytest.mark.parametrize("short", ["codes", "scales", "mins"])
def test_row06_too_small_output_is_rejected_before_any_write(short):
    x = weights(2, 128)
    bufs = {"codes": np.full(128 + 8, 0xAB, np.uint8), "scales": np.full(2 + 4, 7.0, np.float32),
            "mins": np.full(2 + 4, 7.0, np.float32)}
    # Hand the call one element too few for one buffer; the spare tail is a canary.
    sizes = {"codes": 128, "scales": 2, "mins": 2}
    sizes[short] -= 1
    views = {k: bufs[k][: sizes[k]] for k in bufs}
    with pytest.raises(pyquant.BufferSizeError, match=f"{short} has {sizes[short]} elements"):
        c_quantize(x, views["codes"], views["scales"], views["mins"])
    assert np.all(bufs["codes"] == 0xAB) and np.all(bufs["scales"] == 7) and np.all(bufs["mins"] == 7)


def test_row06_read_only_output_is_refused():
    x = weights(1, 128)
    codes = np.zeros(64, np.uint8)
    codes.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        c_quantize(x, codes, np.zeros(1, np.float32), np.zeros(1, np.float32))


# Row 7 -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 128), (0, 3, 256), (2, 0, 128)])
def test_row07_zero_rows_give_empty_results(shape):
    qt = pyquant.quantize_ptr(np.zeros(shape, np.float32))
    assert qt.codes.size == qt.scales.size == qt.mins.size == 0
    assert qt.codes.shape == shape[:-1] + (shape[-1] // 2,)
    assert qt.dequantize().shape == shape
    assert same(pyquant.quantize_copy(np.zeros(shape, np.float32)), qt)


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_row07_empty_last_axis_is_a_documented_error(shape):
    with pytest.raises(pyquant.ShapeError, match="last axis .* is 0"):
        pyquant.quantize_ptr(np.zeros(shape, np.float32))


def test_row07_null_and_zero_length_from_c():
    c_quantize(None, None, None, None, n=0, row_len=128, group_size=128)
    sizes = ffi.new("size_t[2]")
    err = error_struct()
    check(lib.pq_quantized_sizes(0, 128, 4, 128, sizes, sizes + 1, err), err)
    assert list(sizes) == [0, 0]


def test_row07_zero_d_array():
    with pytest.raises(pyquant.ShapeError, match="0-d"):
        pyquant.quantize_ptr(np.array(1.0, np.float32))


# Row 8 -----------------------------------------------------------------------
def test_row08_last_axis_not_a_multiple_of_group_size():
    with pytest.raises(pyquant.ShapeError, match=r"last axis \(200\) must be a multiple of group_size \(128\)"):
        pyquant.quantize_ptr(weights(2, 200))


@pytest.mark.parametrize("bits,group_size", [(4, 3), (2, 6), (2, 2), (4, 1)])
def test_row08_group_bits_not_a_multiple_of_8(bits, group_size):
    with pytest.raises(pyquant.InvalidGroupSizeError, match="group_size \\* bits must be a multiple of 8"):
        pyquant.quantize_ptr(weights(2, 48), bits=bits, group_size=group_size)


# Row 9 -----------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [0, -1, -128, 256, 2**63, 2**64, 2**100, 1.5, "128", True])
@pytest.mark.parametrize("path", [pyquant.quantize_ptr, pyquant.quantize_copy])
def test_row09_bad_group_sizes(group_size, path):
    with pytest.raises(pyquant.InvalidGroupSizeError):
        path(weights(2, 128), group_size=group_size)


# Row 10 ----------------------------------------------------------------------
@pytest.mark.parametrize("bits", [0, 1, 5, 6, 16, 32, -4, 2**32, 2**40, 4.0, None])
def test_row10_bad_bits(bits):
    with pytest.raises(pyquant.InvalidBitsError):
        pyquant.quantize_ptr(weights(2, 128), bits=bits)


# Row 11 ----------------------------------------------------------------------
def test_row11_overflowing_sizes_are_errors_without_allocation():
    sizes = ffi.new("size_t[2]")
    err = error_struct()
    with pytest.raises(pyquant.SizeOverflowError, match="overflows"):
        check(lib.pq_quantized_sizes(2**64 - 128, 128, 8, 128, sizes, sizes + 1, err), err)
    x = np.zeros(128, np.float32)
    with pytest.raises(pyquant.SizeOverflowError, match="overflows"):
        c_quantize(x, np.empty(64, np.uint8), np.empty(1, np.float32), np.empty(1, np.float32),
                   n=2**62, row_len=128, group_size=128)


# Row 12 ----------------------------------------------------------------------
@pytest.mark.parametrize("null", ["input", "codes", "scales", "mins"])
def test_row12_null_with_nonzero_length(null):
    err = error_struct()
    x = np.zeros(128, np.float32)
    bufs = {"codes": np.empty(64, np.uint8), "scales": np.empty(1, np.float32), "mins": np.empty(1, np.float32)}

    def p(name, t, a):
        return ffi.NULL if name == null else ffi.from_buffer(t, a)

    status = lib.pq_quantize(lib.PQ_DTYPE_F32, p("input", "char[]", x), 128, 128, 4, 128, 0,
                             p("codes", "uint8_t[]", bufs["codes"]), 64, p("scales", "float[]", bufs["scales"]), 1,
                             p("mins", "float[]", bufs["mins"]), 1, err)
    with pytest.raises(pyquant.NullPointerError, match=f"{null} is NULL"):
        check(status, err)


# Row 13 ----------------------------------------------------------------------
def test_row13_output_overlapping_input():
    buf = np.zeros(256, np.float32)
    x = buf[:128]
    as_bytes = buf.view(np.uint8)
    with pytest.raises(pyquant.OverlapError, match="codes overlaps input"):
        c_quantize(x, as_bytes[256:256 + 64], buf[200:201], buf[201:202])
    as_bytes[: 128 * 4] = 0  # still all zero: nothing written
    with pytest.raises(pyquant.OverlapError, match="overlaps"):
        c_quantize(x, as_bytes[512:576], buf[130:131], buf[130:131])
    assert not buf.any()


# Row 14 ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("path", [pyquant.quantize_ptr, pyquant.quantize_copy])
def test_row14_non_finite(bad, path):
    a = weights(3, 256)
    a[2, 130] = bad
    with pytest.raises(pyquant.NonFiniteError, match=r"flat index 642 \(row 2, column 130\) in group 5"):
        path(a, group_size=128)


# Row 15 ----------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -3.5, 1e-40, 65504.0])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_row15_constant_groups(value, bits):
    a = np.full((2, 64), value, np.float32)
    qt = pyquant.quantize_ptr(a, bits=bits, group_size=32)
    assert not qt.codes.any() and not qt.scales.any()
    assert np.array_equal(qt.dequantize(), a + np.float32(0))
    assert not np.isnan(qt.dequantize()).any()


# Row 16 ----------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_row16_subnormal_groups_and_tiny_ranges(bits):
    tiny = np.finfo(np.float32).smallest_subnormal
    a = (np.arange(64, dtype=np.float32) * tiny).reshape(2, 32)
    b = np.float32(1.0) + np.arange(64, dtype=np.float32).reshape(2, 32) * np.spacing(np.float32(1.0))
    for x in (a, b):
        qt = pyquant.quantize_ptr(x, bits=bits, group_size=32)
        # A range of fewer than qmax subnormal steps gives a scale that rounds to 0:
        # by the scheme every code is then 0, and the error is that range (a few ulps).
        assert np.all(np.isfinite(qt.scales)) and np.all(qt.scales >= 0)
        y = qt.dequantize()
        ulp = np.spacing(np.abs(x).max())
        bound = qt.scales.max() / 2 + (2**bits) * np.spacing(qt.scales.max()) + 4 * ulp
        assert np.all(np.abs(x.astype(np.float64) - y) <= bound)


# Row 17 ----------------------------------------------------------------------
def test_row17_range_overflow():
    a = weights(1, 128)
    a[0, 3], a[0, 100] = np.finfo(np.float32).max, -np.finfo(np.float32).max
    with pytest.raises(pyquant.NonFiniteError, match="range overflows float32"):
        pyquant.quantize_ptr(a)
    a[0, 100] = 0  # max with an ordinary min: finite range, fine
    assert np.all(np.isfinite(pyquant.quantize_ptr(a).scales))


# Row 18 ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype,bits_pattern", [
    (np.float16, 0x7E00), (np.float16, 0x7C00), (np.float16, 0xFC00), (np.float16, 0x7C01),
    (ml_dtypes.bfloat16, 0x7FC0), (ml_dtypes.bfloat16, 0x7F80), (ml_dtypes.bfloat16, 0xFF80),
    (ml_dtypes.bfloat16, 0xFF81),
])
def test_row18_half_nan_and_inf_patterns(dtype, bits_pattern):
    raw = weights(2, 64).astype(dtype).view(np.uint16)
    raw[1, 5] = bits_pattern
    with pytest.raises(pyquant.NonFiniteError, match="row 1, column 5"):
        pyquant.quantize_ptr(raw.view(dtype), group_size=64)
    if dtype is ml_dtypes.bfloat16:
        with pytest.raises(pyquant.NonFiniteError):
            pyquant.quantize_ptr(raw, dtype="bfloat16", group_size=64)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_row18_half_subnormals(dtype):
    raw = np.arange(1, 129, dtype=np.uint16).reshape(2, 64)  # all subnormal bit patterns
    x = raw.view(dtype)
    qt = pyquant.quantize_ptr(x, group_size=64)
    assert np.all(np.isfinite(qt.scales)) and np.all(qt.scales > 0)
    assert same(qt, pyquant.quantize_ptr(x.astype(np.float32), group_size=64))


# Row 19 ----------------------------------------------------------------------
def test_row19_ties_round_half_to_even_and_negative_zero():
    # lo 0, hi 30, bits 4: scale 2, so 1, 3, 5, 7 divide to 0.5, 1.5, 2.5, 3.5.
    x = np.array([[0, 1, 3, 5, 7, 30, 0, 0]], np.float32)
    qt = pyquant.quantize_ptr(x, bits=4, group_size=8)
    q = np.stack([qt.codes & 0xF, qt.codes >> 4], axis=-1).reshape(-1)
    assert q.tolist() == [0, 0, 2, 2, 4, 15, 0, 0]
    neg = pyquant.quantize_ptr(np.array([[-0.0, 1.0]], np.float32), group_size=2)
    pos = pyquant.quantize_ptr(np.array([[0.0, 1.0]], np.float32), group_size=2)
    assert same(neg, pos) and neg.mins.view(np.uint32)[0, 0] == 0


# Row 20 ----------------------------------------------------------------------
def test_row20_panic_becomes_an_error_and_the_process_survives():
    err = error_struct()
    with pytest.raises(pyquant.InternalError, match=r"caught panic\): pq_debug_panic was called"):
        check(lib.pq_debug_panic(err), err)
    assert pyquant.quantize_ptr(weights(1, 128)).codes.size == 64


def test_row20_panic_in_a_fresh_process_exits_cleanly():
    code = (
        "import pyquant; from pyquant._lib import lib, ffi\n"
        "e = ffi.new('PqError *'); s = lib.pq_debug_panic(e)\n"
        "print(s == lib.PQ_STATUS_PANIC, ffi.string(e.message).decode())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("True internal error"), out

"""GGML block formats: pyquant.gguf against ggml's own C code (the oracle
built from llama.cpp's ggml-quants.c, tests/ggml_oracle/build.py) and
against gguf-py, byte for byte; plus bad inputs."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import event, given, strategies as st
from hypothesis.extra import numpy as hnp

import pyquant
from pyquant import gguf as pg
from pyquant._lib import ffi, lib

TYPES = pg.SUPPORTED_TYPES
IDS = pg._IDS  # name -> GGML type id
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]
# Types gguf-py can quantize (the rest it can only dequantize).
GGUF_PY_QUANTIZE = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
TINY = np.float32(np.finfo(np.float32).smallest_subnormal)


@pytest.fixture(scope="session")
def oracle():
    spec = importlib.util.spec_from_file_location("ggml_oracle_build", Path(__file__).parent / "ggml_oracle" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.load()


def ggml_quantize(oracle, qtype, x, imatrix=None):
    """ggml_quantize_chunk on float32 rows (the input converted exactly first)."""
    x = np.ascontiguousarray(np.asarray(x).astype(np.float32))
    rows, n = x.reshape(-1, x.shape[-1]).shape
    out = np.zeros(oracle.pqo_row_size(IDS[qtype], n) * rows, np.uint8)
    fp = ctypes.POINTER(ctypes.c_float)
    w = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    oracle.pqo_quantize(IDS[qtype], x.ctypes.data_as(fp), out.ctypes.data, rows, n,
                        None if w is None else w.ctypes.data_as(fp))
    return out


def ggml_dequantize(oracle, qtype, raw, n):
    out = np.zeros(n, np.float32)
    raw = np.ascontiguousarray(raw, np.uint8)
    assert oracle.pqo_dequantize(IDS[qtype], raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n)
    return out


def row_len(qtype, blocks):
    return pg.block_size(qtype)[0] * blocks


def adversarial(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One row of n values of a named hard case."""
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "zeros":
        return np.zeros(n, np.float32)
    if kind == "constant_blocks":
        return np.repeat(rng.standard_normal(n // 16), 16).astype(np.float32)
    if kind == "one_outlier":
        x[rng.integers(n)] = 1e4
        return x
    if kind == "subnormal":
        return (rng.integers(-1000, 1000, n) * TINY).astype(np.float32)
    if kind == "mixed_subnormal":
        x[::2] = rng.integers(-9, 9, n // 2) * TINY
        return x
    if kind == "ties":  # integers and halves: exact .5 ties in the rounding
        return (rng.integers(-16, 17, n) / 2).astype(np.float32)
    if kind == "huge":
        return (x * 1e30).astype(np.float32)
    if kind == "max_finite":
        return (np.sign(x) * np.finfo(np.float32).max).astype(np.float32)
    if kind == "tiny":
        return (x * 1e-35).astype(np.float32)
    if kind == "negative_only":
        return -np.abs(x)
    if kind == "positive_only":
        return np.abs(x) + 1.0
    if kind == "magnitudes":  # every block a different scale
        return (x * 10.0 ** rng.integers(-30, 30, n // 32).repeat(32)).astype(np.float32)
    if kind == "two_values":
        return np.where(x > 0, 1.0, -0.25).astype(np.float32)
    return x


KINDS = ["normal", "zeros", "constant_blocks", "one_outlier", "subnormal", "mixed_subnormal", "ties",
         "huge", "max_finite", "tiny", "negative_only", "positive_only", "magnitudes", "two_values"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", TYPES)
def test_adversarial_rows_match_ggml(oracle, qtype, kind):
    rng = np.random.default_rng(abs(hash((qtype, kind))) % 2**32)
    n = max(row_len(qtype, 1), 256)
    x = np.stack([adversarial(kind, n, rng) for _ in range(3)])
    imatrix = rng.uniform(0, 4, n).astype(np.float32)
    imatrix[::7] = 0.0  # zero weights are allowed
    # Extreme but valid matrices: all zero, overflowing products, subnormal.
    extremes = [np.zeros(n), np.full(n, 1e30), np.full(n, np.finfo(np.float32).max), np.full(n, TINY)]
    for w in (None, imatrix, *(e.astype(np.float32) for e in extremes)):
        want = ggml_quantize(oracle, qtype, x, w)
        got = pg.quantize(x, qtype, imatrix=w)
        np.testing.assert_array_equal(got.view(np.uint8).reshape(-1), want, err_msg=f"{qtype} {kind} imatrix={w is not None}")


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
values = st.one_of(
    finite32,
    st.floats(-1.0, 1.0, width=32, allow_subnormal=True),
    st.integers(-40, 40).map(lambda v: v / 2),
    st.sampled_from([float(np.float32(v)) for v in (0.0, -0.0, TINY, -TINY, 1e-38, 65504.0, 3e38)]),
)


@st.composite
def cases(draw, qtype=None):
    """(qtype, rows, imatrix or None, threads); a random type unless given."""
    qtype = qtype or draw(st.sampled_from(TYPES))
    n = row_len(qtype, draw(st.integers(1, 2 if pg.block_size(qtype)[0] >= 256 else 9)))
    rows = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    if draw(st.booleans()):  # arbitrary floats, including huge and subnormal
        x = draw(hnp.arrays(np.float32, (rows, n), elements=values))
    else:  # realistic rows at an arbitrary scale
        seed, exp = draw(st.integers(0, 2**32 - 1)), draw(st.integers(-40, 36))
        x = (np.random.default_rng(seed).standard_normal((rows, n)) * 10.0**exp).astype(np.float32)
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    if not np.isfinite(x.astype(np.float32)).all():  # float16/bfloat16 overflow
        x = np.nan_to_num(x.astype(np.float32), posinf=1.0, neginf=-1.0).astype(dtype)
    imatrix = None
    if draw(st.booleans()):
        imatrix = draw(hnp.arrays(np.float32, n, elements=st.one_of(
            st.floats(0, 1e6, width=32), st.sampled_from([0.0, float(TINY), 1.0]))))
    threads = draw(st.sampled_from([1, 2, 3, None]))
    return qtype, x, imatrix, threads


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_quantize_matches_ggml(oracle, qtype, data):
    _, x, imatrix, threads = data.draw(cases(qtype))
    event(f"{'with' if imatrix is not None else 'without'} imatrix")
    want = ggml_quantize(oracle, qtype, x, imatrix)
    got = pg.quantize(x, qtype, imatrix=imatrix, threads=threads)
    np.testing.assert_array_equal(got.view(np.uint8).reshape(-1), want)


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_dequantize_matches_ggml(oracle, qtype, data, seed):
    _, x, _, threads = data.draw(cases(qtype))
    n = x.shape[-1]
    raw = ggml_quantize(oracle, qtype, x)
    if seed % 2:  # arbitrary bytes: any scale, any code (NaN scales too)
        raw = np.random.default_rng(seed).integers(0, 256, raw.size, dtype=np.uint8)
    want = ggml_dequantize(oracle, qtype, raw, x.size)
    got = pg.dequantize(raw.reshape(x.shape[0], -1), qtype, threads=threads)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_same_bytes_for_every_thread_count(oracle, qtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((96, 4096)).astype(np.float32)  # enough work for several threads
    w = rng.uniform(0, 2, 4096).astype(np.float32)
    want = ggml_quantize(oracle, qtype, x, w)
    for threads in (1, 2, 3, 5, None):
        np.testing.assert_array_equal(pg.quantize(x, qtype, imatrix=w, threads=threads).view(np.uint8).reshape(-1), want)


@pytest.mark.parametrize("qtype", GGUF_PY_QUANTIZE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_matches_gguf_py(qtype, dtype):
    gguf = pytest.importorskip("gguf")
    t = gguf.GGMLQuantizationType[qtype]
    x = (np.random.default_rng(3).standard_normal((2, 3, 256)) * 3).astype(dtype)
    x.reshape(-1)[:32] = 0  # one all-zero block
    want = gguf.quants.quantize(x, t)
    got = pg.quantize(x, t)
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_gguf_py(qtype):
    gguf = pytest.importorskip("gguf")
    t = gguf.GGMLQuantizationType[qtype]
    x = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    q = pg.quantize(x, qtype)
    want = gguf.quants.dequantize(q, t)
    got = pg.dequantize(q, t)
    assert (got.dtype, got.shape) == (want.dtype, want.shape) == (np.float32, x.shape)
    np.testing.assert_array_equal(got, want)


def test_qtype_forms_and_sizes():
    x = np.ones((2, 64), np.float32)
    by_name = pg.quantize(x, "q4_0")
    assert np.array_equal(by_name, pg.quantize(x, 2))
    assert np.array_equal(by_name, pg.quantize(x, np.uint32(2)))
    assert pg.block_size("Q6_K") == (256, 210)
    assert pg.block_size("IQ4_XS") == (256, 136)
    assert by_name.shape == (2, 36)
    assert hasattr(pyquant, "gguf")


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0"])
def test_strided_and_other_dtypes_are_converted(qtype):
    x = np.random.default_rng(5).standard_normal((512, 4))
    want = pg.quantize(np.ascontiguousarray(x.T).astype(np.float32), qtype)
    assert np.array_equal(pg.quantize(x.T, qtype), want)  # float64, strided


# --- bad inputs ---------------------------------------------------------


@pytest.mark.parametrize("qtype", [1234, "Q4_2", "IQ2_XXS", 16, 4.0, None, True])
def test_unknown_types_are_refused(qtype):
    with pytest.raises(pyquant.errors.UnsupportedGgmlTypeError, match="not supported"):
        pg.quantize(np.ones((1, 256), np.float32), qtype)


@pytest.mark.parametrize("qtype,n", [("Q4_0", 48), ("Q4_K", 128), ("Q6_K", 300), ("IQ4_XS", 32)])
def test_rows_must_hold_whole_blocks(qtype, n):
    with pytest.raises(pyquant.ShapeError, match="block size"):
        pg.quantize(np.ones((2, n), np.float32), qtype)
    with pytest.raises(pyquant.ShapeError):
        pg.dequantize(np.zeros((2, pg.block_size(qtype)[1] + 1), np.uint8), qtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_values_are_refused(bad, dtype):
    x = np.ones((2, 256), dtype)
    x[1, 200] = bad
    with pytest.raises(pyquant.NonFiniteError, match="input value 456"):
        pg.quantize(x, "Q5_K")


@pytest.mark.parametrize("weights,match", [
    (np.ones(255, np.float32), "255 entries"),
    (np.ones(512, np.float32), "512 entries"),
    (np.full(256, -1.0, np.float32), "entry 0 is -1"),
    (np.r_[np.ones(255), np.nan].astype(np.float32), "entry 255 is NaN"),
    (np.r_[np.ones(10), np.inf, np.ones(245)].astype(np.float32), "entry 10 is inf"),
])
def test_bad_imatrix_is_refused(weights, match):
    with pytest.raises(pyquant.errors.InvalidImatrixError, match=match):
        pg.quantize(np.ones((2, 256), np.float32), "Q4_K", imatrix=weights)


def test_nothing_is_written_on_error():
    x = np.ones(512, np.float32)
    x[-1] = np.nan
    out = np.full(288, 0xAB, np.uint8)
    err = ffi.new("PqError *")
    status = lib.pq_ggml_quantize(12, lib.PQ_DTYPE_F32, ffi.from_buffer(x), x.size, 256, ffi.NULL, 0, 0,
                                  ffi.from_buffer("uint8_t[]", out), out.size, err)
    assert status == lib.PQ_STATUS_NON_FINITE
    assert (out == 0xAB).all()


def test_c_abi_checks_sizes_and_overlap():
    x = np.ones(256, np.float32)
    err = ffi.new("PqError *")
    small = np.zeros(100, np.uint8)
    status = lib.pq_ggml_quantize(12, lib.PQ_DTYPE_F32, ffi.from_buffer(x), 256, 256, ffi.NULL, 0, 1,
                                  ffi.from_buffer("uint8_t[]", small), small.size, err)
    assert status == lib.PQ_STATUS_BUFFER_TOO_SMALL and b"need 144" in ffi.string(err.message)
    buf = np.zeros(2048, np.uint8)
    status = lib.pq_ggml_quantize(12, lib.PQ_DTYPE_F32, ffi.from_buffer(buf), 256, 256, ffi.NULL, 0, 1,
                                  ffi.from_buffer("uint8_t[]", buf) + 512, 144, err)
    assert status == lib.PQ_STATUS_OVERLAP
    status = lib.pq_ggml_quantize(12, lib.PQ_DTYPE_F32, ffi.from_buffer(x), 256, 256, ffi.NULL, 5, 1,
                                  ffi.from_buffer("uint8_t[]", buf), 144, err)
    assert status == lib.PQ_STATUS_NULL_POINTER and b"imatrix" in ffi.string(err.message)
    status = lib.pq_ggml_dequantize(12, ffi.from_buffer("uint8_t[]", buf), 143, 256, lib.PQ_DTYPE_F32, 1,
                                    ffi.from_buffer(x), 256, err)
    assert status == lib.PQ_STATUS_BUFFER_TOO_SMALL
    size = ffi.new("size_t *")
    assert lib.pq_ggml_quantized_size(12, 512, 256, size, err) == lib.PQ_STATUS_OK and size[0] == 288
    assert lib.pq_ggml_quantized_size(12, 512, 256, ffi.NULL, err) == lib.PQ_STATUS_NULL_POINTER
    assert lib.pq_ggml_quantized_size(99, 512, 256, size, err) == lib.PQ_STATUS_UNSUPPORTED_GGML_TYPE
    assert lib.pq_ggml_type_name(99) == ffi.NULL
    assert ffi.string(lib.pq_ggml_type_name(23)) == b"IQ4_XS"


# --- batch ----------------------------------------------------------------


@given(st.lists(cases(), min_size=1, max_size=4))
def test_batch_matches_ggml_per_tensor(oracle, batch):
    outs = pg.quantize_batch([(x, qtype, imatrix) for qtype, x, imatrix, _ in batch], threads=batch[0][3])
    for (qtype, x, imatrix, _), got in zip(batch, outs):
        np.testing.assert_array_equal(got.view(np.uint8).reshape(-1), ggml_quantize(oracle, qtype, x, imatrix))


def batch_items(arrays):
    """PqGgmlQuantizeItem[] for (qtype id, float32 input, output) triples."""
    items = ffi.new("PqGgmlQuantizeItem[]", len(arrays))
    for item, (type_id, x, out) in zip(items, arrays):
        item.ggml_type, item.dtype, item.input, item.input_len = type_id, lib.PQ_DTYPE_F32, ffi.from_buffer(x), x.size
        item.row_len, item.imatrix, item.imatrix_len = x.shape[-1], ffi.NULL, 0
        item.output, item.output_len = ffi.from_buffer("uint8_t[]", out), out.size
    return items


def test_batch_is_all_or_nothing():
    good = np.ones((4, 256), np.float32)
    bad = good.copy()
    bad[3, 7] = np.inf
    outs = [np.full(4 * 144, 0xAB, np.uint8), np.full(4 * 210, 0xAB, np.uint8)]
    items = batch_items([(12, good, outs[0]), (14, bad, outs[1])])
    failed, err = ffi.new("size_t *"), ffi.new("PqError *")
    assert lib.pq_ggml_quantize_batch(items, 2, 0, failed, err) == lib.PQ_STATUS_NON_FINITE
    assert failed[0] == 1 and ffi.string(err.message).startswith(b"input value 775")
    assert all((o == 0xAB).all() for o in outs)
    outs[1][:] = 0
    shared = np.zeros(4 * 144, np.uint8)  # two outputs on the same bytes
    items = batch_items([(12, good, shared), (12, good, shared)])
    assert lib.pq_ggml_quantize_batch(items, 2, 0, failed, err) == lib.PQ_STATUS_OVERLAP
    assert failed[0] == 1
    assert lib.pq_ggml_quantize_batch(ffi.NULL, 0, 0, failed, err) == lib.PQ_STATUS_OK
    assert failed[0] == 2**64 - 1


@given(st.lists(cases(), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_dequantize_batch_matches_ggml(oracle, batch, seed):
    rng = np.random.default_rng(seed)
    raws = []
    for qtype, x, _, _ in batch:
        raw = ggml_quantize(oracle, qtype, x)
        if rng.integers(2):  # arbitrary bytes too
            raw = rng.integers(0, 256, raw.size, dtype=np.uint8)
        raws.append(raw.reshape(x.shape[0], -1))
    outs = pg.dequantize_batch([(raw, qtype) for raw, (qtype, *_) in zip(raws, batch)], threads=batch[0][3])
    for raw, (qtype, x, _, _), got in zip(raws, batch, outs):
        want = ggml_dequantize(oracle, qtype, raw, x.size)
        np.testing.assert_array_equal(got.reshape(-1).view(np.uint32), want.view(np.uint32))


def test_dequantize_batch_is_all_or_nothing():
    q = pg.quantize(np.ones((2, 256), np.float32), "Q4_K")
    outs = [np.full(512, 7.0, np.float32), np.full(512, 7.0, np.float32)]
    items = ffi.new("PqGgmlDequantizeItem[]", 2)
    for item, out, length in zip(items, outs, (q.size, q.size - 1)):
        item.ggml_type, item.input, item.input_len, item.row_len = 12, ffi.from_buffer("uint8_t[]", q), length, 256
        item.dtype, item.output, item.output_len = lib.PQ_DTYPE_F32, ffi.from_buffer(out), out.size
    failed, err = ffi.new("size_t *"), ffi.new("PqError *")
    assert lib.pq_ggml_dequantize_batch(items, 2, 0, failed, err) == lib.PQ_STATUS_BUFFER_TOO_SMALL
    assert failed[0] == 1 and ffi.string(err.message).startswith(b"input has 287 bytes")
    assert all((o == 7.0).all() for o in outs)
    f16 = np.zeros(512, np.float16)
    items[1].input_len, items[1].dtype, items[1].output = q.size, lib.PQ_DTYPE_F16, ffi.from_buffer(f16)
    assert lib.pq_ggml_dequantize_batch(items, 2, 0, failed, err) == lib.PQ_STATUS_OK
    np.testing.assert_array_equal(f16, outs[0].astype(np.float16))

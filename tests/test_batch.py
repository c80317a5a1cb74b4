"""The batch path and threads: same bytes as quantize_ptr for every thread
count, all-or-nothing errors naming the tensor, and concurrency (many Python
threads at once; the GIL released during long calls)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import tensors

import pyquant
from pyquant._lib import ffi, lib
from pyquant.core import _output_args, _raw_view
from pyquant._call import error_struct

RNG = np.random.default_rng(99)


def same(a, b):
    return (a.codes.tobytes() == b.codes.tobytes() and a.scales.tobytes() == b.scales.tobytes()
            and a.mins.tobytes() == b.mins.tobytes() and a.shape == b.shape and a.bits == b.bits)


@settings(max_examples=60)
@given(st.lists(tensors(), min_size=1, max_size=6), st.sampled_from([None, 1, 2, 3]))
def test_batch_matches_quantize_ptr_per_tensor(cases, threads):
    layers = {f"t{i}": c[0] for i, c in enumerate(cases)}
    params = {f"t{i}": (c[2], c[3]) for i, c in enumerate(cases)}
    got = pyquant.quantize_batch(layers, params=params, threads=threads)
    assert list(got) == list(layers)
    for name, qt in got.items():
        bits, g = params[name]
        assert same(qt, pyquant.quantize_ptr(layers[name], bits=bits, group_size=g, threads=1))
    back = pyquant.dequantize_batch(got, threads=threads)
    for name, y in back.items():
        assert y.tobytes() == got[name].dequantize(threads=1).tobytes() and y.dtype == layers[name].dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_large_tensor_is_identical_for_every_thread_count(dtype, bits):
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    x = RNG.normal(size=(1024, 1536)).astype(dt)  # large enough to be split across threads
    ref = pyquant.quantize_ptr(x, bits=bits, threads=1)
    for threads in (2, 3, 8, None):
        assert same(pyquant.quantize_ptr(x, bits=bits, threads=threads), ref)
        assert same(pyquant.quantize_copy(x, bits=bits, threads=threads), ref)
        assert pyquant.dequantize(ref, threads=threads).tobytes() == pyquant.dequantize(ref, threads=1).tobytes()


def test_sequence_in_list_out_and_per_tensor_params_callable():
    layers = [RNG.normal(size=(4, 128)).astype(np.float32) for _ in range(3)]
    got = pyquant.quantize_batch(layers, params=lambda i: (8, 64) if i == 1 else None)
    assert isinstance(got, list) and [q.bits for q in got] == [4, 8, 4] and got[1].group_size == 64
    assert isinstance(pyquant.dequantize_batch(got, dtype="float16"), list)
    assert pyquant.quantize_batch([]) == [] and pyquant.quantize_batch({}) == {}


@pytest.mark.parametrize("bad,error,match", [
    (lambda a: a.T, pyquant.CopyRequiredError, "tensor 'b': the array is not C-contiguous"),
    (lambda a: a.astype(np.float64), pyquant.UnsupportedDtypeError, "tensor 'b': dtype float64"),
    (lambda a: misaligned(a), pyquant.CopyRequiredError, "tensor 'b': the array's data .* is not aligned"),
    (lambda a: np.concatenate([a, a[:, :64]], axis=1), pyquant.ShapeError, "tensor 'b': the last axis"),
    (lambda a: np.where(np.arange(128) == 7, np.inf, a).astype(np.float32), pyquant.NonFiniteError,
     r"tensor 'b': (item 1: )?inf at flat index 7"),  # "item 1: ": builds before ABI 3
])
def test_one_bad_tensor_fails_the_whole_call_naming_it(bad, error, match):
    a = RNG.normal(size=(128, 128)).astype(np.float32)
    with pytest.raises(error, match=match):
        pyquant.quantize_batch({"a": a, "b": bad(a), "c": a})


def misaligned(a):
    """A copy of ``a`` whose data starts one byte past an aligned address."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    view = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    view[...] = a
    return view


def test_c_contiguous_arrays_with_unusual_strides_are_read_in_place():
    """A dimension of 1 may have any stride and still be C-contiguous: read
    in place, as any other, by quantize_ptr and quantize_batch."""
    a = RNG.normal(size=(1, 256)).astype(np.float32)
    odd = np.lib.stride_tricks.as_strided(a, shape=(1, 256), strides=(4, 4))
    assert odd.strides != a.strides and odd.flags.c_contiguous
    want = pyquant.quantize_ptr(a)
    for got in (pyquant.quantize_ptr(odd), pyquant.quantize_batch([odd, a])[0]):
        assert got.codes.tobytes() == want.codes.tobytes() and got.scales.tobytes() == want.scales.tobytes()
    with pytest.raises(pyquant.CopyRequiredError, match="not aligned"):
        pyquant.quantize_ptr(misaligned(a))


def test_bad_params_and_threads():
    a = RNG.normal(size=(2, 128)).astype(np.float32)
    with pytest.raises(pyquant.InvalidBitsError, match="tensor 'a'"):
        pyquant.quantize_batch({"a": a}, params={"a": (5, 128)})
    with pytest.raises(pyquant.QuantizeError, match="params must give"):
        pyquant.quantize_batch({"a": a}, params={"a": 4})
    with pytest.raises(pyquant.QuantizeError, match="expected a mapping"):
        pyquant.quantize_batch(a)
    for threads in (0, -1, 1.5, True):
        with pytest.raises(pyquant.QuantizeError, match="threads must be"):
            pyquant.quantize_ptr(a, threads=threads)


def test_batch_c_call_names_the_first_bad_item_when_a_later_item_fails():
    """Through the C ABI with pre-filled outputs: a NaN in item 2 is the
    error (failed_item says 2); the items before it are complete (outputs
    from the bad item on may be partly written, ABI 4)."""
    xs = [RNG.normal(size=(256, 256)).astype(np.float32) for _ in range(3)]
    xs[2][100, 3] = np.nan
    outs = [pyquant.quantize_ptr(np.zeros((256, 256), np.float32)) for _ in xs]
    for o in outs:
        o.codes[...] = 0xAB
    items = ffi.new("PqQuantizeItem[]", 3)
    keep = []
    for i, (x, o) in enumerate(zip(xs, outs)):
        inp = ffi.from_buffer(_raw_view(x))
        c, cl, s, sl, m, ml = _output_args(o)
        keep += (inp, c, s, m)
        it = items[i]
        it.dtype, it.input, it.input_len, it.row_len, it.bits, it.group_size = lib.PQ_DTYPE_F32, inp, x.size, 256, 4, 128
        it.codes, it.codes_len, it.scales, it.scales_len, it.mins, it.mins_len = c, cl, s, sl, m, ml
    failed, err = ffi.new("size_t *"), error_struct()
    assert lib.pq_quantize_batch(items, 3, 2, failed, err) == lib.PQ_STATUS_NON_FINITE
    # failed_item gives the index; the message does not repeat it.
    assert failed[0] == 2 and ffi.string(err.message).startswith(b"NaN")
    for x, o in zip(xs[:2], outs):
        want = pyquant.quantize_ptr(x)
        assert o.codes.tobytes() == want.codes.tobytes() and o.scales.tobytes() == want.scales.tobytes()


def test_row24_many_python_threads_get_the_serial_bytes():
    layers = {f"w{i}": RNG.normal(size=(256, 512)).astype(np.float32) for i in range(8)}
    serial = {k: pyquant.quantize_ptr(v, threads=1) for k, v in layers.items()}
    errors = []

    def worker(seed):
        try:
            for j in range(6):
                if (seed + j) % 2:
                    got = pyquant.quantize_batch(layers, threads=2)
                else:
                    got = {k: pyquant.quantize_ptr(v) for k, v in layers.items()}
                assert all(same(got[k], serial[k]) for k in layers)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_row24_the_gil_is_released_during_a_long_call():
    big = [RNG.normal(size=(4096, 4096)).astype(np.float32) for _ in range(4)]  # 256 MiB
    window = {}

    def work():
        window["start"] = time.perf_counter()
        pyquant.quantize_batch(big, threads=1)
        window["end"] = time.perf_counter()

    t = threading.Thread(target=work)
    ticks = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    start, end = window["start"], window["end"]
    middle = [x for x in ticks if start + 0.2 * (end - start) < x < end - 0.2 * (end - start)]
    # With the GIL held for the call, this loop could not run inside it at all.
    assert len(middle) > 100, (len(middle), end - start)


def test_family_records_keep_floats_aligned():
    """Tensors whose codes are not a multiple of 4 bytes share one block:
    every record's scales and mins stay aligned (records are padded)."""
    xs = [np.arange(4, dtype=np.float32) + i for i in range(3)]
    got = pyquant.quantize_batch(xs, bits=2, group_size=4)
    for x, q in zip(xs, got):
        want = pyquant.quantize_ptr(x, bits=2, group_size=4)
        assert q.codes.tobytes() == want.codes.tobytes() and q.scales.tobytes() == want.scales.tobytes()
        assert q.scales.ctypes.data % 4 == 0 and q.mins.ctypes.data % 4 == 0


def test_freed_output_storage_is_reused_only_when_nothing_views_it():
    # A large batch result's block is recycled for the next call once the
    # result and every view of it are gone, and never while a view remains.
    rng = np.random.default_rng(7)
    layers = [rng.normal(size=(256, 1024)).astype(np.float32) for _ in range(8)]  # 1.1 MB of outputs
    others = [a * 2 for a in layers]
    first = pyquant.quantize_batch(layers)
    first_at = first[0].scales.ctypes.data
    kept = first[3].codes  # a view outlives its result
    expected = kept.copy()
    del first
    second = pyquant.quantize_batch(others)
    second_at = second[0].scales.ctypes.data
    assert second_at != first_at  # still viewed: not reused
    np.testing.assert_array_equal(kept, expected)
    del kept  # first's storage is now the spare ...
    del second  # ... replaced by second's: one spare at most
    assert len(pyquant.core._spare) == 1
    third = pyquant.quantize_batch(layers)
    assert third[0].scales.ctypes.data == second_at
    assert not pyquant.core._spare
    for got, arr in zip(third, layers):
        want = pyquant.quantize_ptr(arr)
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(got.scales, want.scales)
        np.testing.assert_array_equal(got.mins, want.mins)

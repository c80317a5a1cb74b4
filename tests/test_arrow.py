"""The Arrow path: same bytes as quantize_ptr, rows 21-23 of docs/bad-inputs.md, streams,
IPC files, and no leaks (the live-export counter and pyarrow's pool return to
their baselines after every test)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import tensors

import pyquant
from pyquant import _peak_rss
from pyquant._lib import ffi, lib

ARROW_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


@pytest.fixture(autouse=True)
def no_leaks():
    gc.collect()
    pool = pa.total_allocated_bytes()
    assert lib.pq_arrow_live_exports() == 0, "a previous test leaked an export"
    yield
    gc.collect()
    assert lib.pq_arrow_live_exports() == 0, "an exported result was never released"
    assert pa.total_allocated_bytes() == pool, "pyarrow memory was not given back"


def weights_batch(tensors: dict[str, np.ndarray], list_type=pa.list_, with_shape=True) -> pa.RecordBatch:
    dtype = next(iter(tensors.values())).dtype.name if tensors else "float32"
    value_type = ARROW_TYPES[dtype]
    flat = [pa.array(t.reshape(-1), value_type) for t in tensors.values()]
    if list_type is pa.list_:
        weights = pa.array([f.to_numpy(zero_copy_only=False) for f in flat], pa.list_(value_type))
    elif list_type is pa.large_list:
        weights = pa.array([f.to_numpy(zero_copy_only=False) for f in flat], pa.large_list(value_type))
    else:  # fixed_size_list: every tensor has the same size
        size = flat[0].__len__()
        values = pa.concat_arrays(flat) if flat else pa.array([], value_type)
        weights = pa.FixedSizeListArray.from_arrays(values, size)
    columns = {"name": pa.array(list(tensors), pa.string()), "weights": weights}
    if with_shape:
        columns["shape"] = pa.array([list(t.shape) for t in tensors.values()], pa.list_(pa.int64()))
    return pa.record_batch(columns)


def assert_row_is(result: pa.RecordBatch, row: int, qt: pyquant.QuantizedTensor, name: str) -> None:
    r = {c: result.column(c)[row].as_py() for c in ("name", "shape", "dtype", "bits", "group_size")}
    assert r == {"name": name, "shape": list(qt.shape), "dtype": qt.dtype, "bits": qt.bits, "group_size": qt.group_size}
    assert result.column("codes")[row].as_py() == qt.codes.tobytes()
    for col, want in (("scales", qt.scales), ("mins", qt.mins)):
        got = result.column(col)[row].values.to_numpy()
        np.testing.assert_array_equal(got.view(np.uint32), want.reshape(-1).view(np.uint32))


arrow_tensors = tensors().filter(lambda case: case[1] != "bfloat16")


@settings(max_examples=60)
@given(arrow_tensors, st.sampled_from([pa.list_, pa.large_list, "fixed"]), st.booleans())
def test_batch_matches_quantize_ptr(case, list_type, with_shape):
    x, _, bits, group_size = case
    if not with_shape:
        x = x.reshape(-1)
        if group_size is not None and x.size % group_size:
            group_size = None
        if x.size == 0:
            return  # a 1-D tensor of length 0 has a last axis of 0: an error on both paths
    if list_type == "fixed" and x.size == 0:
        list_type = pa.list_  # pyarrow has no fixed_size_list of size 0
    other = np.ascontiguousarray(x[::-1]) if x.ndim else x
    batch = weights_batch({"t0": x, "t1": other}, list_type=list_type, with_shape=with_shape)
    result = pyquant.quantize_arrow(batch, bits=bits, group_size=group_size)
    assert result.schema == pyquant.quantized_schema()
    for row, (name, t) in enumerate((("t0", x), ("t1", other))):
        assert_row_is(result, row, pyquant.quantize_ptr(t, bits=bits, group_size=group_size), name)


@settings(max_examples=40)
@given(arrow_tensors, st.integers(0, 5), st.integers(0, 5))
def test_lone_array_and_slices_match_quantize_ptr(case, before, after):
    """Row 22 as a property: a sliced array (offset > 0) reads exactly its slice."""
    x, dtype, bits, group_size = case
    flat = x.reshape(-1)
    if flat.size == 0:
        return
    g = group_size or flat.size
    pad = np.arange(before * g + after * g, dtype=x.dtype)
    whole = pa.array(np.concatenate([pad[: before * g], flat, pad[before * g :]]), ARROW_TYPES[dtype])
    sliced = whole.slice(before * g, flat.size)
    result = pyquant.quantize_arrow(sliced, bits=bits, group_size=group_size)
    assert_row_is(result, 0, pyquant.quantize_ptr(flat, bits=bits, group_size=group_size), "")


def test_dequantize_arrow_round_trip_matches_dequantize():
    rng = np.random.default_rng(1)
    for dtype in ("float32", "float16"):
        ts = {"a": rng.normal(size=(3, 64)).astype(dtype), "b": rng.normal(size=(128,)).astype(dtype)}
        back = pyquant.dequantize_arrow(pyquant.quantize_arrow(weights_batch(ts), bits=4, group_size=32))
        assert back.schema.field("weights").type == pa.list_(ARROW_TYPES[dtype])
        for row, (name, t) in enumerate(ts.items()):
            want = pyquant.quantize_ptr(t, bits=4, group_size=32).dequantize()
            got = back.column("weights")[row].values.to_numpy().reshape(back.column("shape")[row].as_py())
            assert back.column("name")[row].as_py() == name
            np.testing.assert_array_equal(got, want)
        # A dequantized batch is a valid input again.
        again = pyquant.quantize_arrow(back, bits=4, group_size=32)
        assert again.column("codes").equals(pyquant.quantize_arrow(weights_batch(ts), bits=4, group_size=32).column("codes"))


def test_zero_copy_no_pyarrow_allocation():
    """Neither the input values nor the result go through pyarrow's pool: Rust
    reads the input in place and the result's buffers are Rust's."""
    batch = weights_batch({"w": np.ones((64, 128), np.float32)})
    gc.collect()
    before = pa.total_allocated_bytes()
    result = pyquant.quantize_arrow(batch, bits=8, group_size=128)
    assert pa.total_allocated_bytes() == before
    assert lib.pq_arrow_live_exports() == 1
    del result


# --- Errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns, error, needle",
    [
        ({"name": ["a"], "weights": pa.array([[1.0, float("nan")]], pa.list_(pa.float32()))}, pyquant.NonFiniteError, 'tensor "a"'),
        ({"name": ["a"], "weights": pa.array([[1.0, 2.0]], pa.list_(pa.float32())), "shape": [[3]]}, pyquant.ShapeError, "does not match"),
        ({"name": ["a"], "weights": pa.array([[1.0, 2.0]], pa.list_(pa.float64()))}, pyquant.UnsupportedDtypeError, "weights"),
        ({"name": ["a"]}, pyquant.ArrowDataError, "weights"),
        ({"name": ["a"], "weights": pa.array([[1.0, 2.0]], pa.list_(pa.float32())), "bits": [1]}, pyquant.ArrowDataError, '"bits" would clash'),
        ({"name": pa.array([None], pa.string()), "weights": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))}, pyquant.ArrowDataError, "null"),
        ({"name": ["a"], "weights": pa.array([[1.0, None]], pa.list_(pa.float32()))}, pyquant.ArrowDataError, "null"),
        ({"name": ["a"], "weights": pa.array([None], pa.list_(pa.float32()))}, pyquant.ArrowDataError, "null"),
    ],
    ids=["nan", "shape", "float64", "missing", "clash", "null-name", "null-value", "null-row"],
)
def test_bad_batches_raise_named_errors(columns, error, needle):
    with pytest.raises(error, match=needle.replace("(", r"\(")):
        pyquant.quantize_arrow(pa.record_batch(columns), bits=4, group_size=2)


def test_bad_arguments_and_objects():
    a = pa.array(np.ones(8, np.float32))
    with pytest.raises(pyquant.InvalidBitsError):
        pyquant.quantize_arrow(a, bits=5, group_size=8)
    for g in (0, 3, -1, 2**64):
        with pytest.raises(pyquant.InvalidGroupSizeError):
            pyquant.quantize_arrow(a, bits=4, group_size=g)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="__arrow_c_array__"):
        pyquant.quantize_arrow(np.ones(8, np.float32))
    with pytest.raises(pyquant.UnsupportedDtypeError, match="Float64"):
        pyquant.quantize_arrow(pa.array([1.0, 2.0]))
    with pytest.raises(pyquant.UnsupportedDtypeError):
        pyquant.dequantize_arrow(a)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="cast to float32"):
        pyquant.quantize_arrow(pa.chunked_array([pa.array([1.0, 2.0])]))


# --- Hand-built C Data Interface structs (row 21) ------------------------------


class Producer:
    """ArrowArray / ArrowSchema structs built by hand with cffi, as a C
    producer would, counting how often each array's release is called."""

    def __init__(self):
        self.keep = []
        self.releases = 0

        @ffi.callback("void(struct ArrowArray *)")
        def release_array(a):
            self.releases += 1
            a.release = ffi.NULL

        @ffi.callback("void(struct ArrowSchema *)")
        def release_schema(s):
            s.release = ffi.NULL

        self.release_array, self.release_schema = release_array, release_schema

    def schema(self, fmt: bytes, name: bytes = b"", children=()):
        s = ffi.new("struct ArrowSchema *")
        s.format = self._keep(ffi.new("char[]", fmt))
        s.name = self._keep(ffi.new("char[]", name))
        s.flags = 0
        s.n_children = len(children)
        s.children = self._keep(ffi.new("struct ArrowSchema *[]", list(children))) if children else ffi.NULL
        s.release = self.release_schema
        return self._keep(s)

    def array(self, length, buffers, children=(), offset=0, null_count=0, top=True):
        a = ffi.new("struct ArrowArray *")
        a.length, a.offset, a.null_count = length, offset, null_count
        a.n_buffers = len(buffers)
        ptrs = [ffi.NULL if b is None else ffi.cast("void *", b.ctypes.data) for b in buffers]
        self.keep.extend(b for b in buffers if b is not None)
        a.buffers = self._keep(ffi.new("const void *[]", ptrs)) if buffers else ffi.NULL
        a.n_children = len(children)
        a.children = self._keep(ffi.new("struct ArrowArray *[]", list(children))) if children else ffi.NULL
        a.release = self.release_array if top else self.release_array
        return self._keep(a)

    def _keep(self, obj):
        self.keep.append(obj)
        return obj

    def quantize(self, array, schema, bits=4, group_size=4):
        out_a, out_s = ffi.new("struct ArrowArray *"), ffi.new("struct ArrowSchema *")
        err = ffi.new("PqError *")
        status = lib.pq_quantize_arrow(array, schema, bits, group_size, 0, 0, 0, ffi.NULL, 0, 0, out_a, out_s, err)
        if status == lib.PQ_STATUS_OK:
            out_a.release(out_a)
            out_s.release(out_s)
        assert array.release == ffi.NULL, "the input must be left moved-from"
        return status, ffi.string(err.message).decode()


VALUES = np.arange(8, dtype=np.float32)


def float_array(p: Producer, **kw):
    return p.array(kw.pop("length", 8), kw.pop("buffers", [None, VALUES]), **kw)


ROW_21 = {
    "unsupported format (float64)": (lambda p: (float_array(p), p.schema(b"g")), "UNSUPPORTED_DTYPE", "Float64"),
    "unsupported format (dictionary)": (
        lambda p: (float_array(p), p.schema(b"i")),  # dictionary set below
        "UNSUPPORTED_DTYPE", "dictionary"),
    "nulls present": (
        lambda p: (float_array(p, buffers=[np.array([0b11111101], np.uint8), VALUES], null_count=1), p.schema(b"f")),
        "INVALID_ARROW", "null"),
    "nulls present, count unknown": (
        lambda p: (float_array(p, buffers=[np.array([0b11111101], np.uint8), VALUES], null_count=-1), p.schema(b"f")),
        "INVALID_ARROW", "null"),
    "buffer missing (n_buffers)": (lambda p: (float_array(p, buffers=[None]), p.schema(b"f")), "INVALID_ARROW", "buffers"),
    "buffer missing (NULL data)": (lambda p: (float_array(p, buffers=[None, None]), p.schema(b"f")), "INVALID_ARROW", "NULL"),
    "children missing (struct)": (
        lambda p: (p.array(1, [None]), p.schema(b"+s", children=[p.schema(b"u", b"name"), p.schema(b"+l", b"weights", [p.schema(b"f", b"item")])])),
        "INVALID_ARROW", "children"),
    "children missing (list)": (
        lambda p: (p.array(1, [None, np.array([0, 8], np.int32)]), p.schema(b"+l", children=[p.schema(b"f")])),
        "UNSUPPORTED_DTYPE", "list"),
    "offset+length overflow": (lambda p: (float_array(p, offset=2**63 - 4), p.schema(b"f")), "INVALID_ARROW", "overflow"),
    "negative length": (lambda p: (float_array(p, length=-8), p.schema(b"f")), "INVALID_ARROW", "negative"),
    "misaligned values": (
        lambda p: (float_array(p, buffers=[None, np.frombuffer(np.zeros(40, np.uint8).data, np.uint8, 32, 1)]), p.schema(b"f")),
        "MISALIGNED", "aligned"),
}


@pytest.mark.parametrize("case", list(ROW_21))
def test_row21_bad_structs_error_and_release_the_input_once(case):
    build, status, needle = ROW_21[case]
    p = Producer()
    array, schema = build(p)
    if "dictionary" in case:
        schema.dictionary = p.schema(b"f")
    got, message = p.quantize(array, schema)
    assert got == getattr(lib, f"PQ_STATUS_{status}"), message
    assert needle in message, message
    assert p.releases == 1


def test_row21_released_struct_is_an_error_released_nothing():
    p = Producer()
    array, schema = float_array(p), p.schema(b"f")
    assert p.quantize(array, schema) == (lib.PQ_STATUS_OK, "")
    assert p.releases == 1
    got, message = p.quantize(array, schema)
    assert got == lib.PQ_STATUS_INVALID_ARROW and "released" in message
    assert p.releases == 1


def test_row21_hand_built_batch_round_trip():
    """A struct batch built by hand, with child offsets (row 22 at the C level)."""
    p = Producer()
    names = p.array(1, [None, np.array([0, 1], np.int32), np.frombuffer(b"w", np.uint8)], top=False)
    values = p.array(8, [None, np.arange(12, dtype=np.float32)], offset=4, top=False)
    weights = p.array(1, [None, np.array([0, 8], np.int32)], children=[values], top=False)
    batch = p.array(1, [None], children=[names, weights])
    schema = p.schema(b"+s", children=[p.schema(b"u", b"name"), p.schema(b"+l", b"weights", [p.schema(b"f", b"item")])])
    assert p.quantize(batch, schema) == (lib.PQ_STATUS_OK, "")
    assert p.releases == 1  # the parent's release; children are the parent's


def test_row22_sliced_batches_and_arrays():
    rng = np.random.default_rng(2)
    ts = {f"t{i}": rng.normal(size=(2, 32)).astype(np.float32) for i in range(5)}
    batch = weights_batch(ts)
    result = pyquant.quantize_arrow(batch.slice(2, 2), bits=4, group_size=16)
    for row, name in enumerate(("t2", "t3")):
        assert_row_is(result, row, pyquant.quantize_ptr(ts[name], bits=4, group_size=16), name)
    # A list column whose values child is itself sliced (child offset > 0).
    flat = rng.normal(size=200).astype(np.float32)
    values = pa.array(flat).slice(8, 128)
    lists = pa.ListArray.from_arrays(pa.array([0, 64, 128], pa.int32()), values)
    result = pyquant.quantize_arrow(pa.record_batch({"name": ["a", "b"], "weights": lists}), bits=2, group_size=32)
    assert_row_is(result, 1, pyquant.quantize_ptr(flat[72:136], bits=2, group_size=32), "b")


# --- Row 23: exports and capsules ----------------------------------------------


def test_row23_export_released_once_and_movable():
    p = Producer()
    out_a, out_s = ffi.new("struct ArrowArray *"), ffi.new("struct ArrowSchema *")
    err = ffi.new("PqError *")
    assert lib.pq_quantize_arrow(float_array(p), p.schema(b"f"), 4, 4, 0, 0, 0, ffi.NULL, 0, 0, out_a, out_s, err) == lib.PQ_STATUS_OK
    assert lib.pq_arrow_live_exports() == 1
    # Move: a bitwise copy, then mark the source released.
    moved = ffi.new("struct ArrowArray *")
    ffi.memmove(moved, out_a, ffi.sizeof("struct ArrowArray"))
    out_a.release = ffi.NULL
    # A moved child may outlive its parent.
    child = ffi.new("struct ArrowArray *")
    ffi.memmove(child, moved.children[1], ffi.sizeof("struct ArrowArray"))
    moved.children[1].release = ffi.NULL
    moved.release(moved)
    assert moved.release == ffi.NULL
    assert lib.pq_arrow_live_exports() == 1  # the codes child still holds its buffers
    child.release(child)
    out_s.release(out_s)
    assert lib.pq_arrow_live_exports() == 0


def test_row23_results_release_through_pyarrow():
    result = pyquant.quantize_arrow(pa.array(np.ones(64, np.float32)), group_size=64)
    table = pa.Table.from_batches([result] * 3)
    assert lib.pq_arrow_live_exports() == 1
    del result
    gc.collect()
    assert lib.pq_arrow_live_exports() == 1  # the table still holds it
    del table


def test_row23_unconsumed_capsules_free_their_data():
    result = pyquant.quantize_arrow(pa.array(np.ones(64, np.float32)), group_size=64)
    capsules = result.__arrow_c_array__()
    del result
    gc.collect()
    assert lib.pq_arrow_live_exports() == 1  # the capsule holds it
    del capsules
    source = pa.array(np.arange(64, dtype=np.float32))
    unused = source.__arrow_c_array__()
    del source, unused  # pyarrow memory must come back (checked by the fixture)


def test_row23_capsule_consumed_twice_raises():
    source = pa.array(np.arange(64, dtype=np.float32))
    schema_capsule, array_capsule = source.__arrow_c_array__()

    class Once:
        def __arrow_c_array__(self, requested_schema=None):
            return schema_capsule, array_capsule

    first = pyquant.quantize_arrow(Once(), group_size=64)
    with pytest.raises(pyquant.ArrowDataError, match="released"):
        pyquant.quantize_arrow(Once(), group_size=64)
    del first, source, schema_capsule, array_capsule


def test_error_after_import_releases_the_capsule_input():
    source = pa.array(np.array([1.0, np.inf] * 32, np.float32))
    with pytest.raises(pyquant.NonFiniteError):
        pyquant.quantize_arrow(source, group_size=64)
    del source  # its buffers are freed only if pyquant released its export


# --- Streams and files -----------------------------------------------------------


def test_streams_table_and_lazy_reader():
    rng = np.random.default_rng(3)
    batches = [weights_batch({f"b{i}": rng.normal(size=(4, 64)).astype(np.float32)}) for i in range(3)]
    table = pa.Table.from_batches(batches)
    out = pyquant.quantize_arrow(table, bits=4, group_size=64)
    assert isinstance(out, pa.Table) and out.num_rows == 3 and out.schema == pyquant.quantized_schema()

    pulled = []

    def gen():
        for b in batches:
            pulled.append(b)
            yield b

    reader = pyquant.quantize_arrow(pa.RecordBatchReader.from_batches(batches[0].schema, gen()), group_size=64)
    assert isinstance(reader, pa.RecordBatchReader) and pulled == []
    first = reader.read_next_batch()
    assert len(pulled) == 1 and first.column("name")[0].as_py() == "b0"
    assert reader.read_all().num_rows == 2
    empty = pyquant.quantize_arrow(table.schema.empty_table())
    assert empty.num_rows == 0 and empty.schema == pyquant.quantized_schema()
    back = pyquant.dequantize_arrow(out)
    assert isinstance(back, pa.Table) and back.column("name").to_pylist() == ["b0", "b1", "b2"]
    del first, reader, out, back


def write_ipc(path, batches):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batches[0].schema) as writer:
        for b in batches:
            writer.write_batch(b)


def test_quantize_arrow_file(tmp_path):
    rng = np.random.default_rng(4)
    batches = [weights_batch({f"l{i}.w": rng.normal(size=(8, 128)).astype(np.float16)}) for i in range(4)]
    src, dst = tmp_path / "w.arrow", tmp_path / "q.arrow"
    write_ipc(src, batches)
    events = []
    summary = pyquant.quantize_arrow_file(src, dst, bits=8, group_size=64, progress=events.append)
    assert (summary.quantized, summary.kept, summary.input_bytes) == (4, 0, src.stat().st_size)
    assert [e.done_tensors for e in events] == [1, 2, 3, 4]  # one event per batch (one tensor each here)
    assert summary.output_bytes == dst.stat().st_size
    got = pa.ipc.open_file(str(dst)).read_all()
    want = pyquant.quantize_arrow(pa.Table.from_batches(batches), bits=8, group_size=64)
    assert got.equals(want)
    with pytest.raises(pyquant.CheckpointError, match="already exists"):
        pyquant.quantize_arrow_file(src, dst)
    # A failing batch leaves dst as it was and no temporary file behind.
    bad = batches + [weights_batch({"nan": np.full((8, 128), np.nan, np.float16)})]
    write_ipc(src, bad)
    before = dst.read_bytes()
    with pytest.raises(pyquant.NonFiniteError, match='"nan"'):
        pyquant.quantize_arrow_file(src, dst, force=True)
    assert dst.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["q.arrow", "w.arrow"]
    del got, want


PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    import pyarrow, pyarrow.ipc, pyquant
    from pyquant import _peak_rss

    mode, src, dst, warm_up = sys.argv[1:]
    # Run the code once on a small file first, so that what is measured is
    # the data, not the first touch of pyarrow's and pyquant's code pages.
    pyquant.quantize_arrow_file(warm_up, dst + ".warm", bits=4, group_size=128)
    # Reset the peak to the current RSS (imports leave transient peaks).
    _peak_rss.reset()
    before = _peak_rss.peak_bytes()
    if mode == "quantize_arrow_file":
        pyquant.quantize_arrow_file(src, dst, bits=4, group_size=128)
    else:  # the control: read the whole file into memory
        table = pyarrow.ipc.open_file(pyarrow.OSFile(src)).read_all()
    print(_peak_rss.peak_bytes() - before)
    """
)


def peak_rss_growth_mib(*args) -> float:
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip()) / 2**20


@pytest.mark.skipif(not _peak_rss.available(), reason="needs Linux's /proc/self/clear_refs")
def test_quantize_arrow_file_peak_rss_is_one_batch(tmp_path):
    """Peak RSS of quantize_arrow_file grows by about one batch, not by the
    file (12 batches of 8 MiB). Measured in a fresh process as VmHWM (the
    peak RSS), reset just before the call. Not getrusage's ru_maxrss: after
    fork + exec it keeps the forking parent's peak (pytest's, here), which
    would hide the figure. Reading the whole file is the control that shows
    the measurement sees file-sized growth."""
    batch_mib, n_batches = 8, 12
    src = tmp_path / "big.arrow"
    rng = np.random.default_rng(5)
    block = rng.normal(size=(batch_mib * 2**20 // 4 // 1024, 1024)).astype(np.float32)
    batch = weights_batch({"w": block})
    with pa.OSFile(str(src), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        for _ in range(n_batches):
            writer.write_batch(batch)
    warm_up = tmp_path / "small.arrow"
    write_ipc(warm_up, [weights_batch({"w": block[:8]})])
    del batch, block
    file_mib = src.stat().st_size / 2**20
    assert file_mib >= n_batches * batch_mib
    grown = peak_rss_growth_mib("quantize_arrow_file", src, tmp_path / "q.arrow", warm_up)
    control = peak_rss_growth_mib("read_all", src, tmp_path / "c.arrow", warm_up)
    print(f"peak RSS grew by {grown:.1f} MiB (reading it all: {control:.1f} MiB) for a {file_mib:.0f} MiB file of {batch_mib} MiB batches")
    assert control > 0.8 * file_mib, "the measurement should see a whole-file read"
    assert grown < 3 * batch_mib, f"peak RSS grew by {grown:.1f} MiB"


def test_pyquant_imports_without_pyarrow():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pyarrow"] = None  # make `import pyarrow` fail
        import numpy as np, pyquant
        pyquant.quantize_ptr(np.ones(128, np.float32))
        try:
            pyquant.quantized_schema()
        except ImportError as e:
            assert "pip install '.[arrow]'" in str(e), e
        else:
            raise AssertionError("expected ImportError")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_dequantize_arrow_round_trips_an_arrow_checkpoint(tmp_path):
    """An Arrow checkpoint (quantized float32 / float16 / bfloat16 tensors,
    carried-over 1-D, integer, bool and bfloat16 ones) through
    dequantize_arrow: as a Table, batch by batch and as a lazy reader.
    Carried-over tensors come back bit for bit, quantized ones exactly as
    pyquant.dequantize gives them (bfloat16 included)."""
    import ml_dtypes

    from pyquant.dtypes import BY_NAME
    from pyquant.safetensors_io import CODE_OF, OutputTensor, writing

    rng = np.random.default_rng(11)
    bf16 = ml_dtypes.bfloat16
    tensors = {
        "w32": rng.normal(size=(4, 128)).astype(np.float32),
        "w16": rng.normal(size=(2, 3, 64)).astype(np.float16),
        "wbf": rng.normal(size=(8, 64)).astype(bf16),
        "bias": rng.normal(size=64).astype(np.float32),  # 1-D: carried over
        "norm_bf": rng.normal(size=7).astype(bf16),  # 1-D bfloat16, odd length
        "ids": (np.arange(12, dtype=np.int64) * 1_000_000_007 - 5).reshape(3, 4),
        "odd": np.arange(5, dtype=np.int8),  # 5 bytes: the next row starts misaligned
        "mask": np.array([[True, False, True]]),
        "after_odd": rng.normal(size=(2, 64)).astype(np.float32),
    }
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.arrow"
    specs = [OutputTensor(n, CODE_OF[str(a.dtype)], a.shape) for n, a in tensors.items()]
    with writing(src, specs, {}) as w:
        for n, a in tensors.items():
            w.write(n, a)
    summary = pyquant.quantize_file(src, dst, bits=4, group_size=64, format="arrow")
    assert (summary.quantized, summary.kept) == (4, 5)
    loaded = pyquant.load_quantized(dst)
    want = {n: (loaded[n].dequantize() if isinstance(loaded[n], pyquant.QuantizedTensor) else x)
            for n, x in tensors.items()}

    def check_raw(batch):
        assert batch.schema.names == ["name", "dtype", "shape", "data"]
        for row in batch.to_pylist():
            x = want[row["name"]]
            got = np.frombuffer(row["data"], BY_NAME[row["dtype"]].numpy).reshape(row["shape"])
            assert got.dtype == x.dtype and got.shape == x.shape and got.tobytes() == x.tobytes(), row["name"]

    table = pa.ipc.open_file(str(dst)).read_all()
    back = pyquant.dequantize_arrow(table)
    assert isinstance(back, pa.Table) and back.num_rows == len(tensors)
    for batch in back.to_batches():
        check_raw(batch)

    # Batch by batch: a quantized float32 (or float16) row keeps the weights form.
    for batch in table.to_batches():
        out = pyquant.dequantize_arrow(batch)
        name = batch.column("name")[0].as_py()
        if name in ("w32", "after_odd", "w16"):
            assert out.schema.names == ["name", "weights", "shape"]
            got = out.column("weights")[0].values.to_numpy().reshape(out.column("shape")[0].as_py())
            assert got.tobytes() == want[name].tobytes()
        else:
            check_raw(out)

    # All rows in one batch: mixed dtypes, rows starting at odd byte offsets.
    (combined,) = table.combine_chunks().to_batches()
    assert combined.num_rows == len(tensors)
    check_raw(pyquant.dequantize_arrow(combined))

    lazy = pyquant.dequantize_arrow(pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
    assert isinstance(lazy, pa.RecordBatchReader)
    for batch in lazy:
        check_raw(batch)
    del table, back, lazy, out, batch, combined


def test_arrow_checkpoint_rows_follow_the_rust_row_rules(tmp_path):
    """Rows are built (pyquant.arrow.quantized_row) and read back (Arrow
    checkpoints) under the same rules, Rust's: a carried-over row whose bytes
    do not fill its shape is refused by both, naming the tensor."""
    from pyquant.arrow import quantized_row

    empty = np.empty(0, np.float32)
    good = quantized_row("ids", "int64", (3,), 0, 0, np.arange(3, dtype=np.int64), empty, empty)
    assert good.schema == pyquant.quantized_schema()
    assert good.to_pylist()[0]["codes"] == np.arange(3, dtype=np.int64).tobytes()
    with pytest.raises(pyquant.ShapeError, match=r'tensor "ids" \(row 0\): codes hold 23 bytes'):
        quantized_row("ids", "int64", (3,), 0, 0, np.zeros(23, np.uint8), empty, empty)
    with pytest.raises(pyquant.UnsupportedDtypeError, match="float32, float16 or bfloat16"):
        quantized_row("ids", "int64", (3, 8), 4, 8, np.zeros(12, np.uint8), np.ones(3, np.float32), empty)

    row = good.to_pydict()
    row["codes"] = [row["codes"][0][:-1]]
    bad = pa.RecordBatch.from_pydict(row, schema=pyquant.quantized_schema())
    path = tmp_path / "bad.arrow"
    meta = {"format": "pyquant", "pyquant.format_version": "1"}
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, bad.schema.with_metadata(meta)) as writer:
        writer.write_batch(bad)
    with pytest.raises(pyquant.CheckpointError, match=r'batch 0: tensor "ids" \(row 0\): codes hold 23 bytes'):
        pyquant.load_quantized(path)
    del good, bad

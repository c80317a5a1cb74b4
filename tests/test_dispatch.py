"""pyquant.quantize / pyquant.explain: the path chosen for every input kind,
the same bytes as that path's own function, the copied-byte figures, and
forced-path mismatches."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401
import pytest

import pyquant
from pyquant.safetensors_io import CODE_OF, OutputTensor, writing

RNG = np.random.default_rng(11)
W = RNG.normal(0, 0.02, (64, 256)).astype(np.float32)


def same(a: pyquant.QuantizedTensor, b: pyquant.QuantizedTensor) -> None:
    assert (a.shape, a.dtype, a.bits, a.group_size) == (b.shape, b.dtype, b.bits, b.group_size)
    assert a.codes.tobytes() == b.codes.tobytes()
    assert a.scales.tobytes() == b.scales.tobytes()
    assert a.mins.tobytes() == b.mins.tobytes()


def misaligned(arr: np.ndarray) -> np.ndarray:
    raw = np.empty(arr.nbytes + 1, np.uint8)
    out = raw[1:].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    assert not out.flags.aligned
    return out


# --- single arrays -------------------------------------------------------------


def test_contiguous_array_takes_ptr():
    choice = pyquant.explain(W)
    assert (choice.path, choice.bytes_copied) == ("ptr", 0)
    assert "all cores" in choice.parallelism
    same(pyquant.quantize(W, bits=4, group_size=128), pyquant.quantize_ptr(W, bits=4, group_size=128))
    assert "2 threads" in pyquant.explain(W, threads=2).parallelism


@pytest.mark.parametrize("kind", ["strided", "transposed", "byteswapped", "byteswapped-transposed"])
def test_arrays_needing_a_copy_take_copy(kind):
    x = {
        "strided": W[:, ::2],
        "transposed": np.ascontiguousarray(W.T).T,
        "byteswapped": W.astype(">f4"),
        "byteswapped-transposed": np.ascontiguousarray(W.T).astype(">f4").T,
    }[kind]
    choice = pyquant.explain(x, group_size=64)
    assert choice.path == "copy"
    # One numpy copy (contiguous, native order) and Rust's copy of the result.
    assert choice.bytes_copied == 2 * x.nbytes
    got = pyquant.quantize(x, bits=4, group_size=64)
    same(got, pyquant.quantize_copy(x, bits=4, group_size=64))
    same(got, pyquant.quantize_ptr(np.ascontiguousarray(x.astype("=f4")), bits=4, group_size=64))
    with pytest.raises(pyquant.CopyRequiredError, match="path='ptr'"):
        pyquant.quantize(x, path="ptr", group_size=64)
    with pytest.raises(pyquant.CopyRequiredError):
        pyquant.explain(x, path="ptr")


def test_misaligned_array_is_copied_by_rust_only():
    x = misaligned(W)
    choice = pyquant.explain(x)
    assert (choice.path, choice.bytes_copied) == ("copy", x.nbytes)
    assert "not aligned" in choice.reason
    same(pyquant.quantize(x), pyquant.quantize_ptr(W))


def test_forced_copy_on_a_contiguous_array():
    choice = pyquant.explain(W, path="copy")
    assert (choice.path, choice.bytes_copied) == ("copy", W.nbytes)
    same(pyquant.quantize(W, path="copy"), pyquant.quantize_ptr(W))


def test_array_like_counts_the_conversion():
    rows = [[np.float32(v) for v in row] for row in W[:4]]
    choice = pyquant.explain(rows)
    # np.asarray makes a float32 array, then Rust copies it.
    assert choice.path == "copy" and choice.bytes_copied == 2 * 4 * 256 * 4
    same(pyquant.quantize(rows), pyquant.quantize_ptr(W[:4]))
    # Python floats make a float64 array, which no path quantizes: explain says so too.
    for f in (pyquant.explain, pyquant.quantize):
        with pytest.raises(pyquant.UnsupportedDtypeError, match="float64"):
            f(W[:4].tolist())
    # A buffer numpy views without converting: only Rust's copy.
    view = memoryview(W)
    assert pyquant.explain(view).bytes_copied == W.nbytes
    same(pyquant.quantize(view), pyquant.quantize_ptr(W))
    with pytest.raises(pyquant.CopyRequiredError, match="needs a numpy array"):
        pyquant.quantize(view, path="ptr")


def test_bfloat16_bits_with_dtype():
    bf = W.astype(ml_dtypes.bfloat16)
    bits16 = bf.view(np.uint16)
    assert pyquant.explain(bits16, dtype="bfloat16").path == "ptr"
    same(pyquant.quantize(bits16, dtype="bfloat16"), pyquant.quantize_ptr(bf))


# --- batches -------------------------------------------------------------------


def test_dict_and_list_take_batch():
    layers = {"q": W, "down": RNG.normal(size=(32, 128)).astype(np.float16)}
    params = {"down": (8, 64)}
    choice = pyquant.explain(layers, params=params)
    assert (choice.path, choice.bytes_copied) == ("batch", 0)
    got = pyquant.quantize(layers, params=params, threads=1)
    want = pyquant.quantize_batch(layers, params=params)
    assert list(got) == ["q", "down"]
    for k in layers:
        same(got[k], want[k])
    as_list = pyquant.quantize(list(layers.values()))
    assert isinstance(as_list, list)
    for g, w in zip(as_list, pyquant.quantize_batch(list(layers.values()))):
        same(g, w)
    assert pyquant.explain((W, W)).path == "batch"
    assert pyquant.quantize([]) == []


def test_batch_with_a_tensor_needing_a_copy_is_explained_then_raises():
    layers = {"ok": W, "t": W.T}
    choice = pyquant.explain(layers)
    assert (choice.path, choice.bytes_copied) == ("batch", 0)
    assert "tensor 't' needs a copy" in choice.reason
    with pytest.raises(pyquant.CopyRequiredError, match="tensor 't'"):
        pyquant.quantize(layers)


# --- Arrow ---------------------------------------------------------------------


def weights_batch(tensors):
    return pa.record_batch({
        "name": list(tensors),
        "weights": pa.array([t.ravel() for t in tensors.values()], pa.list_(pa.float32())),
        "shape": pa.array([list(t.shape) for t in tensors.values()], pa.list_(pa.int64())),
    })


def test_arrow_objects_take_arrow():
    batch = weights_batch({"a": W, "b": W[:8]})
    table = pa.Table.from_batches([batch, batch])
    for obj in (batch, table, pa.array(W[0])):
        choice = pyquant.explain(obj)
        assert (choice.path, choice.bytes_copied) == ("arrow", 0)
    assert pyquant.quantize(batch).equals(pyquant.quantize_arrow(batch))
    assert pyquant.quantize(table, bits=8, group_size=64).equals(
        pyquant.quantize_arrow(table, bits=8, group_size=64))
    got = pyquant.quantize(batch).column("codes")[0].as_py()
    assert got == pyquant.quantize_ptr(W).codes.tobytes()


# --- files ---------------------------------------------------------------------


def write_safetensors(path, tensors):
    specs = [OutputTensor(n, CODE_OF[str(a.dtype)], a.shape) for n, a in tensors.items()]
    with writing(path, specs, {}) as w:
        for n, a in tensors.items():
            w.write(n, a)


def test_safetensors_file_and_directory(tmp_path):
    tensors = {"w": W, "bias": W[0].copy()}
    src = tmp_path / "m.safetensors"
    write_safetensors(src, tensors)
    choice = pyquant.explain(src)
    assert (choice.path, choice.bytes_copied) == ("file", 0)
    assert "safetensors" in choice.reason
    summary = pyquant.quantize(str(src), dst=tmp_path / "a.safetensors", group_size=64)
    pyquant.quantize_file(src, tmp_path / "b.safetensors", group_size=64)
    assert summary.quantized == 1
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    same(pyquant.load_quantized(tmp_path / "a.safetensors")["w"], pyquant.quantize_ptr(W, group_size=64))
    # A model directory.
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", tensors)
    assert pyquant.explain(model).path == "file"
    pyquant.quantize(model, dst=tmp_path / "c.safetensors", group_size=64)
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_safetensors_file_with_a_misaligned_tensor_counts_its_copy(tmp_path):
    # A hand-made file: one float16 value, then the float32 tensor at data
    # offset 2 (writers align tensors; hand-made files need not).
    header = json.dumps({
        "a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
        "b": {"dtype": "F32", "shape": list(W.shape), "data_offsets": [2, 2 + W.nbytes]},
    }).encode()
    header += b" " * (-len(header) % 8)
    src = tmp_path / "odd.safetensors"
    src.write_bytes(struct.pack("<Q", len(header)) + header + np.float16(1).tobytes() + W.tobytes())
    choice = pyquant.explain(src)
    assert (choice.path, choice.bytes_copied) == ("file", W.nbytes)
    assert "misaligned" in choice.reason
    pyquant.quantize(src, dst=tmp_path / "q.safetensors")
    same(pyquant.load_quantized(tmp_path / "q.safetensors")["b"], pyquant.quantize_ptr(W))


def test_arrow_ipc_file(tmp_path):
    src = tmp_path / "w.arrow"
    batch = weights_batch({"a": W, "b": W[:8]})
    with pa.OSFile(str(src), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
        writer.write_batch(batch)
    choice = pyquant.explain(src)
    assert (choice.path, choice.bytes_copied) == ("file", 0)
    assert "Arrow IPC" in choice.reason
    summary = pyquant.quantize(src, dst=tmp_path / "q.arrow", bits=2, group_size=64)
    assert isinstance(summary, pyquant.Summary) and (summary.quantized, summary.kept) == (4, 0)
    pyquant.quantize_arrow_file(src, tmp_path / "r.arrow", bits=2, group_size=64)
    got = pa.ipc.open_file(str(tmp_path / "q.arrow")).read_all()
    assert got.equals(pa.ipc.open_file(str(tmp_path / "r.arrow")).read_all())


def test_file_errors(tmp_path):
    src = tmp_path / "m.safetensors"
    write_safetensors(src, {"w": W})
    with pytest.raises(pyquant.PathError, match="pass dst="):
        pyquant.quantize(src)
    with pytest.raises(pyquant.PathError, match="threads="):
        pyquant.quantize(src, dst=tmp_path / "q.safetensors", threads=1)
    with pytest.raises(pyquant.CheckpointError):
        pyquant.explain(tmp_path / "missing.safetensors")
    with pytest.raises(pyquant.PathError, match="dst="):
        pyquant.quantize(W, dst=tmp_path / "q.safetensors")


# --- forced-path mismatches ------------------------------------------------------


@pytest.mark.parametrize("x, path", [
    (W, "batch"), (W, "arrow"), (W, "file"),
    ({"w": W}, "ptr"), ({"w": W}, "copy"), ([W], "arrow"),
    (pa.array(W[0]), "copy"), (pa.array(W[0]), "batch"),
    ("model.safetensors", "ptr"), ("model.safetensors", "batch"),
])
def test_forced_path_mismatch_raises(x, path):
    with pytest.raises(pyquant.PathError, match=f"path='{path}' does not take"):
        pyquant.quantize(x, path=path)
    with pytest.raises(pyquant.PathError):
        pyquant.explain(x, path=path)


def test_bad_arguments():
    with pytest.raises(pyquant.PathError, match="path must be one of"):
        pyquant.quantize(W, path="fast")  # type: ignore[call-overload]
    with pytest.raises(pyquant.PathError, match="params="):
        pyquant.quantize(W, params={"w": (8, 128)})
    with pytest.raises(pyquant.PathError, match="dtype="):
        pyquant.quantize({"w": W}, dtype="float32")
    assert issubclass(pyquant.PathError, pyquant.QuantizeError)


def test_explain_is_a_frozen_dataclass():
    choice = pyquant.explain(W)
    with pytest.raises(AttributeError):
        choice.path = "copy"  # type: ignore[misc]
    assert set(choice.__dataclass_fields__) == {"path", "reason", "bytes_copied", "parallelism"}


BAD_CALLS = [
    (np.ones((4, 128)), {}),                                        # float64: ptr path
    (np.ones((4, 128))[:, ::2], {}),                                # float64, strided: copy path
    ([[1.0, 2.0]], {}),                                             # array-like float64: copy path
    (np.ones((4, 128), np.float32), {"bits": 5}),
    (np.ones((4, 100), np.float32), {}),                            # group size larger than a row
    (np.ones((4, 128), np.float32), {"group_size": 0}),
    (np.ones((4, 128), np.float32), {"threads": 0}),
    (np.ones((4, 128), np.uint16), {"dtype": "float16"}),
    ({"a": np.ones((2, 128), np.float32), "b": np.ones(8)}, {}),     # batch: names the tensor
    ({"a": np.ones((2, 128), np.float32)}, {"params": {"a": (5, 128)}}),
]


@pytest.mark.parametrize("x,kw", BAD_CALLS)
def test_explain_raises_what_quantize_raises(x, kw):
    """explain runs the checks of the call it describes (issue 12 item 10):
    never 'read in place' for an input quantize then refuses."""
    with pytest.raises(pyquant.QuantizeError) as by_quantize:
        pyquant.quantize(x, **kw)
    with pytest.raises(type(by_quantize.value)) as by_explain:
        pyquant.explain(x, **kw)
    assert str(by_explain.value) == str(by_quantize.value)


def test_explain_checks_the_options_of_a_file(tmp_path):
    src = tmp_path / "m.safetensors"
    from safetensors.numpy import save_file

    save_file({"w": np.ones((4, 128), np.float32)}, str(src))
    with pytest.raises(pyquant.InvalidGroupSizeError, match="does not fill whole bytes"):
        pyquant.explain(src, bits=2, group_size=3)


def test_explain_runs_the_arrow_type_check():
    """A float64 Arrow array, chunked array or Table column: explain raises
    the UnsupportedDtypeError quantize_arrow raises (the same Rust check)."""
    pa = pytest.importorskip("pyarrow")
    doubles = np.ones(128)
    for obj in (pa.array(doubles), pa.chunked_array([doubles]),
                pa.table({"name": ["a"], "weights": [doubles]}),
                pa.RecordBatchReader.from_batches(pa.schema([("name", pa.string()), ("weights", pa.list_(pa.float64()))]), [])):
        with pytest.raises(pyquant.UnsupportedDtypeError, match="cast to float32 first") as by_explain:
            pyquant.explain(obj)
        with pytest.raises(pyquant.UnsupportedDtypeError) as by_quantize:
            pyquant.quantize(obj)
        assert str(by_quantize.value) == str(by_explain.value)
    with pytest.raises(pyquant.ArrowDataError, match='no "weights" column'):
        pyquant.explain(pa.record_batch({"name": ["a"], "w": [[1.0]]}))
    ok = pa.table({"name": ["a"], "weights": pa.array([np.ones(128, np.float32)], pa.list_(pa.float32()))})
    assert pyquant.explain(ok).path == "arrow"
    assert pyquant.explain(ok.column("weights").chunk(0).values).path == "arrow"

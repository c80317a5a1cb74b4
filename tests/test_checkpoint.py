"""Checkpoint files end to end: quantize -> inspect -> report -> dequantize,
sharded inputs, the carry-over policy, bounded memory, and row 25 of
docs/bad-inputs.md (bad files)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy

import pyquant
from pyquant import _peak_rss
from pyquant import CheckpointError
from pyquant.safetensors_io import CODE_OF, OutputTensor, writing

RNG = np.random.default_rng(7)


def save(path, tensors, metadata=None):
    """Writes a safetensors file with pyquant's writer (needed for bfloat16)."""
    specs = [OutputTensor(n, CODE_OF[str(a.dtype)], a.shape) for n, a in tensors.items()]
    with writing(path, specs, metadata or {}) as w:
        for n, a in tensors.items():
            w.write(n, a)


def model(dtype=np.float32):
    return {
        "embed.weight": RNG.normal(0, 0.02, (64, 256)).astype(dtype),
        "layer.0.q.weight": RNG.normal(0, 0.02, (128, 256)).astype(dtype),
        "layer.0.mlp.weight": RNG.normal(0, 0.02, (2, 64, 128)).astype(dtype),
        "layer.0.norm.weight": np.ones(256, dtype),
        "layer.0.q.bias": RNG.normal(0, 0.02, 128).astype(dtype),
        "position_ids": np.arange(64, dtype=np.int64).reshape(1, 64),
        "lm_head.weight": RNG.normal(0, 0.02, (64, 256)).astype(dtype),
    }


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pyquant.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_round_trip_matches_quantize_ptr(tmp_path, dtype):
    tensors = model(dtype)
    src, dst, back = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "dq.safetensors"
    save(src, tensors, {"origin": "test"})
    s = pyquant.quantize_file(src, dst, bits=4, group_size=64)
    assert (s.quantized, s.kept) == (4, 3)
    loaded = pyquant.load_quantized(dst)
    assert list(loaded) == list(tensors) or set(loaded) == set(tensors)
    for name, x in tensors.items():
        got = loaded[name]
        if x.ndim >= 2 and x.dtype != np.int64:
            ref = pyquant.quantize_ptr(x, bits=4, group_size=64)
            assert isinstance(got, pyquant.QuantizedTensor) and got.dtype == str(np.dtype(dtype))
            np.testing.assert_array_equal(got.codes, ref.codes)
            np.testing.assert_array_equal(got.scales.view(np.uint32), ref.scales.view(np.uint32))
            np.testing.assert_array_equal(got.mins.view(np.uint32), ref.mins.view(np.uint32))
        else:
            assert got.dtype == x.dtype and got.tobytes() == x.tobytes()
    pyquant.dequantize_file(dst, back)
    with pyquant.safetensors_io.SafetensorsFile(back) as f:
        assert json.loads(json.dumps(f.metadata)) == {"origin": "test"}
        for name, x in tensors.items():
            y = f.array(name)
            assert y.dtype == x.dtype and y.shape == x.shape
            if isinstance(loaded[name], pyquant.QuantizedTensor):
                assert y.tobytes() == loaded[name].dequantize().tobytes()
            else:
                assert y.tobytes() == x.tobytes()


def test_output_loads_with_the_safetensors_package(tmp_path):
    tensors = {k: v for k, v in model(np.float32).items()}
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    safetensors.numpy.save_file(tensors, str(src))  # the reference writer, as input
    pyquant.quantize_file(src, dst, bits=2, group_size=128)
    with safetensors.safe_open(str(dst), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "pyquant" and meta["pyquant.format_version"] == "2"
        # Every tensor has the defaults, so none is listed (format 2: shapes follow from the parts).
        assert (meta["pyquant.dtype"], meta["pyquant.bits"], meta["pyquant.group_size"]) == ("float32", "2", "128")
        assert json.loads(meta["pyquant.tensors"]) == {}
        codes = f.get_tensor("layer.0.q.weight.codes")
        assert codes.dtype == np.uint8 and codes.shape == (128, 64)
        np.testing.assert_array_equal(codes, pyquant.quantize_ptr(tensors["layer.0.q.weight"], bits=2).codes)
        assert f.get_tensor("layer.0.q.weight.scales").shape == (128, 2)
        np.testing.assert_array_equal(f.get_tensor("position_ids"), tensors["position_ids"])


def test_sharded_directory(tmp_path):
    tensors = model(np.float16)
    names = list(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    weight_map = {}
    for shard, ns in shards.items():
        save(tmp_path / shard, {n: tensors[n] for n in ns})
        weight_map.update({n: shard for n in ns})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    dst = tmp_path / "out.safetensors"
    s = pyquant.quantize_file(tmp_path, dst)
    assert s.quantized + s.kept == len(tensors)
    loaded = pyquant.load_quantized(dst)
    np.testing.assert_array_equal(loaded["lm_head.weight"].codes, pyquant.quantize_ptr(tensors["lm_head.weight"]).codes)


def test_skip_and_bits_for_policies(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save(src, model())
    pyquant.quantize_file(src, dst, bits=4, skip=["lm_head", r"^embed\."], bits_for=[("mlp", 8), ("q\\.", 2)])
    loaded = pyquant.load_quantized(dst)
    assert isinstance(loaded["lm_head.weight"], np.ndarray) and isinstance(loaded["embed.weight"], np.ndarray)
    assert loaded["layer.0.mlp.weight"].bits == 8 and loaded["layer.0.q.weight"].bits == 2


def test_tensor_that_does_not_fit_the_group_is_kept_not_lost(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    odd = RNG.normal(size=(4, 100)).astype(np.float32)
    save(src, {"odd": odd, "ok": RNG.normal(size=(4, 128)).astype(np.float32)})
    s = pyquant.quantize_file(src, dst)
    assert s.kept_reasons["odd"].startswith("does not fit") and s.quantized == 1
    assert pyquant.load_quantized(dst)["odd"].tobytes() == odd.tobytes()


def test_cli_quantize_inspect_report_dequantize(tmp_path):
    src, dst, back = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "b.safetensors"
    save(src, model(ml_dtypes.bfloat16))
    out = run_cli("quantize", src, dst, "--bits", "4", "--group-size", "64", "--bits-for", "mlp=8")
    assert out.returncode == 0, out.stderr
    assert "quantized 4 tensors, kept 3" in out.stdout and out.stderr == ""  # no bar when piped
    ins = run_cli("inspect", dst)
    assert ins.returncode == 0 and "pyquant checkpoint, 7 tensors (4 quantized)" in ins.stdout
    assert "layer.0.mlp.weight" in ins.stdout and "bfloat16" in ins.stdout
    rep = run_cli("report", src, dst, "--json")
    data = json.loads(rep.stdout)
    by_name = {t["name"]: t for t in data["tensors"]}
    assert by_name["layer.0.mlp.weight"]["bits"] == 8 and by_name["layer.0.q.weight"]["bits"] == 4
    assert by_name["layer.0.mlp.weight"]["rel_rmse"] < by_name["layer.0.q.weight"]["rel_rmse"]
    assert all(t["cosine"] > 0.9 for t in data["tensors"]) and data["summary"]["quantized"] == 4
    text = run_cli("report", src, dst)
    assert "SNR dB" in text.stdout and "summary: 4 quantized, 3 kept" in text.stdout
    deq = run_cli("dequantize", dst, back)
    assert deq.returncode == 0, deq.stderr
    assert run_cli("inspect", back).stdout.count("bfloat16") == 6


def test_cli_help_on_every_command():
    for cmd in ("quantize", "dequantize", "inspect", "report", "demo"):
        out = run_cli(cmd, "--help")
        assert out.returncode == 0 and "usage: pyquant " + cmd in out.stdout


# Row 25: bad files --------------------------------------------------------------------------

def good_file(path):
    save(path, {"w": RNG.normal(size=(4, 128)).astype(np.float32)})
    return path.read_bytes()


def header_file(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("case,expect", [
    ("missing", "no such file"),
    ("empty", "not a safetensors file: it is empty"),
    ("truncated_data", "point past the end"),
    ("huge_header_len", "exceed the 100 MB limit"),
    ("header_past_end", "points past the end"),
    ("not_json", "not valid JSON"),
    ("bad_dtype", "unsupported dtype 'F8_E4M3'"),
    ("overlap", "overlap"),
    ("size_mismatch", "needs 16"),
    ("negative_offsets", "corrupt data_offsets"),
    ("bad_shape", "corrupt shape"),
    ("directory_without_model", "no model.safetensors.index.json"),
    # Found by fuzz/safetensors_header.py: each used to escape as another exception.
    ("fuzz_dtype_not_a_string", "unsupported dtype"),  # TypeError: unhashable type
    ("fuzz_deep_nesting", "not valid JSON"),  # RecursionError
    ("fuzz_huge_integer", "not valid JSON"),  # ValueError: int max str digits
    ("fuzz_empty_tensor_huge_dims", "too large"),  # numpy ValueError in array()
    ("fuzz_65_axes", "too large"),  # numpy ValueError in array()
])
def test_row25_bad_input_files(tmp_path, case, expect):
    src = tmp_path / "in.safetensors"
    if case == "empty":
        src.write_bytes(b"")
    elif case == "truncated_data":
        data = good_file(src)
        src.write_bytes(data[:-100])
    elif case == "huge_header_len":
        src.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif case == "header_past_end":
        src.write_bytes(struct.pack("<Q", 1000) + b"{}")
    elif case == "not_json":
        src.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    elif case == "bad_dtype":
        header_file(src, {"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "overlap":
        header_file(src, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                          "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24)
    elif case == "size_mismatch":
        header_file(src, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16)
    elif case == "negative_offsets":
        header_file(src, {"a": {"dtype": "F32", "shape": [0], "data_offsets": [-4, 0]}}, b"")
    elif case == "bad_shape":
        header_file(src, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"")
    elif case == "directory_without_model":
        src = tmp_path
    elif case == "fuzz_dtype_not_a_string":
        header_file(src, {"a": {"dtype": [], "shape": [], "data_offsets": [0, 0]}})
    elif case == "fuzz_deep_nesting":
        raw = b"[" * 100_000 + b"]" * 100_000
        src.write_bytes(struct.pack("<Q", len(raw)) + raw)
    elif case == "fuzz_huge_integer":
        raw = b'{"a":' + b"1" * 5000 + b"}"
        src.write_bytes(struct.pack("<Q", len(raw)) + raw)
    elif case == "fuzz_empty_tensor_huge_dims":
        header_file(src, {"a": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}})
    elif case == "fuzz_65_axes":
        header_file(src, {"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}, b"\0")
    dst = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match=expect):
        pyquant.quantize_file(src, dst)
    assert not dst.exists()
    out = run_cli("quantize", src, dst)
    assert out.returncode == 1 and out.stderr.startswith("pyquant: error:") and expect.split()[0] in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert not any(p.name.startswith(".pyquant-") for p in tmp_path.iterdir())


def test_row25_output_exists_needs_force_and_failures_leave_it_untouched(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save(src, model())
    dst.write_bytes(b"precious")
    out = run_cli("quantize", src, dst)
    assert out.returncode == 1 and "already exists" in out.stderr and dst.read_bytes() == b"precious"
    bad = model()
    bad["layer.0.q.weight"][3, 5] = np.nan
    save(tmp_path / "bad.safetensors", bad)
    out = run_cli("quantize", tmp_path / "bad.safetensors", dst, "--force")
    assert out.returncode == 1 and "tensor 'layer.0.q.weight'" in out.stderr and "NaN" in out.stderr
    assert dst.read_bytes() == b"precious"
    assert run_cli("quantize", src, dst, "--force").returncode == 0
    assert dst.read_bytes() != b"precious"


def test_row25_unwritable_output_directory(tmp_path):
    src = tmp_path / "m.safetensors"
    save(src, model())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = run_cli("quantize", src, blocker / "out.safetensors")
    assert out.returncode == 1 and "cannot write" in out.stderr and "Traceback" not in out.stderr


def test_row25_disk_full_leaves_nothing(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save(src, model())
    # RLIMIT_FSIZE makes writes past 4 KiB fail with EFBIG, as a full disk would.
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from pyquant.cli import main
        sys.exit(main(["quantize", {str(src)!r}, {str(dst)!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "cannot write" in out.stderr, out.stderr
    assert not dst.exists() and not any(p.name.startswith(".pyquant-") for p in tmp_path.iterdir())


def test_not_a_pyquant_checkpoint(tmp_path):
    src = tmp_path / "m.safetensors"
    save(src, model())
    with pytest.raises(CheckpointError, match="not a pyquant checkpoint"):
        pyquant.load_quantized(src)
    out = run_cli("dequantize", src, tmp_path / "x.safetensors")
    assert out.returncode == 1 and "not a pyquant checkpoint" in out.stderr


@pytest.mark.skipif(not _peak_rss.available(), reason="needs Linux's /proc/self/clear_refs")
def test_bounded_memory_on_a_checkpoint_much_larger_than_a_tensor(tmp_path):
    """Peak RSS grows by about one tensor, not by the file size (measured in a fresh process)."""
    src, dst = tmp_path / "big.safetensors", tmp_path / "q.safetensors"
    n_tensors, rows, cols = 12, 2048, 4096  # 32 MiB per tensor, 384 MiB in all
    specs = [OutputTensor(f"layer.{i}.weight", "F32", (rows, cols)) for i in range(n_tensors)]
    with writing(src, specs, {}) as w:
        block = RNG.normal(size=(rows, cols)).astype(np.float32)
        for i in range(n_tensors):
            w.write(f"layer.{i}.weight", block + np.float32(i))
    del block
    code = textwrap.dedent(f"""
        import sys, numpy, pyquant
        from pyquant import _peak_rss
        from pyquant.safetensors_io import Checkpoint
        if sys.argv[1] == "control":  # touch every tensor without releasing it
            _peak_rss.reset(); before = _peak_rss.peak_bytes()
            with Checkpoint({str(src)!r}) as c:
                total = sum(float(c.array(n).reshape(-1)[::1024].sum()) for n in c.names())
        else:
            _peak_rss.reset(); before = _peak_rss.peak_bytes()
            pyquant.quantize_file({str(src)!r}, {str(dst)!r})
        print(_peak_rss.peak_bytes() - before)
    """)

    def growth_of(mode):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    tensor = rows * cols * 4
    growth = growth_of("quantize")
    # The control shows the measurement sees file-sized growth when pages are kept.
    assert growth_of("control") > 6 * tensor
    assert growth < 2.5 * tensor, f"peak RSS grew by {growth / 2**20:.0f} MiB for {tensor / 2**20:.0f} MiB tensors"
    assert os.path.getsize(src) > 10 * tensor


def test_arrow_format_matches_the_arrow_path_and_round_trips(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc

    tensors = {k: v for k, v in model(np.float32).items()}
    tensors["bf16.weight"] = RNG.normal(size=(8, 128)).astype(ml_dtypes.bfloat16)
    src, dst, back = tmp_path / "m.safetensors", tmp_path / "q.arrow", tmp_path / "b.safetensors"
    save(src, tensors, {"origin": "arrow-test"})
    out = run_cli("quantize", src, dst, "--format", "arrow", "--group-size", "64")
    assert out.returncode == 0, out.stderr
    reader = pa.ipc.open_file(str(dst))
    assert reader.schema.remove_metadata().equals(pyquant.quantized_schema())
    rows = {reader.get_batch(i).column("name")[0].as_py(): reader.get_batch(i) for i in range(reader.num_record_batches)}
    assert set(rows) == set(tensors)
    # A float32 tensor's row is exactly what quantize_arrow gives for it.
    w = tensors["layer.0.q.weight"]
    arrow_in = pa.RecordBatch.from_arrays(
        [pa.array(["layer.0.q.weight"]), pa.FixedSizeListArray.from_arrays(pa.array(w.ravel()), w.size),
         pa.array([list(w.shape)], pa.list_(pa.int64()))], ["name", "weights", "shape"])
    assert rows["layer.0.q.weight"].equals(pyquant.quantize_arrow(arrow_in, group_size=64))
    # Carried-over tensors are rows with bits 0 holding their raw bytes.
    kept = rows["position_ids"].to_pydict()
    assert kept["bits"] == [0] and kept["dtype"] == ["int64"] and kept["codes"][0] == tensors["position_ids"].tobytes()
    loaded = pyquant.load_quantized(dst)
    np.testing.assert_array_equal(loaded["bf16.weight"].codes, pyquant.quantize_ptr(tensors["bf16.weight"], group_size=64).codes)
    assert loaded["position_ids"].tobytes() == tensors["position_ids"].tobytes()
    assert "pyquant checkpoint, 8 tensors (5 quantized)" in run_cli("inspect", dst).stdout
    assert json.loads(run_cli("report", src, dst, "--json").stdout)["summary"]["quantized"] == 5
    assert run_cli("dequantize", dst, back).returncode == 0
    with pyquant.safetensors_io.SafetensorsFile(back) as f:
        assert f.metadata == {"origin": "arrow-test"}
        assert f.array("layer.0.q.weight").tobytes() == loaded["layer.0.q.weight"].dequantize().tobytes()
        assert f.array("bf16.weight").dtype == ml_dtypes.bfloat16


def on_pty(*args):
    """What the command prints on a terminal (a pty), stdout and stderr together."""
    import pty

    code = f"from pyquant.cli import main; raise SystemExit(main({list(map(str, args))!r}))"
    out = bytearray()

    def read(fd):
        data = os.read(fd, 1024)
        out.extend(data)
        return data

    status = pty.spawn([sys.executable, "-c", code], read)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode()
    return out.decode()


def test_progress_bar_on_a_terminal(tmp_path):
    """On a terminal (a pty here) quantize shows tensors, bytes and throughput."""
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save(src, model())
    text = on_pty("quantize", src, dst)
    # tqdm's bar: label, percentage, bytes, throughput, and the tensors done.
    assert "quantizing: 100%" in text and "7/7 tensors" in text and "B/s" in text, text
    assert "\r" in text  # redrawn in place


def test_progress_bar_only_on_a_terminal_and_never_with_quiet(tmp_path):
    """Off a terminal (a pipe) there is no bar; on one, --quiet silences it
    (issue 12 item 6). report draws one too."""
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save(src, model())
    out = run_cli("quantize", src, dst)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    out = run_cli("report", src, dst)
    assert out.returncode == 0 and out.stderr == "", out.stderr

    assert "%|" not in on_pty("quantize", src, dst, "--force", "--quiet")
    assert "%|" not in on_pty("report", src, dst, "--quiet")
    text = on_pty("report", src, dst)
    assert "comparing: 100%" in text and "7/7 tensors" in text


def test_progress_callback_and_summary_of_every_file_entry_point(tmp_path):
    """The library reports progress through a callback (the CLI draws its bar
    from it) and every file entry point returns a Summary."""
    src, dst, back = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "d.safetensors"
    tensors = model()
    save(src, tensors)
    events = []
    s = pyquant.quantize_file(src, dst, group_size=64, progress=events.append)
    assert isinstance(s, pyquant.Summary) and s.quantized + s.kept == len(tensors)
    assert [e.done_tensors for e in events] == list(range(1, len(tensors) + 1))
    assert {(e.label, e.tensors, e.total_bytes) for e in events} == {("quantizing", len(tensors), s.input_bytes)}
    assert events[-1].done_bytes == s.input_bytes
    events.clear()
    d = pyquant.dequantize_file(dst, back, progress=events.append)
    assert (d.quantized, d.kept) == (s.quantized, s.kept)
    assert events[-1].label == "dequantizing" and events[-1].done_tensors == len(tensors)
    assert events[-1].done_bytes == events[-1].total_bytes == d.output_bytes


def test_quantized_names_must_not_clash_with_existing_tensors(tmp_path):
    src = tmp_path / "m.safetensors"
    save(src, {"w": RNG.normal(size=(4, 128)).astype(np.float32), "w.codes": np.zeros(3, np.uint8)})
    with pytest.raises(CheckpointError, match="tensor w.codes would clash with the quantized 'w'"):
        pyquant.quantize_file(src, tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()

"""Files pyquant did not write (issue 11): never read outside the model,
never echo file bytes, never lose the source, never leave debris.

Every test runs the command line as a user would (``python -m pyquant.cli``
from the worktree root) and is named after the failure it prevents.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

RNG = np.random.default_rng(11)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, umask=None, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "pyquant.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None, **kw)


# Runs the CLI with the portable fallback (named temporary files) instead of O_TMPFILE.
FALLBACK = "import pyquant._atomic as a; a.USE_O_TMPFILE = False; "


def cli_command(*args, fallback=False):
    if not fallback:
        return [sys.executable, "-m", "pyquant.cli", *map(str, args)]
    code = FALLBACK + f"import sys; from pyquant.cli import main; sys.exit(main({list(map(str, args))!r}))"
    return [sys.executable, "-c", code]


def write_safetensors(path, tensors, metadata=None):
    """A safetensors file written by hand (the format, not pyquant's writer)."""
    header, pos, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        code = {"float32": "F32", "float16": "F16", "int64": "I64", "uint8": "U8"}[str(a.dtype)]
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
        blobs.append(a)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in blobs:
            a.tofile(f)


def small_model():
    return {"a.weight": RNG.normal(size=(8, 128)).astype(np.float32),
            "b.weight": RNG.normal(size=(4, 256)).astype(np.float32),
            "b.bias": RNG.normal(size=4).astype(np.float32)}


def big_model(path, n=12, rows=1024, cols=4096):
    """n float32 tensors of rows*cols (16 MiB each by default), written fast."""
    write_safetensors(path, {f"layer.{i}.weight": np.full((rows, cols), i, np.float32) + np.arange(cols, dtype=np.float32)
                             for i in range(n)})


def debris(directory):
    return sorted(p for p in os.listdir(directory) if p.startswith(".pyquant-") or p.startswith("#"))


def one_line_error(out, *needles):
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("pyquant: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in out.stderr, out.stderr


def output_fd_open(pid, directory):
    """True once process ``pid`` has its temporary output open in ``directory``."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/") and ("/#" in target or "/.pyquant-" in target):
            return True
    return False


def start_and_wait_for_output(args, directory, fallback=False):
    proc = subprocess.Popen(cli_command(*args, fallback=fallback), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not output_fd_open(proc.pid, directory):
        assert proc.poll() is None, f"finished before the output was open: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    return proc


# 2. Errors never echo file bytes ----------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b"root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n",  # /etc/shadow's shape
    b"AB\x00\x00\x00\x00\x00\x00secretsecret",  # a "header length" of 16961 that fits the file... not quite
    struct.pack("<Q", 12) + b"\xffsecret\xfe\xfd\xfc\xfb",  # a header that is not UTF-8
    struct.pack("<Q", 10) + b"[1, 2, 3]",  # JSON, but not an object
])
def test_error_on_a_non_safetensors_file_never_echoes_its_bytes(tmp_path, content):
    src = tmp_path / "shadow"
    src.write_bytes(content)
    n = struct.unpack("<Q", content[:8])[0]
    for args in (("quantize", src, tmp_path / "o.safetensors"), ("inspect", src)):
        out = run_cli(*args)
        one_line_error(out)
        message = out.stderr.replace(str(src), "")
        for secret in ("root", "secret", str(n), "0xff", "\\xff", "ff"):
            assert secret not in message, message
    assert not (tmp_path / "o.safetensors").exists()


# 3. Output permissions -------------------------------------------------------------------------

def test_outputs_follow_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path):
    src = tmp_path / "m.safetensors"
    write_safetensors(src, small_model())
    for umask, mode in ((0o077, 0o600), (0o002, 0o664), (0o022, 0o644)):
        dst = tmp_path / f"q{umask:o}.safetensors"
        assert run_cli("quantize", src, dst, umask=umask).returncode == 0
        assert os.stat(dst).st_mode & 0o777 == mode, (oct(umask), oct(os.stat(dst).st_mode))
        back = tmp_path / f"b{umask:o}.safetensors"
        assert run_cli("dequantize", dst, back, umask=umask).returncode == 0
        assert os.stat(back).st_mode & 0o777 == mode
    private = tmp_path / "private.safetensors"
    private.write_bytes(b"old")
    private.chmod(0o600)
    for fmt in ("safetensors", "arrow"):
        assert run_cli("quantize", src, private, "--force", "--format", fmt, "--force-format", umask=0o022).returncode == 0
        assert os.stat(private).st_mode & 0o777 == 0o600
    assert not debris(tmp_path)


# 4. Names that are not text, names that rewrite the terminal ----------------------------------

def test_name_with_a_lone_surrogate_is_refused_when_reading(tmp_path):
    src = tmp_path / "m.safetensors"
    raw = (b'{"ok\\ud800":{"dtype":"F32","shape":[2,128],"data_offsets":[0,1024]}}')
    src.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(1024))
    for args in (("quantize", src, tmp_path / "q.safetensors"), ("inspect", src),
                 ("report", src, src)):
        one_line_error(run_cli(*args), "not valid Unicode text", "ok\\ud800")
    meta = tmp_path / "meta.safetensors"
    raw = b'{"__metadata__":{"k":"\\udfff"}}'
    meta.write_bytes(struct.pack("<Q", len(raw)) + raw)
    one_line_error(run_cli("inspect", meta), "not valid Unicode text")
    assert not (tmp_path / "q.safetensors").exists()


# 5. Source == destination ------------------------------------------------------------------------

def test_destination_that_is_the_source_is_refused_even_with_force(tmp_path):
    src = tmp_path / "m.safetensors"
    write_safetensors(src, small_model())
    original = src.read_bytes()
    os.link(src, tmp_path / "hard.safetensors")
    os.symlink(src, tmp_path / "soft.safetensors")
    (tmp_path / "dir").mkdir()
    os.symlink(src, tmp_path / "dir" / "model.safetensors")
    for dst in (src, tmp_path / "hard.safetensors", tmp_path / "soft.safetensors", tmp_path / "dir" / "model.safetensors"):
        for extra in ((), ("--force",), ("--force", "--format", "arrow", "--force-format")):
            one_line_error(run_cli("quantize", src, dst, *extra), "same file as the input")
            one_line_error(run_cli("quantize", tmp_path / "dir", dst, *extra), "same file as the input")
    assert src.read_bytes() == original
    # A sharded model: neither a shard nor the index may be the output.
    model = tmp_path / "sharded"
    model.mkdir()
    write_safetensors(model / "s1.safetensors", small_model())
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "s1.safetensors" for n in small_model()}}))
    index = (model / "model.safetensors.index.json").read_bytes()
    for dst in (model / "s1.safetensors", model / "model.safetensors.index.json"):
        one_line_error(run_cli("quantize", model, dst, "--force"), "same file as the input")
    assert (model / "model.safetensors.index.json").read_bytes() == index
    q = tmp_path / "q.safetensors"
    assert run_cli("quantize", src, q).returncode == 0
    q_bytes = q.read_bytes()
    one_line_error(run_cli("dequantize", q, q, "--force"), "same file as the input")
    assert q.read_bytes() == q_bytes and not debris(tmp_path)


# 9. Outputs pyquant cannot read back -------------------------------------------------------------

def test_output_header_over_the_safetensors_limit_is_refused_before_writing(tmp_path):
    # 40,000 tensors with 1,000-character names: a 43 MB input header, whose
    # output (three tensors per quantized one) would pass the 100 MB limit.
    src, dst = tmp_path / "many.safetensors", tmp_path / "q.safetensors"
    row = np.ones((1, 32), np.float32)
    write_safetensors(src, {f"{i:06d}." + "x" * 993: row for i in range(40_000)})
    t0 = time.monotonic()
    out = run_cli("quantize", src, dst, "--group-size", "32")
    one_line_error(out, "over the 100000000-byte safetensors limit", "120000 tensors")
    assert not dst.exists() and not debris(tmp_path)
    assert time.monotonic() - t0 < 60


def header_size(path):
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def test_many_long_names_do_not_make_the_output_header_4x_the_input(tmp_path):
    # Each quantized tensor needs three stored tensors (codes, scales, mins),
    # so three names; the metadata no longer repeats each name a fourth time.
    src, dst = tmp_path / "many.safetensors", tmp_path / "q.safetensors"
    tensors = {f"{i:05d}." + "x" * 994: np.ones((1, 32), np.float32) for i in range(2000)}
    tensors.update({f"{i:05d}.eight." + "y" * 988: np.ones((1, 32), np.float32) for i in range(100)})
    write_safetensors(src, tensors)
    out = run_cli("quantize", src, dst, "--group-size", "32", "--bits-for", "eight=8", "--quiet")
    assert out.returncode == 0, out.stderr
    ratio = header_size(dst) / header_size(src)
    assert ratio < 3.2, ratio  # was 4.1
    import safetensors

    with safetensors.safe_open(str(dst), framework="numpy") as f:  # the reference reader reads it
        assert len(f.keys()) == 3 * len(tensors)
    loaded = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import pyquant
        q = pyquant.load_quantized({str(dst)!r})
        print(len(q), sorted({{(t.bits, t.group_size, t.shape) for t in q.values()}}))
    """)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert loaded.stdout.split("\n")[0] == "2100 [(4, 32, (1, 32)), (8, 32, (1, 32))]", loaded.stdout + loaded.stderr


# 10. Temporary files after a kill ----------------------------------------------------------------

@pytest.mark.parametrize("fallback", [False, True], ids=["o_tmpfile", "named_temp"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path, sig, fallback):
    src, dst = tmp_path / "big.safetensors", tmp_path / "q.safetensors"
    big_model(src)
    proc = start_and_wait_for_output(("quantize", src, dst), tmp_path, fallback)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig and err == f"pyquant: terminated by {sig.name}\n", (proc.returncode, err)
    assert not dst.exists() and not debris(tmp_path)


def test_sigkill_during_a_write_leaves_no_temp_file(tmp_path):
    src, dst = tmp_path / "big.safetensors", tmp_path / "q.safetensors"
    big_model(src)
    proc = start_and_wait_for_output(("quantize", src, dst), tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists() and not debris(tmp_path)  # O_TMPFILE: an unnamed file dies with the process


def test_sigkill_without_o_tmpfile_leaves_a_recognisable_temp_file_the_next_run_removes(tmp_path):
    src, dst = tmp_path / "big.safetensors", tmp_path / "q.safetensors"
    big_model(src)
    proc = start_and_wait_for_output(("quantize", src, dst), tmp_path, fallback=True)
    proc.kill()
    proc.communicate(timeout=60)
    left = debris(tmp_path)
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    assert len(left) == 1 and left[0].startswith(f".pyquant-{host}-{proc.pid}-"), left
    # A temp file of a live process (this one) is not touched, nor one of another host.
    mine = tmp_path / f".pyquant-{host}-{os.getpid()}-abc.tmp"
    other = tmp_path / f".pyquant-otherhost-{proc.pid}-abc.tmp"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    out = run_cli("quantize", src, tmp_path / "q2.safetensors", "--bits", "8")
    assert out.returncode == 0, out.stderr
    assert debris(tmp_path) == sorted([mine.name, other.name])


# 11. Races on the destination --------------------------------------------------------------------

def test_dangling_symlink_at_the_destination_is_not_replaced_without_force(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    write_safetensors(src, small_model())
    os.symlink(tmp_path / "nowhere", dst)
    one_line_error(run_cli("quantize", src, dst), "already exists")
    assert os.path.islink(dst) and not (tmp_path / "nowhere").exists()
    assert run_cli("quantize", src, dst, "--force").returncode == 0
    assert not os.path.islink(dst) and not debris(tmp_path)


@pytest.mark.parametrize("fallback", [False, True], ids=["o_tmpfile", "named_temp"])
def test_two_runs_racing_for_one_new_path_do_not_both_succeed(tmp_path, fallback):
    src, dst = tmp_path / "big.safetensors", tmp_path / "q.safetensors"
    big_model(src, n=8)
    # Both runs get past the "exists?" check (their outputs are open) before either finishes.
    first = start_and_wait_for_output(("quantize", src, dst, "--bits", "4"), tmp_path, fallback)
    first.send_signal(signal.SIGSTOP)
    second = start_and_wait_for_output(("quantize", src, dst, "--bits", "8"), tmp_path, fallback)
    first.send_signal(signal.SIGCONT)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    loser = next(err for rc, err in results if rc == 1)
    assert "already exists" in loser and loser.count("\n") == 1
    assert run_cli("inspect", dst).returncode == 0 and not debris(tmp_path)


# 12. A source truncated while it is read --------------------------------------------------------

def test_source_truncated_while_read_leaves_no_output_and_no_temp_file(tmp_path):
    src, dst = tmp_path / "big.safetensors", tmp_path / "q.safetensors"
    big_model(src, n=16)
    proc = start_and_wait_for_output(("quantize", src, dst), tmp_path, fallback=True)
    os.truncate(src, os.path.getsize(src) // 4)
    _, err = proc.communicate(timeout=60)
    # Either the guard saw the file shrink (a one-line error), or a mapped page
    # past the new end was touched first (SIGBUS): never an output, and the
    # named temp file of the killed process is removed by the next run.
    if proc.returncode == 1:
        assert "shrank" in err and err.count("\n") == 1, err
    else:
        assert proc.returncode == -signal.SIGBUS, (proc.returncode, err)
    assert not dst.exists()
    write_safetensors(tmp_path / "small.safetensors", small_model())
    assert run_cli("quantize", tmp_path / "small.safetensors", tmp_path / "s.safetensors").returncode == 0
    assert not debris(tmp_path)


def gguf_model(path, n=4, rows=256, cols=1024):
    """A GGUF file of ``n`` float32 matrices named as big_model names them (gguf-py writes it)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    rng = np.random.default_rng(0)
    for i in range(n):
        w.add_tensor(f"layer.{i}.weight", rng.normal(size=(rows, cols)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("reader", ["safetensors_io.SafetensorsFile.array", "formats.ArrowQuantizedCheckpoint.get",
                                    "gguf_file.GGUFFile.raw"], ids=["safetensors", "arrow checkpoint", "gguf"])
def test_truncated_while_read_is_a_one_line_error_not_sigbus(tmp_path, reader):
    # The guard: tensors past the file's current end are refused before their pages are touched.
    src = tmp_path / "m.safetensors"
    big_model(src, n=4, rows=256, cols=1024)
    if reader.startswith("formats"):  # a pyquant checkpoint, dequantized
        src = tmp_path / "q.arrow"
        command = ["dequantize", str(src), str(tmp_path / "out")]
        assert run_cli("quantize", tmp_path / "m.safetensors", src, "--format", "arrow", "--quiet").returncode == 0
    elif reader.startswith("gguf"):  # GGUF in, GGUF out
        src = gguf_model(tmp_path / "m.gguf")
        command = ["quantize", str(src), str(tmp_path / "out"), "--type", "Q4_0"]
    else:
        command = ["quantize", str(src), str(tmp_path / "out")]
    module, cls, method = reader.split(".")
    code = FALLBACK + textwrap.dedent(f"""
        import os, sys
        from pyquant import {module}
        real = {module}.{cls}.{method}
        def patched(self, tensor, *rest):
            if getattr(tensor, "name", tensor) == "layer.2.weight":
                os.truncate({str(src)!r}, 4096)  # another program truncates it midway
            return real(self, tensor, *rest)
        {module}.{cls}.{method} = patched
        from pyquant.cli import main
        sys.exit(main({command!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(out, "shrank from", "while being read")
    assert not (tmp_path / "out").exists() and not debris(tmp_path)


# 1. A sharded model's index can point anywhere ---------------------------------------------------

def sharded(directory, weight_map, shards=None):
    """A model directory: shard files (name -> tensors) and an index (given as is)."""
    directory.mkdir(exist_ok=True)
    for shard, tensors in (shards or {}).items():
        write_safetensors(directory / shard, tensors)
    (directory / "model.safetensors.index.json").write_text(
        weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def test_index_entry_outside_model_dir_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    write_safetensors(secret / "private.safetensors", {"stolen.weight": RNG.normal(size=(4, 128)).astype(np.float32)})
    inside = {"ok.weight": RNG.normal(size=(4, 128)).astype(np.float32)}
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "a.safetensors", inside)
    os.symlink(secret / "private.safetensors", model / "link.safetensors")
    os.symlink(secret, model / "subdir")
    for entry in ("../secret/private.safetensors", str(secret / "private.safetensors"),
                  "link.safetensors", "subdir/private.safetensors"):
        sharded(model, {"ok.weight": "a.safetensors", "stolen.weight": entry})
        for args in (("quantize", model, tmp_path / "q.safetensors"), ("inspect", model)):
            one_line_error(run_cli(*args), "weight_map entry 'stolen.weight'", "outside the model directory")
        assert not (tmp_path / "q.safetensors").exists()
    # A symlink that stays inside the directory is fine.
    os.symlink("a.safetensors", model / "alias.safetensors")
    sharded(model, {"ok.weight": "alias.safetensors"})
    assert run_cli("quantize", model, tmp_path / "q.safetensors").returncode == 0


def test_index_entry_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "pipe.safetensors")
    sharded(model, {"w": "pipe.safetensors"})
    one_line_error(run_cli("quantize", model, tmp_path / "q.safetensors", timeout=60), "not a regular file")
    # The same for a FIFO given directly, or as the index itself.
    one_line_error(run_cli("inspect", model / "pipe.safetensors", timeout=60), "not a regular file")
    other = tmp_path / "other"
    other.mkdir()
    os.mkfifo(other / "model.safetensors.index.json")
    one_line_error(run_cli("quantize", other, tmp_path / "q.safetensors", timeout=60), "not a regular file")


@pytest.mark.parametrize("index,expect", [
    ("{", "not valid JSON"),
    ("[1, 2]", "weight_map"),
    ('{"weight_map": ["a.safetensors"]}', "weight_map"),
    ('{"weight_map": {"w": 5}}', "must be a non-empty file name"),
    ('{"weight_map": {"w": ["a.safetensors"]}}', "must be a non-empty file name"),
    ('{"weight_map": {"w": "a.safetensors\\u0000.txt"}}', "must be a non-empty file name"),
    ('{"weight_map": {"w": ""}}', "must be a non-empty file name"),
    ('{"weight_map": {}}', "empty"),
    ('{"weight_map": {"w": "missing.safetensors"}}', "No such file"),
    ('{"weight_map": {"w\\ud800": "a.safetensors"}}', "not valid Unicode text"),
])
def test_malformed_index_is_a_checkpoint_error_not_a_traceback(tmp_path, index, expect):
    model = sharded(tmp_path / "model", index, {"a.safetensors": small_model()})
    one_line_error(run_cli("quantize", model, tmp_path / "q.safetensors"), expect)
    one_line_error(run_cli("inspect", model), expect)


# 13. Many shards -------------------------------------------------------------------------------

def test_model_with_more_shards_than_open_files_allowed_works(tmp_path):
    model = tmp_path / "model"
    weight_map, n = {}, 1100
    for i in range(n):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(model / name if model.exists() else (model.mkdir() or model / name),
                          {f"layer.{i}.weight": np.full((2, 32), i, np.float32)})
        weight_map[f"layer.{i}.weight"] = name
    sharded(model, weight_map)
    q = tmp_path / "q.safetensors"
    # At most 256 descriptors: opening every shard at once would fail with "Too many open files".
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    for args in (("quantize", model, q, "--group-size", "32", "--quiet"), ("inspect", model), ("report", model, q)):
        out = subprocess.run([sys.executable, "-m", "pyquant.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600, preexec_fn=limit)
        assert out.returncode == 0, out.stderr
    assert f"{n} quantized" in out.stdout


# 6. Invalid options ----------------------------------------------------------------------------

@pytest.mark.parametrize("options,expect", [
    (("--group-size", "0"), "group size must be a positive integer"),
    (("--group-size", "-1"), "group size must be a positive integer"),
    (("--group-size", "7"), "group size 7 with 4-bit codes does not fill whole bytes"),
    (("--group-size", "6", "--bits", "2"), "group size 6 with 2-bit codes"),
    (("--bits", "5"), "bits must be 2, 3, 4 or 8, got 5"),
    (("--bits-for", "q=5"), "bits must be 2, 3, 4 or 8, got 5"),
    (("--bits-for", "q=2", "--group-size", "2"), "group size 2 with 2-bit codes"),
])
def test_invalid_option_is_a_usage_error_before_any_work(tmp_path, options, expect):
    # The input does not even exist: options are checked first.
    out = run_cli("quantize", tmp_path / "missing.safetensors", tmp_path / "q.safetensors", *options)
    assert out.returncode == 2 and expect in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not os.listdir(tmp_path)


def test_run_that_quantizes_nothing_fails_unless_allow_empty(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    write_safetensors(src, small_model())  # last axes 128, 256 and a 1-D bias
    out = run_cli("quantize", src, dst, "--group-size", "100")
    one_line_error(out, "nothing to quantize: all 3 tensors would be carried over", "--allow-empty")
    assert not dst.exists()
    out = run_cli("quantize", src, dst, "--group-size", "100", "--allow-empty")
    assert out.returncode == 0 and "quantized 0 tensors, kept 3" in out.stdout
    assert "kept a.weight: does not fit" in out.stdout and "kept b.bias: 1-D (bias or norm)" in out.stdout


def test_carried_over_tensors_are_reported_with_their_reason(tmp_path):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    tensors = small_model()
    tensors["odd.weight"] = RNG.normal(size=(4, 100)).astype(np.float32)
    tensors["ids"] = np.arange(8, dtype=np.int64).reshape(2, 4)
    write_safetensors(src, tensors)
    out = run_cli("quantize", src, dst, "--skip", "^b\\.weight$")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "kept b.weight: matches --skip" in lines and "kept b.bias: 1-D (bias or norm)" in lines
    assert any(line.startswith("kept odd.weight: does not fit:") for line in lines)
    assert any(line.startswith("kept ids: dtype I64 is not floating point") for line in lines)
    assert "quantized 1 tensors, kept 4" in lines[-1]
    assert "kept" not in run_cli("quantize", src, dst, "--force", "--quiet").stdout


# 7. Quantized files as inputs ------------------------------------------------------------------

def test_pyquant_or_gguf_output_as_input_is_refused(tmp_path):
    src, q, qa = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "q.arrow"
    write_safetensors(src, small_model())
    assert run_cli("quantize", src, q).returncode == 0
    assert run_cli("quantize", src, qa, "--format", "arrow").returncode == 0
    one_line_error(run_cli("quantize", q, tmp_path / "qq.safetensors"), "already a pyquant checkpoint")
    one_line_error(run_cli("quantize", qa, tmp_path / "qq.safetensors"), "an Arrow IPC file")
    # Metadata stripped: the .codes/.scales/.mins layout still gives it away.
    import safetensors.numpy

    stripped = tmp_path / "stripped.safetensors"
    safetensors.numpy.save_file(safetensors.numpy.load_file(str(q)), str(stripped))
    one_line_error(run_cli("quantize", stripped, tmp_path / "qq.safetensors"), "looks like a pyquant checkpoint")
    # In a sharded model too.
    model = sharded(tmp_path / "model", {"a.weight": "../q.safetensors"})
    (model / "q.safetensors").write_bytes(q.read_bytes())
    sharded(model, {"a.weight.codes": "q.safetensors"})
    one_line_error(run_cli("quantize", model, tmp_path / "qq.safetensors"), "already a pyquant checkpoint")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    one_line_error(run_cli("quantize", gguf, tmp_path / "qq.safetensors"), "a GGUF file")
    assert not (tmp_path / "qq.safetensors").exists()


# 4. Names printed to a terminal ----------------------------------------------------------------

def test_escape_sequences_in_names_are_printed_escaped(tmp_path):
    evil = "x\x1b]0;pwned\x07\x1b[2J\nfake line\u202e"
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    write_safetensors(src, {evil + ".weight": RNG.normal(size=(4, 128)).astype(np.float32),
                            evil + ".bias": np.ones(4, np.float32)})
    outputs = [run_cli("quantize", src, dst), run_cli("inspect", dst), run_cli("inspect", src),
               run_cli("report", src, dst)]
    for out in outputs:
        assert out.returncode == 0, out.stderr
        text = out.stdout + out.stderr
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\nfake line" not in text
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\nfake line\\u202e" in text
    # JSON output stays exact (JSON escapes control characters itself).
    rep = json.loads(run_cli("report", src, dst, "--json").stdout)
    assert {t["name"] for t in rep["tensors"]} == {evil + ".weight", evil + ".bias"}
    # Error messages too.
    out = run_cli("quantize", src, dst)
    assert "\x1b" not in out.stderr
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, {evil: np.full((4, 128), np.nan, np.float32)})
    out = run_cli("quantize", bad, tmp_path / "b.safetensors")
    one_line_error(out, "NaN")
    assert "\x1b" not in out.stderr


# 8. Tampered or inconsistent quantized checkpoints ---------------------------------------------

def read_st(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def tampered_safetensors(tmp_path, q):
    """name -> path of pyquant safetensors checkpoints damaged one way each,
    in format 2 (written today) and format 1 (read for older files)."""
    header, data = read_st(q)
    out = {}

    def variant(name, *, meta_=None, header_=None, data_=None, raw_header=None):
        h = json.loads(json.dumps(header))
        h["__metadata__"].update(meta_ or {})
        if header_:
            header_(h)
        path = tmp_path / f"bad-{name}.safetensors"
        if raw_header is not None:
            path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + (data_ or data))
        else:
            write_st(path, h, data_ if data_ is not None else data)
        out[name] = path

    # Format 1: every quantized tensor listed with dtype, shape, bits, group_size.
    v1 = {"a.weight": {"dtype": "float32", "shape": [8, 128], "bits": 4, "group_size": 128},
          "b.weight": {"dtype": "float32", "shape": [4, 256], "bits": 4, "group_size": 128}}

    def edit_v1(name, **fields):
        t = json.loads(json.dumps(v1))
        t["a.weight"].update(fields)
        variant("v1-" + name, meta_={"pyquant.format_version": "1", "pyquant.tensors": json.dumps(t)})

    edit_v1("shape_disagrees", shape=[16, 128])
    edit_v1("shape_not_a_list", shape="8x128")
    edit_v1("shape_empty", shape=[])
    edit_v1("bits_5", bits=5)
    edit_v1("bits_string", bits="4")
    edit_v1("bits_bool", bits=True)
    edit_v1("group_zero", group_size=0)
    edit_v1("group_disagrees", group_size=64)
    edit_v1("group_null", group_size=None)
    edit_v1("dtype_int", dtype="int8")
    edit_v1("dtype_list", dtype=["float32"])
    variant("v1-entry_missing_keys", meta_={"pyquant.format_version": "1",
                                            "pyquant.tensors": json.dumps({**v1, "a.weight": {}})})
    variant("v1-entry_not_object", meta_={"pyquant.format_version": "1", "pyquant.tensors": '{"a.weight": 5}'})
    # Format 2: defaults in the metadata, exceptions listed as [dtype, bits, group_size].
    variant("dtype_int", meta_={"pyquant.dtype": "int8"})
    variant("bits_3", meta_={"pyquant.bits": "3"})
    variant("bits_text", meta_={"pyquant.bits": "four"})
    variant("group_zero", meta_={"pyquant.group_size": "0"})
    variant("group_disagrees", meta_={"pyquant.group_size": "64"})
    variant("group_text", meta_={"pyquant.group_size": "-1"})
    variant("exception_bits_disagree", meta_={"pyquant.tensors": '{"a.weight": ["float32", 8, 128]}'})
    variant("exception_not_a_list", meta_={"pyquant.tensors": '{"a.weight": {"bits": 4}}'})
    variant("exception_bits_string", meta_={"pyquant.tensors": '{"a.weight": ["float32", "4", 128]}'})
    variant("exception_without_parts", meta_={"pyquant.tensors": '{"ghost": ["float32", 4, 128]}'})
    variant("scales_shape_disagrees", header_=lambda h: h["a.weight.scales"].update(shape=[4, 2]))
    variant("tensors_list", meta_={"pyquant.tensors": "[1, 2]"})
    variant("tensors_not_json", meta_={"pyquant.tensors": "{not json"})
    variant("tensors_missing", header_=lambda h: h["__metadata__"].pop("pyquant.tensors"))
    variant("names_missing_part", meta_={"pyquant.format_version": "1", "pyquant.tensors": json.dumps(v1)},
            header_=lambda h: h.pop("a.weight.mins"))
    variant("kept_and_quantized", header_=lambda h: h.update({"a.weight": h["b.bias"]}))
    variant("source_metadata_int", meta_={"pyquant.source_metadata": '{"origin": 1}'})
    variant("source_metadata_list", meta_={"pyquant.source_metadata": "[]"})
    variant("source_metadata_not_json", meta_={"pyquant.source_metadata": "{"})
    variant("source_metadata_surrogate", meta_={"pyquant.source_metadata": '{"k": "\\ud800"}'})
    variant("format_version_3", meta_={"pyquant.format_version": "3"})
    begin = header["a.weight.scales"]["data_offsets"][0]
    for name, value in (("scale_nan", np.nan), ("scale_inf", np.inf), ("scale_negative", -1.0),
                        ("scale_overflows", 3e38)):
        d = bytearray(data)
        d[begin:begin + 4] = np.float32(value).tobytes()
        variant(name, data_=bytes(d))
    mins = header["a.weight.mins"]["data_offsets"][0]
    d = bytearray(data)
    d[mins:mins + 4] = np.float32(-np.inf).tobytes()
    variant("min_inf", data_=bytes(d))
    raw = json.dumps(header).encode()
    dup = raw.replace(b'"b.bias":', b'"b.bias": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "b.bias":', 1)
    variant("duplicate_name", raw_header=dup + b" " * (-len(dup) % 8))
    return out


def tampered_arrow(tmp_path, qa):
    import pyarrow as pa
    import pyarrow.ipc

    table = pa.ipc.open_file(pa.memory_map(str(qa))).read_all()
    out = {}

    def variant(name, t, schema=None):
        path = tmp_path / f"bad-{name}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema or t.schema) as w:
            w.write_table(t)
        out[name] = path

    def column(name, col, values, typ=None):
        i = table.schema.get_field_index(col)
        field = table.schema.field(i)
        typ = typ or field.type
        return table.set_column(i, pa.field(col, typ, nullable=field.nullable), pa.array(values, typ))

    rows = table.to_pylist()
    names = [r["name"] for r in rows]
    variant("duplicate_name", column("duplicate", "name", [names[0]] * len(names)))
    variant("missing_column", table.drop_columns(["group_size"]).replace_schema_metadata(table.schema.metadata))
    variant("bits_int32", column("bits32", "bits", [r["bits"] for r in rows], pa.int32()))
    variant("bits_3", column("bits3", "bits", [3 if r["bits"] else 0 for r in rows]))
    variant("dtype_unknown", column("dtype", "dtype", ["complex64"] * len(rows)))
    variant("shape_disagrees", column("shape", "shape", [[d * 2 for d in r["shape"]] for r in rows]))
    variant("group_disagrees", column("group", "group_size", [64 if r["bits"] else 0 for r in rows]))
    variant("scales_short", column("scales", "scales", [r["scales"][:-1] for r in rows]))
    variant("scales_nan", column("nan", "scales", [[float("nan")] * len(r["scales"]) for r in rows]))
    nullable = pa.schema([pa.field(f.name, f.type, nullable=True) for f in table.schema], metadata=table.schema.metadata)
    with_null = table.cast(nullable).set_column(0, pa.field("name", pa.string(), nullable=True),
                                                pa.array([None] + names[1:], pa.string()))
    variant("null_name", with_null)
    meta = dict(table.schema.metadata)
    meta[b"pyquant.source_metadata"] = b'{"x": 1}'
    variant("source_metadata_int", table.replace_schema_metadata(meta))
    cut = tmp_path / "bad-truncated.arrow"
    cut.write_bytes(qa.read_bytes()[: qa.stat().st_size // 2])
    out["truncated"] = cut
    garbage = tmp_path / "bad-garbage.arrow"
    garbage.write_bytes(b"ARROW1\x00\x00" + bytes(range(256)) * 4)
    out["garbage"] = garbage
    return out


def test_tampered_quantized_checkpoints_are_one_line_errors_never_tracebacks(tmp_path):
    src, q, qa = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "q.arrow"
    write_safetensors(src, small_model(), {"origin": "test"})
    assert run_cli("quantize", src, q, "--bits", "4", "--group-size", "128").returncode == 0
    assert run_cli("quantize", src, qa, "--format", "arrow").returncode == 0
    corpus = {**{f"st-{k}": v for k, v in tampered_safetensors(tmp_path, q).items()},
              **{f"arrow-{k}": v for k, v in tampered_arrow(tmp_path, qa).items()}}
    assert len(corpus) >= 50
    for name, path in corpus.items():
        back = tmp_path / "back.safetensors"
        # dequantize reads every value: a damaged file must never give output and exit 0.
        out = run_cli("dequantize", path, back)
        one_line_error(out)
        assert not back.exists(), name
        for args in (("inspect", path), ("report", src, path)):
            out = run_cli(*args)
            assert out.returncode in (0, 1) and "Traceback" not in out.stderr, (name, args, out.stderr)
            assert out.returncode == 0 or out.stderr.count("\n") == 1, (name, out.stderr)
            assert "internal error" not in out.stderr, (name, out.stderr)
    # The good files still work, and so does a format 1 file.
    header, data = read_st(q)
    header["__metadata__"].update({"pyquant.format_version": "1", "pyquant.tensors": json.dumps(
        {"a.weight": {"dtype": "float32", "shape": [8, 128], "bits": 4, "group_size": 128},
         "b.weight": {"dtype": "float32", "shape": [4, 256], "bits": 4, "group_size": 128}})})
    v1 = tmp_path / "v1.safetensors"
    write_st(v1, header, data)
    assert run_cli("report", src, v1).returncode == 0
    for good in (q, qa, v1):
        assert run_cli("dequantize", good, tmp_path / "ok.safetensors", "--force").returncode == 0


# 13. Memory: Arrow checkpoints and report --------------------------------------------------------

PEAK = textwrap.dedent("""
    import sys
    import pyarrow, pyarrow.compute, pyarrow.ipc  # imported up front: their size is not the file's
    try:  # pyarrow's first to_numpy imports pandas when it is installed: a fixed cost, not the file's
        import pandas
    except ImportError:
        pass
    from pyquant import _peak_rss, pipeline, report
    from pyquant.cli import main
    _peak_rss.reset(); before = _peak_rss.peak_bytes()
    code = main(sys.argv[1:])
    print(_peak_rss.peak_bytes() - before)
    sys.exit(code)
""")


def peak_growth(*args):
    out = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_arrow_dequantize_and_report_memory_does_not_grow_with_the_file(tmp_path):
    # 16 tensors of 16 MiB: 8 carried over (raw rows), 8 quantized at 8 bits.
    src, qa, qs = tmp_path / "m.safetensors", tmp_path / "q.arrow", tmp_path / "q.safetensors"
    big_model(src, n=16)
    for dst, fmt in ((qa, "arrow"), (qs, "safetensors")):
        out = run_cli("quantize", src, dst, "--format", fmt, "--bits", "8", "--skip", r"^layer\.[0-7]\.", "--quiet")
        assert out.returncode == 0, out.stderr
    tensor = 16 * 2**20
    assert qa.stat().st_size > 9 * tensor
    growth = {
        "dequantize arrow": peak_growth("dequantize", qa, tmp_path / "d1.safetensors", "--quiet"),
        "report arrow": peak_growth("report", src, qa),
        "dequantize safetensors": peak_growth("dequantize", qs, tmp_path / "d2.safetensors", "--quiet"),
        "report safetensors": peak_growth("report", src, qs),
    }
    # About one tensor and its result, never the file (162 MiB) or float64 copies (4x a tensor each).
    for what, g in growth.items():
        assert g < 4 * tensor, (what, {k: v / 2**20 for k, v in growth.items()})

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


def run_cli(*args, umask=None, **kw):
    return subprocess.run([sys.executable, "-m", "pyquant.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
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
        assert run_cli("quantize", src, private, "--force", "--format", fmt, umask=0o022).returncode == 0
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
        for extra in ((), ("--force",), ("--force", "--format", "arrow")):
            one_line_error(run_cli("quantize", src, dst, *extra), "same file as the input")
            one_line_error(run_cli("quantize", tmp_path / "dir", dst, *extra), "same file as the input")
    assert src.read_bytes() == original
    q = tmp_path / "q.safetensors"
    assert run_cli("quantize", src, q).returncode == 0
    q_bytes = q.read_bytes()
    one_line_error(run_cli("dequantize", q, q, "--force"), "same file as the input")
    assert q.read_bytes() == q_bytes and not debris(tmp_path)


# 9. Outputs pyquant cannot read back -------------------------------------------------------------

def test_output_header_over_the_safetensors_limit_is_refused_before_writing(tmp_path):
    # 30,000 tensors with 1,000-character names: a 33 MB input header, whose
    # output (three tensors per quantized one) would pass the 100 MB limit.
    src, dst = tmp_path / "many.safetensors", tmp_path / "q.safetensors"
    row = np.ones((1, 32), np.float32)
    write_safetensors(src, {f"{i:06d}." + "x" * 993: row for i in range(30_000)})
    t0 = time.monotonic()
    out = run_cli("quantize", src, dst, "--group-size", "32")
    one_line_error(out, "over the 100000000-byte safetensors limit", "90000 tensors")
    assert not dst.exists() and not debris(tmp_path)
    assert time.monotonic() - t0 < 60


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


def test_truncated_source_is_a_one_line_error_not_sigbus(tmp_path):
    # The guard: tensors past the file's current end are refused before their pages are touched.
    src = tmp_path / "m.safetensors"
    big_model(src, n=4, rows=256, cols=1024)
    code = FALLBACK + textwrap.dedent(f"""
        import os, sys
        from pyquant import safetensors_io
        real = safetensors_io.SafetensorsFile.array
        def array(self, name):
            if name == "layer.2.weight":
                os.truncate({str(src)!r}, 4096)  # another program truncates it midway
            return real(self, name)
        safetensors_io.SafetensorsFile.array = array
        from pyquant.cli import main
        sys.exit(main(["quantize", {str(src)!r}, {str(tmp_path / "q.safetensors")!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(out, "shrank from", "while being read")
    assert not (tmp_path / "q.safetensors").exists() and not debris(tmp_path)

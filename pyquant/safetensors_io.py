"""Reading and writing safetensors files without loading them into memory.

Reading memory-maps the file and hands out numpy views of each tensor (no
copy); the header is validated completely before any tensor is returned.
Writing goes to a temporary file in the destination's directory that is
renamed over the destination only when everything succeeded, so a failure
never leaves a half-written file. Tensors are written at offsets computed up
front, so they can be produced one at a time, in any order.

Format: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import stat
import struct
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ._atomic import atomic_output
from ._text import quoted
from .dtypes import ALL
from .errors import CheckpointError

# Indexes of the one dtype table (pyquant/dtypes.py): safetensors code ->
# numpy dtype (little-endian, as the format specifies), and name -> code.
DTYPES: dict[str, np.dtype[Any]] = {d.safetensors: d.numpy for d in ALL}
CODE_OF: dict[str, str] = {d.name: d.safetensors for d in ALL}
# The reference implementation's limit (safetensors' MAX_HEADER_SIZE): both
# for reading, and for writing, so every output loads with the safetensors package.
MAX_HEADER = 100_000_000


# Files that are not safetensors but are easily handed to pyquant by mistake.
KNOWN_MAGIC = {
    b"GGUF": "a GGUF file (already quantized; pyquant reads safetensors)",
    b"ARROW1": "an Arrow IPC file (a pyquant Arrow checkpoint is already quantized; "
               "`pyquant dequantize` reads it)",
    b"PK\x03\x04": "a zip archive (a PyTorch .bin/.pt checkpoint? convert it to safetensors first)",
    b"\x80\x02": "a Python pickle (a PyTorch checkpoint? convert it to safetensors first)",
    b"\x89HDF": "an HDF5 file (a Keras checkpoint? convert it to safetensors first)",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # offsets relative to the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path``, which must be a regular file.
    O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer;
    anything but a regular file is refused before a byte is read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a safetensors file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file (a FIFO, device or socket cannot be a model)")
    return fd, st


def check_not_shrunk(fd: int, size: int, path: str) -> None:
    """CheckpointError if the file behind ``fd`` is now shorter than ``size``.
    Touching mapped pages past the end of a file that shrank kills the
    process with SIGBUS; called before each tensor is read, this catches a
    truncation that happened before (not one racing the read)."""
    now = os.fstat(fd).st_size
    if now < size:
        raise CheckpointError(f"{path}: the file shrank from {size} to {now} bytes while being read "
                              "(another program is changing it)")


class SafetensorsFile:
    """A memory-mapped, validated safetensors file. Use as a context manager.

    The file is opened (and mapped) on demand: :meth:`close` gives back its
    descriptor, and the next :meth:`array` opens it again, checking it is
    still the same file. So a checkpoint of thousands of shards never holds
    more than a few descriptors (see :class:`Checkpoint`)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._file: Any = None
        self._mmap: mmap.mmap | None = None
        self._open()
        try:
            self.tensors, self.metadata, self.data_start = _parse_header(self._file, self.size, self.path)
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        fd, st = open_regular(self.path)
        self._file = os.fdopen(fd, "rb")
        identity = (st.st_dev, st.st_ino, st.st_size)
        if getattr(self, "_identity", identity) != identity:
            self.close()
            raise CheckpointError(f"{self.path}: the file was replaced or changed while being read")
        self._identity = identity
        self.size = st.st_size
        if self.size:
            self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Gives back the descriptor. The mmap stays valid while numpy views
        reference it; dropping our reference lets it go once they are gone."""
        self._mmap = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def array(self, name: str) -> np.ndarray[Any, Any]:
        """A read-only numpy view of tensor ``name`` on the mapped file (no copy)."""
        info = self.tensors[name]
        dt = DTYPES[info.dtype]
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=dt)
        if self._file is None:
            self._open()
        assert self._file is not None and self._mmap is not None
        check_not_shrunk(self._file.fileno(), self.size, self.path)
        return np.frombuffer(self._mmap, dtype=dt, count=math.prod(info.shape),
                             offset=self.data_start + info.begin).reshape(info.shape)

    def release(self, name: str) -> None:
        """Tells the kernel the tensor's pages may be dropped from this process,
        so that reading a large file tensor by tensor keeps RSS bounded."""
        info = self.tensors[name]
        if self._mmap is None or info.nbytes == 0:
            return
        start = (self.data_start + info.begin) // mmap.PAGESIZE * mmap.PAGESIZE
        end = self.data_start + info.end
        with contextlib.suppress(OSError, ValueError):
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)


def _parse_header(f: Any, size: int, path: str) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    # Errors say what is wrong, never which bytes were found: pointed at any
    # file (a key, a password file), they must not reveal its content.
    if size == 0:
        raise CheckpointError(f"{path}: not a safetensors file: it is empty")
    first = f.read(8)
    for magic, kind in KNOWN_MAGIC.items():
        if first.startswith(magic):
            raise CheckpointError(f"{path}: not a safetensors file: it is {kind}")
    if all(32 <= b < 127 or b in b"\t\n\r" for b in first):
        # A real header length has zero high bytes, so never reads as text.
        raise CheckpointError(f"{path}: not a safetensors file: it starts with text (a safetensors file "
                              "starts with an 8-byte header length, then a JSON header)")
    if size < 8:
        raise CheckpointError(f"{path}: truncated: {size} bytes, a safetensors file starts with an 8-byte header length")
    (n,) = struct.unpack("<Q", first)
    if n > MAX_HEADER:
        raise CheckpointError(f"{path}: not a safetensors file (its first 8 bytes, read as the header length, "
                              f"exceed the {MAX_HEADER // 1_000_000} MB limit)")
    if 8 + n > size:
        raise CheckpointError(f"{path}: not a safetensors file, or truncated (its header length field "
                              f"points past the end of the {size}-byte file)")
    try:
        text = f.read(n).decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a safetensors file (its header is not UTF-8 text)") from None
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # JSON readers keep the last of two equal keys; a name given twice is
        # a tampered header (which tensor is meant?), not a choice to make.
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise CheckpointError(f"{path}: corrupt header: {quoted(k)} appears twice")
            out[k] = v
        return out

    try:
        header = json.loads(text, object_pairs_hook=unique)
    except CheckpointError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError: bad JSON (the message gives a position, not content), or
        # an integer of more than sys.get_int_max_str_digits() digits;
        # RecursionError: deep nesting.
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply" \
            if isinstance(exc, RecursionError) else "a number too long"
        raise CheckpointError(f"{path}: not a safetensors file, or a corrupt one: its header is not valid "
                              f"JSON ({why})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt header: expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt header: __metadata__ must map strings to strings")
    for text in (*header, *metadata, *metadata.values()):
        check_text(path, text)
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(path, name, entry, data_size)
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.nbytes)
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{path}: corrupt header: tensors {quoted(a)} and {quoted(b)} overlap")
    return tensors, metadata, 8 + n


def check_text(path: str, text: str) -> None:
    """JSON's \\u escapes can spell lone surrogates, which are not text:
    refused here, so nothing downstream fails on them (printing, writing)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{path}: corrupt header: {quoted(text)} is not valid Unicode text "
                              "(it holds a lone surrogate)") from None


def _tensor_info(path: str, name: str, entry: Any, data_size: int) -> TensorInfo:
    where = f"{path}: tensor {quoted(name)}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where}: corrupt header entry (needs dtype, shape, data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {brief(dtype)} (supported: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: corrupt shape {brief(shape)}")
    # numpy's limits: at most 64 axes, and the product of the non-zero
    # dimensions times the item size must fit in a signed 64-bit size.
    if len(shape) > 64 or math.prod(d for d in shape if d) * DTYPES[dtype].itemsize > sys.maxsize:
        raise CheckpointError(f"{where}: shape {brief(shape)} is too large for an array")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise CheckpointError(f"{where}: corrupt data_offsets {brief(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(f"{where}: corrupt data_offsets {brief(offsets)}")
    if end > data_size:
        raise CheckpointError(f"{where}: data_offsets {brief(offsets)} point past the end of the data ({data_size} bytes)")
    want = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != want:
        raise CheckpointError(f"{where}: data_offsets span {end - begin} bytes, but {dtype} {shape} needs {want}")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def brief(value: Any) -> str:
    """A header value in an error message: its repr (which escapes every
    non-printable character), at most ~80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + f"...[{len(text) - 80} more]"


MAX_OPEN_SHARDS = 16  # descriptors a sharded checkpoint keeps open at once


class Checkpoint:
    """A single safetensors file or a sharded model directory, as one mapping
    of tensor names to zero-copy views. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]):
        path = os.fspath(path)
        self.path = path
        self.files: list[SafetensorsFile] = []
        self.index: str | None = None
        self.where: dict[str, SafetensorsFile] = {}
        if os.path.isdir(path):
            index = os.path.join(path, "model.safetensors.index.json")
            single = os.path.join(path, "model.safetensors")
            if os.path.exists(index):
                shards = _read_index(index)
                self.index = index
            elif os.path.exists(single):
                shards = [(single, [])]
            else:
                raise CheckpointError(f"{path}: no model.safetensors.index.json or model.safetensors in this directory")
        else:
            shards = [(path, [])]
        self._open: dict[SafetensorsFile, None] = {}  # shards with a descriptor, least recently used first
        try:
            for shard, expected in shards:
                f = SafetensorsFile(shard)
                self.files.append(f)
                if len(shards) > 1:
                    f.close()  # opened again on demand: thousands of shards, few descriptors
                for name in f.tensors:
                    if name in self.where:
                        raise CheckpointError(f"{path}: tensor {quoted(name)} appears in two shards")
                    self.where[name] = f
                missing = sorted(n for n in expected if n not in f.tensors)
                if missing:
                    raise CheckpointError(f"{shard}: the index lists {quoted(missing[0])}, which this shard lacks")
        except BaseException:
            self.close()
            raise
        self.metadata = self.files[0].metadata if len(self.files) == 1 else {}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self.files:
            f.close()

    def names(self) -> list[str]:
        return list(self.where)

    @property
    def paths(self) -> list[str]:
        """Every file this checkpoint was read from (an output must not be one)."""
        return [self.path, *([self.index] if self.index else []), *(f.path for f in self.files)]

    def info(self, name: str) -> TensorInfo:
        return self.where[name].tensors[name]

    def array(self, name: str) -> np.ndarray[Any, Any]:
        f = self.where[name]
        self._open.pop(f, None)
        self._open[f] = None
        if len(self._open) > MAX_OPEN_SHARDS:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.close()
        return f.array(name)

    def release(self, name: str) -> None:
        self.where[name].release(name)

    @property
    def nbytes(self) -> int:
        return sum(self.info(n).nbytes for n in self.where)


def _read_index(index: str) -> list[tuple[str, list[str]]]:
    """(shard path, tensor names the index puts in it) for each shard.

    The index comes from whoever made the model: every shard it names must
    be a regular file inside the model directory once symlinks are resolved
    (no ``../``, absolute paths, or links leading out, no FIFOs)."""
    fd, _ = open_regular(index)
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_HEADER + 1)
        if len(raw) > MAX_HEADER:
            raise CheckpointError(f"{index}: index larger than {MAX_HEADER} bytes")
        doc = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{index}: cannot read the index: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{index}: malformed index (not UTF-8 text)") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{index}: malformed index (not valid JSON)") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: malformed index (needs a \"weight_map\" object of tensor name -> shard file)")
    base = os.path.realpath(os.path.dirname(os.path.abspath(index)))
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        check_text(index, name)
        where = f"{index}: weight_map entry {quoted(name)}"
        if not isinstance(shard, str) or not shard or "\0" in shard:
            raise CheckpointError(f"{where}: the shard must be a non-empty file name, got {brief(shard)}")
        check_text(index, shard)
        path = os.path.realpath(os.path.join(base, shard))
        if os.path.isabs(shard) or os.path.commonpath([base, path]) != base:
            raise CheckpointError(f"{where}: shard {quoted(shard)} is outside the model directory "
                                  "(shards are relative paths that stay inside it, symlinks included)")
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise CheckpointError(f"{where}: shard {quoted(shard)}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{where}: shard {quoted(shard)} is not a regular file")
        shards.setdefault(path, []).append(name)
    if not shards:
        raise CheckpointError(f"{index}: the index's weight_map is empty")
    return list(shards.items())


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are all declared up front.

    Tensors are laid out largest alignment first (so every tensor is aligned
    to its dtype) with no gaps, the header padded to 8 bytes. ``write`` puts a
    tensor's bytes at its offset; ``commit`` checks every tensor was written
    and renames the temporary file over ``path``.
    """

    def __init__(self, path: str, tensors: list[OutputTensor], metadata: Mapping[str, str], label: str = ""):
        """Opens ``path`` (a fresh temporary file, see :func:`writing`) and
        writes the header; ``label`` names the destination in errors."""
        self.path = path
        self.label = label or path
        order = sorted(tensors, key=lambda t: -DTYPES[t.dtype].itemsize)
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        self.offsets: dict[str, int] = {}
        pos = 0
        for t in order:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
            self.offsets[t.name] = pos
            pos += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        if len(raw) > MAX_HEADER:
            # Checked before anything is written: past the limit neither
            # pyquant nor the safetensors package could read the output.
            raise CheckpointError(
                f"{self.label}: the output's header would be {len(raw)} bytes, over the {MAX_HEADER}-byte "
                f"safetensors limit ({len(tensors)} tensors; their names are too many or too long)")
        self.data_start = 8 + len(raw)
        self.size = self.data_start + pos
        self.pending = {t.name: t.nbytes for t in tensors}
        self.fd = os.open(path, os.O_WRONLY)
        try:
            os.write(self.fd, struct.pack("<Q", len(raw)) + raw)
            if hasattr(os, "posix_fallocate") and self.size:
                os.posix_fallocate(self.fd, 0, self.size)  # fail now, not midway, when the disk is full
            os.ftruncate(self.fd, self.size)
        except OSError as exc:
            os.close(self.fd)
            raise CheckpointError(f"{self.label}: cannot write: {exc.strerror}") from None

    def write(self, name: str, data: np.ndarray[Any, Any]) -> None:
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        if buf.nbytes != self.pending.get(name):
            raise CheckpointError(f"internal: {name!r} has {buf.nbytes} bytes, declared {self.pending.get(name)}")
        pos = self.data_start + self.offsets[name]
        try:
            while buf.nbytes:
                n = os.pwrite(self.fd, buf, pos)
                buf, pos = buf[n:], pos + n
        except OSError as exc:
            raise CheckpointError(f"{self.label}: cannot write: {exc.strerror}") from None
        del self.pending[name]

    def close(self) -> None:
        """Checks every declared tensor was written and flushes the file."""
        try:
            if self.pending:
                raise CheckpointError(f"internal: {len(self.pending)} tensors were never written")
            os.fsync(self.fd)
        except OSError as exc:
            raise CheckpointError(f"{self.label}: cannot write: {exc.strerror}") from None
        finally:
            os.close(self.fd)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], tensors: list[OutputTensor], metadata: Mapping[str, str],
            *, force: bool = False, inputs: Iterable[str] = ()) -> Iterator[SafetensorsWriter]:
    """A :class:`SafetensorsWriter` on a temporary file that replaces ``path``
    only if the block completes; on any exception nothing is left behind.
    ``path`` must not be one of ``inputs`` (see :func:`atomic_output`)."""
    with atomic_output(path, force=force, inputs=inputs) as tmp:
        w = SafetensorsWriter(tmp, tensors, metadata, label=os.fspath(path))
        try:
            yield w
        except BaseException:
            os.close(w.fd)
            raise
        w.close()

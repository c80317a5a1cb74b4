"""GGUF files: a strict, memory-mapped reader and a writer with llama.cpp's layout.

Our own reader rather than gguf-py's ``GGUFReader``: it maps the file and
parses the header once, keeping each key-value pair as its raw bytes (so a
pair is carried over byte for byte) and each tensor as an offset into the
mapping (read in place, one tensor at a time), and it checks what gguf-py
does not: every count and length against the bytes left, strings as UTF-8,
unique keys and names, known value and tensor types, dimensions that fit,
aligned offsets and tensors that lie inside the file without overlapping.
Any violation is one :class:`CheckpointError` line naming the file and the
problem. (gguf-py is the cross-check in the tests.)

The writer lays a file out as ``gguf_write_out`` of llama.cpp does (version
3, pairs, tensor infos, zero padding to the alignment, each tensor's data
padded to it), so that the same pairs and tensors give the same bytes.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Iterable

import numpy as np

from .dtypes import BFLOAT16
from .errors import CheckpointError
from .safetensors_io import check_not_shrunk, open_regular

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4

# GGUF value types: code -> (name, struct format or None for string/array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
UINT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 2, 4, 5, 6, 7, 8, 9

# GGML tensor types this reader knows: id -> (name, block values, block bytes).
# Quantized types beyond pyquant's kernels are listed so that such files
# still open (and their tensors are carried over).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
TYPE_IDS = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}
# Float tensor types pyquant reads as values (numpy dtypes, little-endian).
FLOAT_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 30: BFLOAT16}


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file starting with the GGUF magic. Never
    blocks (a FIFO is opened non-blocking and is not a GGUF file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 4) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def row_bytes(type_id: int, n: int) -> int:
    """Bytes of a row of ``n`` values (``n`` a multiple of the block)."""
    _, block, nbytes = GGML_TYPES[type_id]
    return n // block * nbytes


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one that is not 1 (at least 1)."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] != 1:
            return i + 1
    return 1


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. ``shape`` is in GGUF (ggml ``ne``) order:
    ``shape[0]`` is the row length."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # absolute, in the file
    nbytes: int
    split: int = 0  # the file of a split model (GGUFModel) it is in

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]

    @property
    def n_values(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Reads the header from the mapping, each read checked against the end."""

    def __init__(self, data: mmap.mmap, path: str):
        self.data, self.pos, self.path, self.size = data, 0, path, len(data)

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not a valid GGUF file: {what}")

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file ({self.size} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY and depth == 0:
            etype = self.unpack("<I", f"the element type of {what}")
            count = self.unpack("<Q", f"the length of {what}")
            if etype not in _SCALARS and etype != STRING:
                raise self.fail(f"{what} has elements of unknown or nested type {etype}")
            # Each element takes at least one byte (a string eight): a count
            # larger than the bytes left is refused before any allocation.
            least = 8 if etype == STRING else struct.calcsize(_SCALARS[etype])
            if count > (self.size - self.pos) // least:
                raise self.fail(f"{what} claims {count} elements, more than the file holds")
            if etype == STRING:
                return self._strings(count, what)
            fmt = _SCALARS[etype]
            raw = self.take(count * struct.calcsize(fmt), what)
            return list(struct.unpack(f"<{count}{fmt[1]}", raw))
        raise self.fail(f"{what} has unknown value type {vtype}")

    def _strings(self, count: int, what: str) -> list[str]:
        """A string array (a vocabulary: tens of thousands) in one tight loop;
        an element that does not fit goes through :meth:`string`, for its error."""
        data, pos, size, out = self.data, self.pos, self.size, []
        for i in range(count):
            if size - pos >= 8:
                n = struct.unpack_from("<Q", data, pos)[0]
                if n <= size - pos - 8:
                    try:
                        out.append(data[pos + 8:pos + 8 + n].decode("utf-8"))
                        pos += 8 + n
                        continue
                    except UnicodeDecodeError:
                        pass
            self.pos = pos
            out.append(self.string(f"element {i} of {what}"))  # raises
            pos = self.pos
        self.pos = pos
        return out


class GGUFFile:
    """A memory-mapped, validated GGUF file. Use as a context manager.

    ``kv`` maps each key to ``(value type, value, raw bytes of the pair)``
    in file order; ``tensors`` lists the tensors in file order."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        fd, st = open_regular(self.path)
        self._fd, self.size = fd, st.st_size
        try:
            if self.size < 24:
                raise CheckpointError(f"{self.path}: not a valid GGUF file: {self.size} bytes is shorter than "
                                      "the GGUF header")
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            try:
                self._parse()
            except BaseException:
                self._map.close()
                raise
        except BaseException:
            os.close(fd)
            raise

    def _parse(self) -> None:
        c = _Cursor(self._map, self.path)
        if c.take(4, "the magic") != MAGIC:
            raise CheckpointError(f"{self.path}: not a GGUF file (no GGUF magic)")
        self.version = c.unpack("<I", "the version")
        if self.version not in (2, 3):
            raise c.fail(f"version {self.version} is not supported (2 or 3)")
        n_tensors = c.unpack("<Q", "the tensor count")
        n_kv = c.unpack("<Q", "the key-value count")
        # A pair takes at least 12 bytes, a tensor info at least 28.
        if n_kv > self.size // 12 or n_tensors > self.size // 28:
            raise c.fail(f"{n_kv} key-value pairs and {n_tensors} tensors cannot fit in {self.size} bytes")
        self.kv: dict[str, tuple[int, Any, bytes]] = {}
        for i in range(n_kv):
            start = c.pos
            key = c.string(f"key {i}")
            vtype = c.unpack("<I", f"the type of {key!r}")
            value = c.value(vtype, f"the value of {key!r}")
            if key in self.kv:
                raise c.fail(f"key {key!r} appears twice")
            self.kv[key] = (vtype, value, bytes(self._map[start:c.pos]))
        self.alignment = DEFAULT_ALIGNMENT
        if ALIGNMENT_KEY in self.kv:
            vtype, value, _ = self.kv[ALIGNMENT_KEY]
            if vtype != UINT32 or value == 0 or value & (value - 1):
                raise c.fail(f"{ALIGNMENT_KEY} must be a power of two (u32), got {value!r}")
            self.alignment = value
        infos = []
        for i in range(n_tensors):
            name = c.string(f"the name of tensor {i}")
            nd = c.unpack("<I", f"the dimension count of {name!r}")
            if not 1 <= nd <= MAX_DIMS:
                raise c.fail(f"tensor {name!r} has {nd} dimensions (1 to {MAX_DIMS})")
            shape = tuple(c.unpack("<Q", f"a dimension of {name!r}") for _ in range(nd))
            type_id = c.unpack("<I", f"the type of {name!r}")
            offset = c.unpack("<Q", f"the offset of {name!r}")
            infos.append((name, shape, type_id, offset))
        self.data_start = -(-c.pos // self.alignment) * self.alignment
        self.tensors: list[TensorInfo] = []
        seen: set[str] = set()
        for name, shape, type_id, offset in infos:
            if name in seen:
                raise c.fail(f"tensor {name!r} appears twice")
            seen.add(name)
            if type_id not in GGML_TYPES:
                raise c.fail(f"tensor {name!r} has unknown GGML type {type_id}")
            type_name, block, block_bytes = GGML_TYPES[type_id]
            if any(d == 0 for d in shape) or shape[0] % block:
                raise c.fail(f"tensor {name!r}: shape {list(shape)} does not fit {type_name} "
                             f"(rows must hold whole blocks of {block})")
            count = 1
            for d in shape:
                count *= d
            nbytes = count // block * block_bytes
            if offset % self.alignment:
                raise c.fail(f"tensor {name!r}: offset {offset} is not a multiple of the alignment {self.alignment}")
            if nbytes > self.size or offset > self.size - self.data_start - nbytes:
                raise c.fail(f"tensor {name!r}: {nbytes} bytes at offset {offset} run past the end of the file "
                             f"(truncated?)")
            self.tensors.append(TensorInfo(name, shape, type_id, self.data_start + offset, nbytes))
        spans = sorted(self.tensors, key=lambda t: t.offset)
        for a, b in zip(spans, spans[1:]):
            if a.offset + a.nbytes > b.offset:
                raise c.fail(f"tensors {a.name!r} and {b.name!r} overlap")

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.kv.get(key)
        return default if entry is None else entry[1]

    def raw(self, info: TensorInfo) -> memoryview:
        """The tensor's bytes, in place in the mapping."""
        check_not_shrunk(self._fd, self.size, self.path)
        return memoryview(self._map)[info.offset:info.offset + info.nbytes]

    def array(self, info: TensorInfo) -> np.ndarray[Any, Any]:
        """A float tensor as a (rows, row length) array over the mapping."""
        dtype = FLOAT_DTYPES[info.type_id]
        return np.frombuffer(self.raw(info), dtype=dtype).reshape(-1, info.shape[0])

    def release(self, info: TensorInfo, start: int = 0, end: int | None = None) -> None:
        """Gives the tensor's pages back (they are clean: dropping them costs nothing),
        or those of its bytes ``start:end``."""
        if hasattr(mmap, "MADV_DONTNEED"):
            page = mmap.PAGESIZE
            start = (info.offset + start) // page * page
            end = min(self.size, info.offset + (info.nbytes if end is None else end))
            if end > start:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # an array still views it: let the GC unmap
                pass
            os.close(self._fd)
            self._map = None  # type: ignore[assignment]

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"


def split_path(prefix: str, split_no: int, split_count: int) -> str:
    """llama.cpp's llama_split_path: PREFIX-00001-of-00003.gguf for split 0 of 3."""
    return f"{prefix}-{split_no + 1:05d}-of-{split_count:05d}.gguf"


class GGUFModel:
    """A GGUF model in one file, or split over several as llama.cpp's gguf-split
    writes it (opened by its first file, ``NAME-00001-of-0000N.gguf``; the
    others are found by name beside it, as llama.cpp's loader finds them):
    the first file's pairs, every file's tensors (``TensorInfo.split`` says
    which file). The same checks as llama.cpp's loader, one error line each:
    the first split given, each file's ``split.no``, no tensor twice,
    ``split.tensors.count`` tensors in all. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]):
        self.files = [GGUFFile(path)]
        try:
            self._add_splits()
        except BaseException:
            self.close()
            raise
        first = self.files[0]
        self.path, self.kv, self.alignment, self.version = first.path, first.kv, first.alignment, first.version

    def _add_splits(self) -> None:
        first = self.files[0]
        self.tensors = list(first.tensors)
        n = first.value(SPLIT_COUNT, 0)
        if not isinstance(n, int) or n <= 1:
            return
        fail = f"{first.path}: a model split in {n} files (split.count)"
        if first.value(SPLIT_NO) != 0:
            raise CheckpointError(f"{fail}, but this is split.no {first.value(SPLIT_NO)!r}: give the first file")
        suffix = split_path("", 0, n)
        if not first.path.endswith(suffix) or first.path == suffix:
            raise CheckpointError(f"{fail}, but its name does not end in {suffix}: the other files are not found")
        names = {t.name for t in self.tensors}
        for i in range(1, n):
            f = GGUFFile(split_path(first.path[:-len(suffix)], i, n))
            self.files.append(f)
            if f.value(SPLIT_NO) != i:
                raise CheckpointError(f"{f.path}: split.no is {f.value(SPLIT_NO)!r}, expected {i}")
            for t in f.tensors:
                if t.name in names:
                    raise CheckpointError(f"{f.path}: tensor {t.name!r} is in two splits")
                names.add(t.name)
                self.tensors.append(replace(t, split=i))
        if first.value(SPLIT_TENSORS) != len(self.tensors):
            raise CheckpointError(f"{first.path}: split.tensors.count is {first.value(SPLIT_TENSORS)!r}, but the "
                                  f"{n} files hold {len(self.tensors)} tensors")

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def value(self, key: str, default: Any = None) -> Any:
        return self.files[0].value(key, default)

    def raw(self, info: TensorInfo) -> memoryview:
        return self.files[info.split].raw(info)

    def array(self, info: TensorInfo) -> np.ndarray[Any, Any]:
        return self.files[info.split].array(info)

    def release(self, info: TensorInfo, start: int = 0, end: int | None = None) -> None:
        self.files[info.split].release(info, start, end)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def kv_string(key: str, value: str) -> bytes:
    """The raw bytes of a string key-value pair."""
    return _string(key) + struct.pack("<I", STRING) + _string(value)


def kv_scalar(key: str, vtype: int, value: Any) -> bytes:
    """The raw bytes of a key-value pair of scalar type ``vtype`` (UINT16, UINT32, INT32, FLOAT32, BOOL, ...)."""
    return _string(key) + struct.pack("<I", vtype) + struct.pack(_SCALARS[vtype], value)


def kv_u32(key: str, value: int) -> bytes:
    """The raw bytes of a u32 key-value pair."""
    return kv_scalar(key, UINT32, value)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    type_id: int

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n * row_bytes(self.type_id, self.shape[0])


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class Writer:
    """Writes a GGUF file to an open binary file: the header, then each
    tensor's bytes in order, whole with :meth:`tensor` or in consecutive
    pieces with :meth:`part`."""

    def __init__(self, out: BinaryIO, kv_pairs: Iterable[bytes], tensors: list[OutputTensor], alignment: int):
        self.out, self.tensors, self.alignment, self.next, self.filled = out, tensors, alignment, 0, 0
        pairs = list(kv_pairs)
        head = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(pairs)), *pairs]
        offset = 0
        for t in tensors:
            nd = n_dims(t.shape)
            head.append(_string(t.name) + struct.pack(f"<I{nd}QIQ", nd, *t.shape[:nd], t.type_id, offset))
            offset += _pad(t.nbytes, alignment)
        header = b"".join(head)
        out.write(header + bytes(_pad(len(header), alignment) - len(header)))

    def tensor(self, data: memoryview | np.ndarray[Any, Any]) -> None:
        """The whole of the next tensor's bytes."""
        t = self.tensors[self.next]
        if self.filled or data.nbytes != t.nbytes:
            raise CheckpointError(f"internal error: tensor {t.name!r} has {data.nbytes} bytes, expected {t.nbytes}")
        self.part(data)

    def part(self, data: memoryview | np.ndarray[Any, Any]) -> None:
        """The next bytes of the current tensor; its padding follows its last byte."""
        t = self.tensors[self.next]
        buf: Any = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data
        view = memoryview(buf).cast("B")
        if self.filled + view.nbytes > t.nbytes:
            raise CheckpointError(f"internal error: tensor {t.name!r} has more than {t.nbytes} bytes")
        self.out.write(view)
        self.filled += view.nbytes
        if self.filled == t.nbytes:
            self.out.write(bytes(_pad(t.nbytes, self.alignment) - t.nbytes))
            self.next, self.filled = self.next + 1, 0

"""Fuzzes pyquant's GGUF reader (pyquant/gguf_file.py) with atheris.

Random bytes are written to a file and opened with ``GGUFModel`` (the
reader of a model in one file or split over several: the file is named as
the first of two splits, and the second split is the same bytes, so the
split checks run too): it must either succeed, and then every tensor lies inside the file after the header,
aligned, with the bytes its type and shape imply, and float tensors read as
arrays of that many values; or raise ``pyquant.CheckpointError`` with a
one-line message. Anything else escaping is a crash.

Run through fuzz/run.sh, or: python fuzz/gguf_header.py CORPUS_DIR [libFuzzer flags]
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import pyquant.gguf_file as gf
from pyquant import CheckpointError

_DIR = tempfile.mkdtemp(prefix="pq-fuzz-gguf-")
_PATH = os.path.join(_DIR, "input-00001-of-00002.gguf")
_SECOND = os.path.join(_DIR, "input-00002-of-00002.gguf")


def test_one_input(data: bytes) -> None:
    for path in (_PATH, _SECOND):
        with open(path, "wb") as f:
            f.write(data)
    try:
        g = gf.GGUFModel(_PATH)
    except CheckpointError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return
    with g:
        assert len(g.files) == 1  # two files of the same bytes never pass as splits 0 and 1
        assert g.files[0].data_start % g.alignment == 0
        for t in g.tensors:
            assert g.files[0].data_start <= t.offset and t.offset + t.nbytes <= len(data), t.name
            assert (t.offset - g.files[0].data_start) % g.alignment == 0, t.name
            assert t.nbytes == t.n_values // gf.GGML_TYPES[t.type_id][1] * gf.GGML_TYPES[t.type_id][2], t.name
            assert bytes(g.raw(t)) == data[t.offset:t.offset + t.nbytes], t.name
            if t.type_id in gf.FLOAT_DTYPES:
                assert g.array(t).size == t.n_values, t.name
            g.release(t)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

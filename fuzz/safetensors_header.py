"""Fuzzes pyquant's safetensors reader (pyquant/safetensors_io.py) with atheris.

Random bytes are written to a file and opened with ``SafetensorsFile``: it
must either succeed, and then every tensor's ``array()`` view has the
declared dtype and shape and lies inside the file's data section, or raise
``pyquant.CheckpointError``. Anything else escaping is a crash.

Arrow IPC parsing is pyarrow's (pyquant hands IPC files to pyarrow), not
pyquant's, so it is not fuzzed here.

Run through fuzz/run.sh, or: python fuzz/safetensors_header.py CORPUS_DIR [libFuzzer flags]
"""

import math
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import pyquant.safetensors_io as st
from pyquant import CheckpointError

_DIR = tempfile.mkdtemp(prefix="pq-fuzz-st-")
_PATH = os.path.join(_DIR, "input.safetensors")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        sf = st.SafetensorsFile(_PATH)
    except CheckpointError as exc:
        assert str(exc), "empty CheckpointError message"
        return
    with sf:
        assert sf.data_start <= len(data)
        for name, info in sf.tensors.items():
            try:
                a = sf.array(name)
            except CheckpointError:
                continue
            assert a.dtype == st.DTYPES[info.dtype], (name, a.dtype)
            assert a.shape == info.shape, (name, a.shape, info.shape)
            assert a.nbytes == info.nbytes == math.prod(info.shape) * a.dtype.itemsize, name
            assert sf.data_start + info.end <= len(data), name
            if a.nbytes:
                # The view's bytes are the file's bytes at the declared offsets.
                start = sf.data_start + info.begin
                assert a.tobytes() == data[start:start + a.nbytes], name
            sf.release(name)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

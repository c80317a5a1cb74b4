"""Concurrency stress: Python threads mixing quantize_ptr, quantize_batch and
quantize_arrow on shared read-only inputs, for a bounded time, must produce
exactly the bytes of a serial run (the GIL is released in every call)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa

import pyquant

SECONDS = 3.0


def test_mixed_paths_from_many_threads_match_a_serial_run():
    rng = np.random.default_rng(2024)
    layers = {f"w{i}": rng.normal(size=(256, 384)).astype(np.float32) for i in range(4)}
    layers["big"] = rng.normal(size=(1024, 1024)).astype(np.float32)  # split across threads inside a call
    layers["half"] = rng.normal(size=(128, 256)).astype(np.float16)
    for a in layers.values():
        a.setflags(write=False)  # shared and read-only, as the row says
    serial = {k: pyquant.quantize_ptr(v, threads=1) for k, v in layers.items()}
    names = ["w0", "w1", "w2"]
    arrow_in = pa.RecordBatch.from_arrays(
        [pa.array(names), pa.array([layers[n].ravel() for n in names]),
         pa.array([list(layers[n].shape) for n in names], pa.list_(pa.int64()))], ["name", "weights", "shape"])

    def same(qt, ref):
        return qt.codes.tobytes() == ref.codes.tobytes() and qt.scales.tobytes() == ref.scales.tobytes() \
            and qt.mins.tobytes() == ref.mins.tobytes()

    failures: list[str] = []
    counts = [0] * 6
    deadline = time.monotonic() + SECONDS

    def worker(k: int) -> None:
        try:
            while time.monotonic() < deadline:
                kind = (k + counts[k]) % 3
                if kind == 0:
                    for name, a in layers.items():
                        if not same(pyquant.quantize_ptr(a, threads=1 + counts[k] % 3), serial[name]):
                            failures.append(f"ptr {name}")
                elif kind == 1:
                    got = pyquant.quantize_batch(layers, threads=None if counts[k] % 2 else 2)
                    failures.extend(f"batch {n}" for n in layers if not same(got[n], serial[n]))
                else:
                    out = pyquant.quantize_arrow(arrow_in).to_pydict()
                    for i, name in enumerate(names):
                        codes = np.frombuffer(out["codes"][i], np.uint8)
                        if codes.tobytes() != serial[name].codes.tobytes():
                            failures.append(f"arrow {name}")
                counts[k] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(counts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:10]
    assert all(c > 0 for c in counts), counts
    assert pyquant._lib.lib.pq_arrow_live_exports() == 0

"""The benchmark suite: every variant of every scenario measured in one run.

    python bench/run.py            # full run: writes bench/results/*.json, chart, table
    python bench/run.py --quick    # fewer repeats, for a smoke test

Scenarios (float32, bits 4, group size 128):
  S1  one 4 MB layer (1024 x 1024)
  S2  100 layers of 4 MB (400 MB in all)
  S3  1000 small layers of 16 KB (64 x 64): boundary-crossing cost

Variants:
  memcpy   np.copyto of the same bytes (the memory-copy floor)
  numpy    the numpy reference quantizer (pyquant.reference)
  native   the Rust kernel without Python (rust/examples/native_bench.rs)
  legacy   what older bindings do: arr.tolist() -> ffi.new -> one C call per layer
  copy     pyquant.quantize_copy per layer
  ptr      pyquant.quantize_ptr per layer
  batch    one pyquant.quantize_batch call
  arrow    pyquant.quantize_arrow on the same tensors as Arrow data (when available)

Times are medians of repeated runs; ratios are to memcpy and numpy of the same
scenario. Peak memory of each variant is measured in a fresh process (peak
RSS growth while running the variant once, beyond its inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
BITS, GROUP = 4, 128
SCENARIOS = {
    "S1": dict(layers=1, shape=(1024, 1024), desc="one 4 MB layer"),
    "S2": dict(layers=100, shape=(1024, 1024), desc="100 layers of 4 MB"),
    "S3": dict(layers=1000, shape=(64, 64), desc="1000 layers of 16 KB"),
}
# Repeats per scenario (full, quick); slow variants get fewer (see SLOW).
REPEATS = {"S1": (31, 5), "S2": (5, 2), "S3": (11, 3)}
SLOW = {"legacy": 3, "numpy": 3}


def make_layers(scenario: str) -> list[np.ndarray]:
    spec = SCENARIOS[scenario]
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.02, spec["shape"]).astype(np.float32) for _ in range(spec["layers"])]


def variants() -> dict[str, Callable[[list[np.ndarray]], Callable[[], Any]]]:
    """name -> setup(layers) -> run(); setup may prepare outputs, run does the work."""
    import pyquant
    from pyquant._lib import ffi, lib
    from pyquant.reference import reference_quantize

    def memcpy(layers):
        outs = [np.empty_like(a) for a in layers]
        return lambda: [np.copyto(o, a) for o, a in zip(outs, layers)]

    def numpy_ref(layers):
        return lambda: [reference_quantize(a, BITS, GROUP) for a in layers]

    def legacy(layers):
        def run():
            for a in layers:
                values = ffi.new("float[]", a.ravel().tolist())
                rows, k = a.shape
                codes = ffi.new("uint8_t[]", a.size * BITS // 8)
                scales = ffi.new("float[]", a.size // GROUP)
                mins = ffi.new("float[]", a.size // GROUP)
                err = ffi.new("PqError *")
                status = lib.pq_quantize(lib.PQ_DTYPE_F32, values, a.size, k, BITS, GROUP, 0,
                                         codes, a.size * BITS // 8, scales, a.size // GROUP,
                                         mins, a.size // GROUP, err)
                assert status == 0
                # ... and back to Python objects, as list-based bindings return them
                bytes(ffi.buffer(codes)), list(scales), list(mins)
        return run

    def copy(layers):
        return lambda: [pyquant.quantize_copy(a, bits=BITS, group_size=GROUP) for a in layers]

    def ptr(layers):
        return lambda: [pyquant.quantize_ptr(a, bits=BITS, group_size=GROUP) for a in layers]

    table = {"memcpy": memcpy, "numpy": numpy_ref, "legacy": legacy, "copy": copy, "ptr": ptr}
    if hasattr(pyquant, "quantize_batch"):
        table["batch"] = lambda layers: (lambda: pyquant.quantize_batch(layers, bits=BITS, group_size=GROUP))
    if hasattr(pyquant, "quantize_arrow"):
        def arrow(layers):
            import pyarrow as pa

            names = pa.array([f"layer.{i}" for i in range(len(layers))])
            weights = pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([a.ravel() for a in layers])), layers[0].size)
            shape = pa.array([list(a.shape) for a in layers], type=pa.list_(pa.int64()))
            batch = pa.RecordBatch.from_arrays([names, weights, shape], ["name", "weights", "shape"])
            return lambda: pyquant.quantize_arrow(batch, bits=BITS, group_size=GROUP)
        table["arrow"] = arrow
    return table


def time_variant(run: Callable[[], Any], repeats: int) -> list[float]:
    run()  # warm-up: page faults, caches, lazy imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def peak_memory(scenario: str, variant: str) -> int:
    """Peak RSS growth (bytes) of running ``variant`` once, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--child-memory", scenario, variant],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def child_memory(scenario: str, variant: str) -> None:
    layers = make_layers(scenario)
    run = variants()[variant](layers)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)


def native(scenario: str, repeats: int, threads: int) -> dict[str, Any] | None:
    """Median time of the Rust kernel alone, from the native bench binary."""
    cmd = ["cargo", "run", "--quiet", "--release", "--locked", "--example", "native_bench", "--",
           "--scenario", scenario, "--repeats", str(repeats), "--threads", str(threads)]
    out = subprocess.run(cmd, cwd=os.path.join(ROOT, "rust"), capture_output=True, text=True)
    if out.returncode != 0:
        print(f"native bench failed: {out.stderr.strip()}", file=sys.stderr)
        return None
    return json.loads(out.stdout)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform()}

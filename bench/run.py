"""The benchmark suite: every variant of every scenario measured in one run.

    python bench/run.py            # full run: writes bench/results/*.json, chart, table
    python bench/run.py --quick    # fewer repeats, for a smoke test

Scenarios (float32, bits 4, group size 128):
  S1  one 4 MB layer (1024 x 1024)
  S2  100 layers of 4 MB (400 MB in all)
  S3  1000 small layers of 16 KB (32 x 128): boundary-crossing cost

Variants:
  memcpy   np.copyto of the same bytes (the memory-copy floor)
  numpy    the numpy reference quantizer (pyquant.reference)
  native   the Rust kernel without Python (rust/examples/native_bench.rs)
  cffi     the kernel through the C ABI with outputs allocated once (the bare boundary)
  legacy   what older bindings do: arr.tolist() -> ffi.new -> one C call per layer
  copy     pyquant.quantize_copy per layer
  ptr      pyquant.quantize_ptr per layer
  batch    one pyquant.quantize_batch call (fresh outputs)
  batch_out  one pyquant.quantize_batch call into outputs allocated once (out=), as a
           loop over checkpoints reuses warm memory (memcpy's outputs are allocated once too)
  arrow    pyquant.quantize_arrow on the same tensors as an Arrow column over the same memory

Times are medians of repeated runs; ratios are to memcpy and numpy of the same
scenario. Peak memory of each variant is measured in a fresh process (peak
RSS growth while running the variant once, beyond its inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    "S3": dict(layers=1000, shape=(32, 128), desc="1000 layers of 16 KB"),
}
# Repeats per scenario (full, quick); slow variants get fewer (see SLOW).
REPEATS = {"S1": (31, 5), "S2": (5, 2), "S3": (11, 3)}
SLOW = {"legacy": 3, "numpy": 3}


def make_layers(scenario: str) -> list[np.ndarray]:
    """The scenario's layers: views of one block, end to end, so that the
    Arrow variant's column is the same memory (zero-copy) and every variant
    reads the same bytes from the same place."""
    spec = SCENARIOS[scenario]
    rng = np.random.default_rng(0)
    return list(rng.normal(0, 0.02, (spec["layers"], *spec["shape"])).astype(np.float32))


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

    def cffi_raw(layers):
        # The kernel through the C ABI with outputs allocated once: the cost of
        # the boundary itself, without the wrapper's checks and allocations.
        calls = []
        for a in layers:
            qt = pyquant.quantize_ptr(a, bits=BITS, group_size=GROUP)
            calls.append((lib.PQ_DTYPE_F32, ffi.from_buffer(a), a.size, a.shape[-1], BITS, GROUP, 0,
                          ffi.from_buffer(qt.codes), qt.codes.size, ffi.from_buffer("float[]", qt.scales),
                          qt.scales.size, ffi.from_buffer("float[]", qt.mins), qt.mins.size, ffi.new("PqError *")))
        return lambda: [lib.pq_quantize(*c) for c in calls]

    table = {"memcpy": memcpy, "numpy": numpy_ref, "legacy": legacy, "cffi": cffi_raw, "copy": copy, "ptr": ptr}
    if hasattr(pyquant, "quantize_batch"):
        table["batch"] = lambda layers: (lambda: pyquant.quantize_batch(layers, bits=BITS, group_size=GROUP))

        def batch_out(layers):
            out = pyquant.quantize_batch(layers, bits=BITS, group_size=GROUP)
            return lambda: pyquant.quantize_batch(layers, bits=BITS, group_size=GROUP, out=out)
        table["batch_out"] = batch_out
    if hasattr(pyquant, "quantize_arrow"):
        def arrow(layers):
            import pyarrow as pa

            names = pa.array([f"layer.{i}" for i in range(len(layers))])
            block = layers[0].base  # make_layers' block: the column is a view of it, not a copy
            values = pa.array(block.reshape(-1))
            assert values.buffers()[1].address == layers[0].ctypes.data
            weights = pa.FixedSizeListArray.from_arrays(values, layers[0].size)
            shape = pa.array([list(a.shape) for a in layers], type=pa.list_(pa.int64()))
            batch = pa.RecordBatch.from_arrays([names, weights, shape], ["name", "weights", "shape"])
            return lambda: pyquant.quantize_arrow(batch, bits=BITS, group_size=GROUP)
        table["arrow"] = arrow
    return table


def peak_memory(scenario: str, variant: str) -> int:
    """Peak RSS growth (bytes) of running ``variant`` once, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--child-memory", scenario, variant],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def child_memory(scenario: str, variant: str) -> None:
    from pyquant import _peak_rss

    layers = make_layers(scenario)
    run = variants()[variant](layers)
    _peak_rss.reset()
    before = _peak_rss.peak_bytes()
    result = run()
    print(_peak_rss.peak_bytes() - before)
    del result


def native(scenario: str, repeats: int, threads: int) -> dict[str, Any] | None:
    """Median time of the Rust kernel alone, from the native bench binary."""
    cmd = ["cargo", "run", "--quiet", "--release", "--locked", "--features", "reference", "--example", "native_bench", "--",
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


def checkpoint_bench(repeats: int, gib: float = 1.0) -> dict[str, Any]:
    """quantize_file on a generated ~1 GB float32 checkpoint (from the page
    cache: it was just written): GB/s of input, and peak RSS growth in a
    fresh process."""
    import tempfile

    import pyquant
    from pyquant.safetensors_io import OutputTensor, writing

    rows, cols = 2048, 4096  # 32 MiB per tensor
    n = max(1, int(gib * 2**30 // (rows * cols * 4)))
    with tempfile.TemporaryDirectory(prefix="pyquant-bench-", dir=os.path.join(ROOT, "bench", "results")) as tmp:
        src, dst = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "q.safetensors")
        block = np.random.default_rng(0).normal(0, 0.02, (rows, cols)).astype(np.float32)
        with writing(src, [OutputTensor(f"layers.{i}.weight", "F32", (rows, cols)) for i in range(n)], {}) as w:
            for i in range(n):
                w.write(f"layers.{i}.weight", block + np.float32(i * 1e-3))
        del block
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            pyquant.quantize_file(src, dst, force=True)
            times.append(time.perf_counter() - t0)
        code = ("import sys, pyquant; from pyquant import _peak_rss; _peak_rss.reset(); b = _peak_rss.peak_bytes();"
                f"pyquant.quantize_file({src!r}, {dst!r}, force=True); print(_peak_rss.peak_bytes() - b)")
        peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        size = os.path.getsize(src)
    med = statistics.median(times[1:])
    return {"input_bytes": size, "tensors": n, "tensor_bytes": rows * cols * 4, "median_s": med,
            "gb_per_s": size / med / 1e9, "peak_rss_growth_bytes": peak}


def tiny_overhead(repeats: int) -> dict[str, float]:
    """Per-call cost on a tiny tensor (1 x 128): the raw CFFI call of the
    kernel with everything prepared, and the whole quantize_ptr call."""
    import timeit

    import pyquant
    from pyquant._lib import ffi, lib

    x = np.random.default_rng(1).normal(size=(1, 128)).astype(np.float32)
    codes, scales, mins = np.empty(64, np.uint8), np.empty(1, np.float32), np.empty(1, np.float32)
    args = (lib.PQ_DTYPE_F32, ffi.from_buffer(x), 128, 128, BITS, GROUP, 1, ffi.from_buffer(codes), 64,
            ffi.from_buffer("float[]", scales), 1, ffi.from_buffer("float[]", mins), 1, ffi.new("PqError *"))
    n = 20000
    # Statements, not lambdas: timeit compiles them into its loop, so only the call is timed.
    names = {"pq_quantize": lib.pq_quantize, "args": args, "quantize_ptr": pyquant.quantize_ptr, "x": x}
    raw = statistics.median(timeit.repeat("pq_quantize(*args)", globals=names, number=n, repeat=repeats)) / n
    full = statistics.median(timeit.repeat("quantize_ptr(x, threads=1)", globals=names, number=n,
                                           repeat=repeats)) / n
    return {"raw_call_us": raw * 1e6, "quantize_ptr_us": full * 1e6, "wrapper_us": (full - raw) * 1e6}


def render_table(results: dict[str, Any]) -> str:
    """The Markdown table that goes into the README."""
    order = ["memcpy", "numpy", "native", "cffi", "legacy", "copy", "ptr", "batch", "batch_out", "arrow"]
    lines = ["| scenario | variant | median | vs memcpy | speed-up vs numpy | peak memory |",
             "|---|---|---|---|---|---|"]
    for sc, res in results["scenarios"].items():
        for v in order:
            if v not in res["variants"]:
                continue
            r = res["variants"][v]
            mem = r.get("peak_bytes")
            lines.append(
                f"| {sc} | {v} | {_fmt_time(r['median_s'])} | {r['vs_memcpy']:.2f}x | "
                f"{r['vs_numpy']:.1f}x | {'-' if mem is None else f'{mem / 2**20:.1f} MiB'} |"
            )
    return "\n".join(lines)


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def chart(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = list(results["scenarios"])
    fig, axes = plt.subplots(1, len(scs), figsize=(5 * len(scs), 4))
    for ax, sc in zip(np.atleast_1d(axes), scs):
        res = results["scenarios"][sc]["variants"]
        names = [v for v in ["memcpy", "numpy", "native", "cffi", "legacy", "copy", "ptr", "batch", "batch_out", "arrow"]
                 if v in res]
        ratios = [res[v]["vs_memcpy"] for v in names]
        colors = ["#888" if v in ("memcpy", "numpy", "native", "cffi") else "#1f77b4" for v in names]
        ax.barh(names, ratios, color=colors)
        ax.set_xscale("log")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{sc}: {SCENARIOS[sc]['desc']}")
        ax.set_xlabel("time / memcpy time (log; lower is better)")
        ax.invert_yaxis()
    fig.suptitle(f"pyquant, float32 bits {BITS} group {GROUP}: {results['machine']['cpu']}, "
                 f"{results['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update_readme(table: str, marker: str = "bench") -> None:
    """Writes ``table`` between the README's ``<!-- {marker}:start -->`` and
    ``<!-- {marker}:end -->`` markers."""
    path = os.path.join(ROOT, "README.md")
    text = open(path, encoding="utf-8").read()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test, not for the README)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak memory runs")
    p.add_argument("--no-checkpoint", action="store_true", help="skip the ~1 GB checkpoint file benchmark")
    p.add_argument("--update-readme", action="store_true", help="write the table between the README's bench markers")
    p.add_argument("--child-memory", nargs=2, metavar=("SCENARIO", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        child_memory(*args.child_memory)
        return 0
    os.makedirs(RESULTS, exist_ok=True)
    quick = 1 if args.quick else 0
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "bits": BITS, "group_size": GROUP, "scenarios": {}}
    table = variants()
    for sc in args.scenarios:
        reps = REPEATS[sc][quick]
        layers = make_layers(sc)
        res: dict[str, Any] = {}
        # Variants are timed round-robin, one run each per round, so that a
        # noisy machine's slow spells fall on all of them alike.
        runs = {name: setup(layers) for name, setup in table.items()}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            run()  # warm-up: page faults, caches, lazy imports
        for r in range(reps):
            for name, run in runs.items():
                if r < min(reps, SLOW.get(name, reps)):
                    t0 = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            res[name] = {"median_s": statistics.median(ts), "repeats": len(ts)}
            print(f"{sc} {name:7s} {_fmt_time(res[name]['median_s'])}", file=sys.stderr)
        del runs
        nat = native(sc, reps, threads=0)
        if nat:
            res["native"] = {"median_s": nat["quantize_s"], "repeats": reps, "isa": nat.get("isa"),
                             "threads": nat.get("threads_resolved")}
            print(f"{sc} native  {_fmt_time(nat['quantize_s'])}", file=sys.stderr)
        for name, r in res.items():
            r["vs_memcpy"] = r["median_s"] / res["memcpy"]["median_s"]
            r["vs_numpy"] = res["numpy"]["median_s"] / r["median_s"]
            if not args.no_memory and name not in ("native", "cffi"):
                r["peak_bytes"] = peak_memory(sc, name)
        if "native" in res:
            per_call = (res["ptr"]["median_s"] - res["native"]["median_s"]) / SCENARIOS[sc]["layers"]
            res["ffi_overhead"] = {
                "ptr_vs_native_percent": 100 * (res["ptr"]["median_s"] / res["native"]["median_s"] - 1),
                "ptr_minus_native_us_per_call": per_call * 1e6,
                "ptr_vs_cffi_percent": 100 * (res["ptr"]["median_s"] / res["cffi"]["median_s"] - 1),
                "cffi_vs_native_percent": 100 * (res["cffi"]["median_s"] / res["native"]["median_s"] - 1),
            }
        results["scenarios"][sc] = {"input_bytes": sum(a.nbytes for a in layers), "variants": res}
        del layers
    results["tiny_call"] = tiny_overhead(5 if not args.quick else 2)
    if not args.no_checkpoint:
        results["checkpoint"] = checkpoint_bench(3 if not args.quick else 1, 1.0 if not args.quick else 0.25)
    with open(os.path.join(RESULTS, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = render_table(results)
    extra = [f"\nMachine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
             f"Python {results['machine']['python']}, numpy {results['machine']['numpy']}; {results['date']}."]
    for sc, r in results["scenarios"].items():
        if "ffi_overhead" in r["variants"]:
            o = r["variants"]["ffi_overhead"]
            extra.append(f"{sc}: ptr vs native {o['ptr_vs_native_percent']:+.1f}% "
                         f"({o['ptr_minus_native_us_per_call']:.2f} us per call); the bare CFFI call vs native "
                         f"{o['cffi_vs_native_percent']:+.1f}%, ptr vs the bare CFFI call {o['ptr_vs_cffi_percent']:+.1f}%.")
    t = results["tiny_call"]
    extra.append(f"Tiny tensor (1x128): raw CFFI call {t['raw_call_us']:.2f} us, whole quantize_ptr "
                 f"{t['quantize_ptr_us']:.2f} us (Python wrapper {t['wrapper_us']:.2f} us).")
    if "checkpoint" in results:
        c = results["checkpoint"]
        extra.append(f"Checkpoint: quantize_file on a {c['input_bytes'] / 1e9:.2f} GB float32 safetensors file "
                     f"({c['tensors']} tensors of {c['tensor_bytes'] / 2**20:.0f} MiB, page cache): "
                     f"{c['gb_per_s']:.2f} GB/s, peak RSS +{c['peak_rss_growth_bytes'] / 2**20:.0f} MiB.")
    md = md + "\n" + " ".join(extra)
    with open(os.path.join(RESULTS, "table.md"), "w") as f:
        f.write(md + "\n")
    chart(results, os.path.join(RESULTS, "chart.png"))
    print(md)
    if args.update_readme:
        update_readme(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

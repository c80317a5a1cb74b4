"""GGML types: speed and accuracy of pyquant.gguf against ggml's own C code
(the test oracle, one thread, -O2 -ffp-contract=off) and gguf-py.

    python bench/ggml.py [--rows 1024] [--cols 1024] [--repeats 5] [--update-readme]

Per type: whether pyquant's bytes are those of ggml's C (the reference
build), MB/s of float32 input quantized (pyquant on 1 thread and on all
cores, ggml's C on 1 thread, gguf-py where it can quantize; timed round-robin
with pyquant's affine 4-bit quantizer on 1 thread, so each ratio is taken
within the same rounds), bits per weight, rel-RMSE
(||x - dequantize(quantize(x))|| / ||x||) on the same tensor, and
whether an -O2 -march=native build of ggml's C (FMA contraction on, as
llama.cpp's native builds) writes different bytes than the reference build.
The tensor is synthetic (Student-t, 5 degrees of freedom, a common stand-in
for trained weights); it is not a real model. Writes bench/results/ggml.md.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pyquant, not an installed one

import pyquant  # noqa: E402
from pyquant import gguf as pg  # noqa: E402


def load_oracle_module():
    spec = importlib.util.spec_from_file_location("ggml_oracle_build", ROOT / "tests" / "ggml_oracle" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time of each function, timed round-robin (one timed run
    of each per round) so that the machine's slow spells fall on all of them
    alike and ratios between them hold within the run. Each timed run follows
    an untimed one of the same function: every function is timed with warm
    caches, not after whichever ran before it."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def oracle_quantize(so, type_id: int, x: np.ndarray) -> np.ndarray:
    rows, n = x.shape
    out = np.empty(so.pqo_row_size(type_id, n) * rows, np.uint8)
    so.pqo_quantize(type_id, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data, rows, n, None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table between the README's ggml-bench markers")
    args = parser.parse_args()
    build = load_oracle_module()
    ref = build.load()
    native = build.load(("-O2", "-march=native", "-DNDEBUG"))
    try:
        import gguf
    except ImportError:
        gguf = None
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (args.rows, args.cols)) * 0.02).astype(np.float32)
    mb = x.nbytes / 1e6
    cores = os.cpu_count()
    lines = [
        f"# GGML types: {args.rows} x {args.cols} float32 ({mb:.1f} MB), medians of {args.repeats}, "
        f"{cores} cores (shared machine: all-core figures are noisy)",
        "",
        "| type | same bytes as ggml's C | bpw | rel-RMSE | MB/s 1 thread | MB/s all cores | ggml C MB/s | "
        "x ggml (1 thr) | gguf-py MB/s | x gguf-py (all) | type time / affine time (1 thr) | "
        "-march=native bytes differ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    affine = lambda: pyquant.quantize_ptr(x, bits=4, group_size=128, threads=1)  # noqa: E731
    for name in pg.SUPPORTED_TYPES:
        type_id = pg._type_id(name)
        q = pg.quantize(x, name)
        back = pg.dequantize(q, name)
        bpw = q.nbytes * 8 / x.size
        rel = float(np.linalg.norm(x - back) / np.linalg.norm(x))
        fns = {
            "one": lambda: pg.quantize(x, name, threads=1),
            "all": lambda: pg.quantize(x, name),
            "c": lambda: oracle_quantize(ref, type_id, x),
            "affine": affine,
        }
        if gguf is not None and name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"):
            fns["py"] = lambda t=gguf.GGMLQuantizationType[name]: gguf.quants.quantize(x, t)
        t = median_seconds(fns, args.repeats)
        expected = oracle_quantize(ref, type_id, x)
        exact = np.array_equal(q.view(np.uint8).reshape(-1), expected)
        differs = not np.array_equal(oracle_quantize(native, type_id, x), expected)
        py, ratio_py = (f"{mb / t['py']:.0f}", f"{t['py'] / t['all']:.1f}x") if "py" in t else ("-", "-")
        lines.append(
            f"| {name} | {'yes' if exact else 'NO'} | {bpw:.4g} | {rel:.4f} | {mb / t['one']:.0f} | {mb / t['all']:.0f} | {mb / t['c']:.0f} | "
            f"{t['c'] / t['one']:.2f}x | {py} | {ratio_py} | {t['one'] / t['affine']:.2f}x | "
            f"{'yes' if differs else 'no'} |"
        )
        print(lines[-1], flush=True)
    aff = median_seconds({"affine": affine}, args.repeats)["affine"]
    qt = pyquant.quantize_ptr(x, bits=4, group_size=128)
    rel = float(np.linalg.norm(x - qt.dequantize()) / np.linalg.norm(x))
    bpw = (qt.codes.nbytes + qt.scales.nbytes + qt.mins.nbytes) * 8 / x.size
    lines.append(f"| affine 4-bit g128 (pyquant) | - | {bpw:.4g} | {rel:.4f} | {mb / aff:.0f} | | | | | | 1.00x | |")
    print(lines[-1])
    out = ROOT / "bench" / "results" / "ggml.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    if args.update_readme:
        from run import update_readme  # bench/run.py, beside this script

        update_readme("\n".join(lines[2:]) + f"\n\n{lines[0].lstrip('# ')}; {time.strftime('%Y-%m-%d %H:%M')}.",
                      "ggml-bench")


if __name__ == "__main__":
    main()

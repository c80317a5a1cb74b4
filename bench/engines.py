"""pyquant as the map function of Ray Data, Spark, Dask and Daft, next to
the same work in one process: GB/s of float32 weights read from a directory
of Parquet files, quantized (4 bits, groups of 128) and written as Parquet.

    python bench/engines.py [--files 8] [--tensors 8] [--rows 512] [--cols 1024] [--repeats 3]

Each engine runs the examples/engines script's quantize_dir in local mode
(its session started once, outside the timing; the first, warming run not
counted), best of ``--repeats``; every result is checked byte for byte
against quantize_ptr. "One process" is the same read, quantize_arrow (all
cores) and write in a loop over the files, no engine. Writes
bench/results/engines.md. The machine's cores may be shared with other
work: the numbers are for comparing the rows, not absolute.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pyquant, not an installed one
sys.path.insert(0, str(ROOT / "examples" / "engines"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # engine workers too

import pyquant  # noqa: E402
from common import BITS, GROUP_SIZE, check, make_dataset, no_session  # noqa: E402

ENGINES = {  # label: (examples/engines module, the call)
    "Ray Data": ("ray_data", "ds.map_batches(..., batch_format=\"pyarrow\"), 2 CPUs"),
    "Spark": ("spark", "df.mapInArrow(spark_quantize, SPARK_SCHEMA + \", layer INT\"), local[2]"),
    "Dask": ("dask_dataframe", "ddf.map_partitions(dask_quantize, meta=dask_meta(ddf)), threads"),
    "Daft": ("daft_dataframe", "daft_quantize(df) (batch UDF), native runner"),
}


def one_process(src: str, dst: str) -> None:
    """The same work with no engine: each file read, quantized on all cores, written."""
    os.makedirs(dst, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(src, "*.parquet"))):
        out = pyquant.quantize_arrow(pq.read_table(path), bits=BITS, group_size=GROUP_SIZE)
        pq.write_table(out, os.path.join(dst, os.path.basename(path)))


def timed(session, quantize_dir, src: str, tmp: str, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after a warming one, inside one session."""
    times = []
    with session():
        for r in range(repeats + 1):
            dst = os.path.join(tmp, f"out{r}")
            start = time.perf_counter()
            quantize_dir(src, dst)
            times.append(time.perf_counter() - start)
            check(src, dst)
            shutil.rmtree(dst)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="engines to run (default: all installed)")
    args = parser.parse_args()
    gb = args.files * args.tensors * args.rows * args.cols * 4 / 1e9
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in")
        make_dataset(src, args.files, args.tensors, args.rows, args.cols)
        base = timed(no_session, one_process, src, tmp, args.repeats)
        rows.append(("One process (no engine)", "quantize_arrow per file, all cores", base))
        print(f"one process: {gb / base:.2f} GB/s", flush=True)
        for label, (module, call) in ENGINES.items():
            if args.only and module not in args.only:
                continue
            try:
                m = importlib.import_module(module)
            except ImportError as e:
                print(f"{label}: not installed ({e})")
                continue
            seconds = timed(m.session, m.quantize_dir, src, tmp, args.repeats)
            rows.append((label, call, seconds))
            print(f"{label}: {gb / seconds:.2f} GB/s", flush=True)
    lines = [
        "# pyquant on data engines (bench/engines.py)",
        "",
        f"{args.files} Parquet files of {args.tensors} float32 tensors of {args.rows} x {args.cols} "
        f"({gb * 1e3:.0f} MB), quantized to {BITS} bits in groups of {GROUP_SIZE} and written as Parquet; "
        f"best of {args.repeats} after a warming run, engine start-up not counted; every result "
        f"byte-identical to quantize_ptr. {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        "shared with other work during the run.",
        "",
        "| engine | call | seconds | GB/s | vs one process |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for label, call, seconds in rows:
        lines.append(f"| {label} | `{call}` | {seconds:.2f} | {gb / seconds:.2f} | {base / seconds:.2f}x |")
    out = ROOT / "bench" / "results" / "engines.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()

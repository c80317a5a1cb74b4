"""Whole-file GGUF quantization: `pyquant quantize in.gguf out.gguf --type T`
against llama.cpp's `llama-quantize` (built by tests/llamacpp_build/build.py) on the
same input, both on all cores, in one run: seconds, GB/s of input, peak RSS of
each process (from wait4), and whether the two output files are identical.

    python bench/gguf_vs_llama.py [--embd 2048] [--ff 5632] [--layers 8] [--vocab 32000] [--repeats 3]

The model is a synthetic llama-architecture F16 GGUF written with gguf-py
(random weights), in a temporary directory. Writes bench/results/gguf.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llamacpp_build import build as llama_build  # noqa: E402

TYPES = ("Q8_0", "Q4_0", "Q4_K_M", "Q6_K")


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and standard output of one run of ``cmd``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed")
    return seconds, usage.ru_maxrss * 1024, out


def summary_seconds(out: str) -> float:
    """The seconds of quantize_gguf itself, from the CLI's summary line ("... in 0.61 s (...")."""
    found = re.search(r" in ([0-9.]+) s \(", out)
    if found is None:
        raise RuntimeError(f"no summary line in {out!r}")
    return float(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embd", type=int, default=2048)
    ap.add_argument("--ff", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bin_dir = llama_build.build()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        # Written by a child process: a child forked from a parent that had
        # built the model would inherit its peak RSS (ru_maxrss survives exec).
        src = Path(d) / "model-f16.gguf"
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from test_gguf_file import make_model; from pathlib import Path; "
                        "make_model(Path(sys.argv[2]), 'F16', n_embd=int(sys.argv[3]), n_ff=int(sys.argv[4]), "
                        "n_layer=int(sys.argv[5]), n_vocab=int(sys.argv[6]), n_head=16, n_head_kv=4)",
                        str(ROOT / "tests"), str(src), str(args.embd), str(args.ff), str(args.layers),
                        str(args.vocab)], check=True)
        size = src.stat().st_size
        # The page-cache speed of this file: a copy of it (read from the page cache, written and fsynced),
        # the floor a quantizer that writes a smaller file cannot beat by much. Timed beside each run (the
        # machine may be shared: its load then weighs on both alike).
        def copy() -> float:
            t0 = time.perf_counter()
            shutil.copyfile(src, Path(d) / "copy.gguf")
            with open(Path(d) / "copy.gguf", "rb+") as f:
                os.fsync(f.fileno())
            seconds = time.perf_counter() - t0
            (Path(d) / "copy.gguf").unlink()
            return seconds

        for t in TYPES:
            mine, ref = Path(d) / "mine.gguf", Path(d) / "ref.gguf"
            ours, theirs, copies = [], [], []
            for _ in range(args.repeats):
                for p in (mine, ref):
                    p.unlink(missing_ok=True)
                copies.append(copy())
                ours.append(timed([sys.executable, "-m", "pyquant.cli", "quantize", str(src), str(mine),
                                   "--type", t]))
                theirs.append(timed([str(bin_dir / "llama-quantize"), str(src), str(ref), t]))
            same = filecmp.cmp(mine, ref, shallow=False)
            a, b = statistics.median(s for s, _, _ in ours), statistics.median(s for s, _, _ in theirs)
            inner = statistics.median(summary_seconds(out) for _, _, out in ours)
            copy_s = statistics.median(copies)
            rows.append(f"| {t} | {a:.2f} | {inner:.2f} | {size / a / 1e9:.2f} | {copy_s:.2f} | {a / copy_s:.2f} | "
                        f"{inner / copy_s:.2f} | {max(r for _, r, _ in ours) / 2**20:.0f} | "
                        f"{b:.2f} | {size / b / 1e9:.2f} | {max(r for _, r, _ in theirs) / 2**20:.0f} | "
                        f"{b / a:.2f} | {'yes' if same else 'NO'} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# GGUF whole-file quantization: pyquant vs llama-quantize",
        "",
        f"Input: synthetic llama F16 GGUF, {size / 2**20:.0f} MiB (embd {args.embd}, ff {args.ff}, "
        f"{args.layers} layers, vocab {args.vocab}); both on all {os.cpu_count()} cores; medians of "
        f"{args.repeats}; RSS = peak of the process (pyquant: the whole Python process, interpreter start "
        "included). speed-up = llama-quantize s / pyquant s: below 1, pyquant is slower. Page-cache speed: "
        "copy s = a copy of the input file (read from the page cache, written, fsynced), timed beside each "
        "run; x copy = pyquant s / copy s. in-process s = the seconds of quantize_gguf itself (the CLI's "
        "summary: the process without interpreter start and imports), x copy in-process = in-process s / copy s. "
        "Targets (issue 14): Q8_0 and Q4_0 at page-cache speed, Q4_K_M >= 5x "
        f"llama-quantize. The bytes are the same. Load average during the run: {os.getloadavg()[0]:.1f} "
        "(other sessions on the same cores).",
        "",
        "| type | pyquant s | in-process s | GB/s | copy s | x copy | x copy in-process | peak RSS MiB "
        "| llama-quantize s | GB/s | peak RSS MiB | speed-up | same bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    (ROOT / "bench" / "results" / "gguf.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

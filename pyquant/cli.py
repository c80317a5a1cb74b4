"""The `pyquant` command line: demo, quantize, dequantize, inspect, report.

Errors print one line, ``pyquant: error: ...``, and exit with status 1
(2 for bad command-line usage); no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from typing import Any, TYPE_CHECKING

from ._version import __version__
from ._text import shown
from .errors import QuantizeError

if TYPE_CHECKING:
    from .pipeline import Progress


def _group_size(text: str) -> int | None:
    if text in ("row", "none", "None"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'row', got {text!r}") from None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class ProgressBar:
    """A one-line progress bar on stderr (tensors and bytes done, throughput),
    drawn from a file entry point's ``progress`` callback; at most every 0.1 s
    and at the end. Used only on a terminal."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.drawn = False

    def __call__(self, p: Progress) -> None:
        now = time.perf_counter()
        if now - self.last > 0.1 or p.done_tensors == p.tensors:
            self.last, self.drawn = now, True
            frac = p.done_bytes / p.total_bytes if p.total_bytes else 1.0
            bar = "#" * int(frac * 30)
            rate = p.done_bytes / max(now - self.start, 1e-9) / 1e9
            sys.stderr.write(
                f"\r{p.label} [{bar:<30}] {p.done_tensors}/{p.tensors} tensors "
                f"{p.done_bytes / 1e9:.2f}/{p.total_bytes / 1e9:.2f} GB {rate:.2f} GB/s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")


def _progress_bar(args: argparse.Namespace) -> ProgressBar | None:
    return None if args.quiet or not sys.stderr.isatty() else ProgressBar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyquant",
        description="Fast, zero-copy 2/4/8-bit weight quantization (Rust core, C ABI, CFFI).",
    )
    parser.add_argument("--version", action="version", version=f"pyquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def quant_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bits", type=int, default=4, help="bits per value: 2, 4 or 8 (default: 4)")
        p.add_argument("--group-size", type=_group_size, default=128,
                       help="values per group along the last axis, or 'row' for one group per row (default: 128)")

    demo = sub.add_parser(
        "demo",
        help="quantize a built-in synthetic transformer and print a per-layer table",
        description="Builds a deterministic synthetic transformer in memory (no download), "
        "quantizes every layer at each bit width with the zero-copy path and prints shape, "
        "compression ratio, max abs error, relative RMSE and time per layer; then writes the "
        "model to a temporary safetensors file and runs the file pipeline on it "
        "(quantize, inspect, report, dequantize).",
    )
    demo.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], help="bit widths (default: 8 4 2)")
    demo.add_argument("--group-size", type=_group_size, default=128,
                      help="values per group, or 'row' for one group per row (default: 128)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default: 0)")
    demo.add_argument("--no-files", action="store_true", help="skip the file pipeline part")

    q = sub.add_parser("quantize", help="quantize a safetensors checkpoint",
                       description="Quantizes a .safetensors file or a sharded model directory "
                       "(with model.safetensors.index.json) into a pyquant checkpoint. Floating-point "
                       "tensors of 2+ dimensions are quantized; others (and --skip matches) are carried "
                       "over unchanged. The output is written to a temporary file and renamed at the end.")
    q.add_argument("input", help="a .safetensors file or a model directory")
    q.add_argument("output", help="the output checkpoint file")
    quant_options(q)
    q.add_argument("--format", choices=["safetensors", "arrow"], default="safetensors",
                   help="output format: a safetensors checkpoint, or an Arrow IPC file in the "
                   "Arrow path's schema (default: safetensors)")
    q.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="keep tensors whose name matches this regular expression (repeatable), e.g. lm_head")
    q.add_argument("--bits-for", action="append", default=[], metavar="PATTERN=BITS",
                   help="use BITS for tensors matching PATTERN (repeatable; first match wins)")
    q.add_argument("--force", action="store_true", help="replace the output if it exists")
    q.add_argument("--allow-empty", action="store_true",
                   help="write the output even if no tensor is quantized (otherwise an error)")
    q.add_argument("--quiet", action="store_true", help="no progress bar, carried-over reasons or summary")
    g = q.add_argument_group("GGUF in, GGUF out (as llama-quantize; chosen by an input .gguf file)")
    g.add_argument("--type", metavar="PRESET",
                   help="llama-quantize's preset: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M "
                   "Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS")
    g.add_argument("--imatrix", metavar="FILE", help="llama.cpp importance matrix (GGUF or legacy .dat)")
    g.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                   help="GGML type for tensors whose name matches the regular expression (repeatable)")
    g.add_argument("--output-tensor-type", metavar="TYPE", help="GGML type of output.weight")
    g.add_argument("--token-embedding-type", metavar="TYPE", help="GGML type of token_embd.weight")
    g.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight unquantized")
    g.add_argument("--pure", action="store_true", help="the preset's type for every tensor (no promotions)")
    g.add_argument("--arch", help="safetensors -> GGUF (an output named *.gguf): general.architecture to write; "
                   "--type is then a GGML type (Q4_K, Q8_0, ...)")

    d = sub.add_parser("dequantize", help="turn a pyquant checkpoint back into a plain safetensors file",
                       description="Writes every tensor in its original dtype and shape.")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--force", action="store_true", help="replace the output if it exists")
    d.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    d.add_argument("--dtype", type=str.upper, choices=["F32", "F16", "BF16"],
                   help="a GGUF input: the float type of the dequantized tensors (default F32)")

    i = sub.add_parser("inspect", help="list what a checkpoint holds",
                       description="Tensors, dtypes, shapes, bits, sizes and compression ratio.")
    i.add_argument("file")

    r = sub.add_parser("report", help="error statistics of a quantized checkpoint against its original",
                       description="Per tensor: max abs error, RMSE, relative RMSE, cosine similarity and "
                       "SNR in dB; then a summary.")
    r.add_argument("original")
    r.add_argument("quantized")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def is_gguf(path: str) -> bool:
    from .gguf_file import is_gguf as check

    return check(path)


def _tensor_types(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        pattern, sep, name = spec.partition("=")
        if not sep or not pattern or not name:
            raise QuantizeError(f"--tensor-type {spec!r}: expected PATTERN=TYPE")
        out.append((pattern, name))
    return out


def cmd_quantize_gguf(args: argparse.Namespace) -> None:
    from .pipeline import quantize_gguf

    if args.type is None:
        raise QuantizeError(f"{args.input}: a GGUF file: quantizing it (into GGUF, as llama-quantize) needs "
                            "--type PRESET, e.g. --type Q4_K_M")
    bar = _progress_bar(args)
    try:
        s = quantize_gguf(args.input, args.output, preset=args.type, imatrix=args.imatrix, tensor_types=_tensor_types(args.tensor_type),
                          output_tensor_type=args.output_tensor_type,
                          token_embedding_type=args.token_embedding_type,
                          leave_output_tensor=args.leave_output_tensor, pure=args.pure, force=args.force,
                          progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(f"quantized {s.quantized} tensors, kept {s.kept}: {_fmt_bytes(s.input_bytes)} -> "
              f"{_fmt_bytes(s.output_bytes)} ({s.input_bytes / max(s.output_bytes, 1):.2f}x) "
              f"in {s.seconds:.2f} s ({s.gb_per_s:.2f} GB/s) -> {args.output}")


def cmd_safetensors_to_gguf(args: argparse.Namespace) -> None:
    from .pipeline import safetensors_to_gguf

    if args.type is None:
        raise QuantizeError(f"{args.output}: a GGUF output needs --type TYPE (e.g. --type Q4_K)")
    bar = _progress_bar(args)
    try:
        s = safetensors_to_gguf(args.input, args.output, qtype=args.type, arch=args.arch, force=args.force,
                                progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        for name, why in s.kept_reasons.items():
            print(f"kept {shown(name)}: {why}")
        print(f"quantized {s.quantized} tensors, kept {s.kept}: {_fmt_bytes(s.input_bytes)} -> "
              f"{_fmt_bytes(s.output_bytes)} in {s.seconds:.2f} s -> {args.output}")


def cmd_quantize(args: argparse.Namespace) -> None:
    from .pipeline import quantize_file
    from .plan import parse_bits_for

    if is_gguf(args.input):
        cmd_quantize_gguf(args)
        return
    if args.output.endswith(".gguf"):
        cmd_safetensors_to_gguf(args)
        return
    gguf_only = [o for o, v in (("--type", args.type), ("--imatrix", args.imatrix), ("--tensor-type", args.tensor_type),
                                ("--output-tensor-type", args.output_tensor_type),
                                ("--token-embedding-type", args.token_embedding_type),
                                ("--leave-output-tensor", args.leave_output_tensor), ("--pure", args.pure),
                                ("--arch", args.arch)) if v]
    if gguf_only:
        raise QuantizeError(f"{' '.join(gguf_only)}: only for a GGUF input ({args.input} is not a GGUF file)")
    bar = _progress_bar(args)
    try:
        s = quantize_file(args.input, args.output, bits=args.bits, group_size=args.group_size,
                          format=args.format, skip=args.skip, bits_for=parse_bits_for(args.bits_for),
                          force=args.force, allow_empty=args.allow_empty, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        for name, why in s.kept_reasons.items():
            print(f"kept {shown(name)}: {why}")
        print(f"quantized {s.quantized} tensors, kept {s.kept}: {_fmt_bytes(s.input_bytes)} -> "
              f"{_fmt_bytes(s.output_bytes)} ({s.input_bytes / max(s.output_bytes, 1):.2f}x) "
              f"in {s.seconds:.2f} s ({s.gb_per_s:.2f} GB/s) -> {args.output}")


def cmd_dequantize_gguf(args: argparse.Namespace) -> None:
    from .pipeline import dequantize_gguf

    s = dequantize_gguf(args.input, args.output, dtype=args.dtype or "F32", force=args.force)
    if not args.quiet:
        print(f"dequantized {s.quantized} tensors, copied {s.kept}: {_fmt_bytes(s.input_bytes)} -> "
              f"{_fmt_bytes(s.output_bytes)} in {s.seconds:.2f} s -> {args.output}")


def cmd_dequantize(args: argparse.Namespace) -> None:
    from .pipeline import dequantize_file

    if is_gguf(args.input):
        cmd_dequantize_gguf(args)
        return
    if args.dtype is not None:
        raise QuantizeError(f"--dtype: only for a GGUF input ({args.input} is not a GGUF file)")
    bar = _progress_bar(args)
    try:
        s = dequantize_file(args.input, args.output, force=args.force, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(f"dequantized {s.quantized} tensors, copied {s.kept}: {_fmt_bytes(s.output_bytes)} "
              f"in {s.seconds:.2f} s -> {args.output}")


def inspect_gguf_text(path: str) -> str:
    """The tensors of a GGUF file: GGML type, shape, bytes and bits per weight."""
    from .gguf_file import GGUFFile
    from .metrics import format_table

    with GGUFFile(path) as f:
        table = [[shown(t.name), t.type_name, "x".join(map(str, t.shape)), _fmt_bytes(t.nbytes),
                  f"{8 * t.nbytes / t.n_values:.4g}"] for t in f.tensors]
        total, values = sum(t.nbytes for t in f.tensors), sum(t.n_values for t in f.tensors)
        arch, ftype = f.value("general.architecture", "?"), f.value("general.file_type", "?")
        return (f"{path}: GGUF v{f.version}, architecture {arch}, file_type {ftype}, {len(f.tensors)} tensors, "
                f"{len(f.kv)} key-value pairs\n"
                + format_table(["tensor", "type", "shape (ne0 first)", "bytes", "bpw"], table)
                + f"\ntotal: {_fmt_bytes(total)}, {8 * total / max(values, 1):.3f} bits per weight")


def inspect_text(path: str) -> str:
    from .report import inspect
    from .metrics import format_table

    if is_gguf(path):
        return inspect_gguf_text(path)
    rows, meta = inspect(path)
    table = [[shown(r.name), r.dtype, "x".join(map(str, r.shape)) or "scalar", r.bits or "-",
              r.group_size or "-", _fmt_bytes(r.stored_bytes),
              f"{r.original_bytes / r.stored_bytes:.2f}x" if r.stored_bytes else "-"] for r in rows]
    stored = sum(r.stored_bytes for r in rows)
    orig = sum(r.original_bytes for r in rows)
    kind = "pyquant checkpoint" if meta.get("format") == "pyquant" else "safetensors checkpoint"
    n_q = sum(r.bits is not None for r in rows)
    return (f"{path}: {kind}, {len(rows)} tensors ({n_q} quantized)\n"
            + format_table(["tensor", "dtype", "shape", "bits", "group", "stored", "ratio"], table)
            + f"\ntotal: {_fmt_bytes(stored)} stored, {_fmt_bytes(orig)} original "
            f"({orig / stored if stored else 1:.2f}x)")


def report_text(original: str, quantized: str, as_json: bool) -> str:
    from .report import error_report, gguf_error_report
    from .metrics import format_table

    rep = gguf_error_report(original, quantized) if is_gguf(quantized) else error_report(original, quantized)
    if as_json:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isinf(v) else v

        d = rep.as_dict()
        d["tensors"] = [{k: clean(v) for k, v in t.items()} for t in d["tensors"]]
        return json.dumps(d, indent=2)
    rows = [[shown(t.name), "x".join(map(str, t.shape)), f"{t.bits:.4g}" if t.bits else "kept", f"{t.stats.max_abs:.3e}",
             f"{t.stats.rmse:.3e}", f"{t.stats.rel_rmse:.4f}", f"{t.stats.cosine:.6f}",
             "inf" if math.isinf(t.stats.snr_db) else f"{t.stats.snr_db:.1f}"] for t in rep.tensors]
    s = rep.summary()
    return (format_table(["tensor", "shape", "bits", "max abs", "RMSE", "rel RMSE", "cosine", "SNR dB"], rows)
            + f"\nsummary: {s['quantized']} quantized, {s['kept']} kept; mean rel RMSE {s['mean_rel_rmse']:.4f}, "
            f"worst {s['worst_rel_rmse']:.4f} ({shown(s['worst_tensor'] or '-')}), min cosine {s['min_cosine']:.6f}")


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so outputs in progress are removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options no run could use are usage errors (exit 2), found before any work."""
    if args.command != "quantize":
        return
    from .plan import check_options, parse_bits_for

    try:
        check_options(args.bits, args.group_size, parse_bits_for(args.bits_for))
    except QuantizeError as exc:
        parser.error(f"quantize: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:  # leave handlers an embedding program set alone
            signal.signal(sig, _terminate)
    try:
        if args.command == "demo":
            from . import demo

            print(demo.run(args.bits, args.group_size, args.seed))
            if not args.no_files:
                print(demo.run_files(args.bits[len(args.bits) // 2], args.group_size, args.seed))
        elif args.command == "quantize":
            cmd_quantize(args)
        elif args.command == "dequantize":
            cmd_dequantize(args)
        elif args.command == "inspect":
            print(inspect_text(args.file))
        elif args.command == "report":
            print(report_text(args.original, args.quantized, args.json))
    except (QuantizeError, OSError) as exc:
        print(f"pyquant: error: {shown(str(exc), 2000, backslashes=False)}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else is a bug in pyquant: still one line, no traceback
        print(f"pyquant: internal error (a bug in pyquant, please report it): {type(exc).__name__}: "
              f"{shown(str(exc), 2000, backslashes=False)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyquant: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"pyquant: terminated by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())

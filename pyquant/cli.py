"""The `pyquant` command line (also ``python -m pyquant``): demo, quantize,
dequantize, inspect, report.

Errors print one line, ``pyquant: error: ...``, and exit with status 1
(2 for bad command-line usage); no tracebacks. A closed pipe
(``pyquant inspect x | head``) ends the command quietly, as Unix tools do.
Progress bars (tqdm) are drawn on stderr only when it is a terminal, and
never with ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
from typing import Any, TYPE_CHECKING

from ._version import __version__
from ._text import shown
from .errors import QuantizeError

if TYPE_CHECKING:
    from .pipeline import Progress, Summary
    from .report import InspectRow


def _group_size(text: str) -> int | None:
    if text in ("row", "none", "None"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'row', got {text!r}") from None


def _layer_list(text: str) -> list[int]:
    """--prune-layers: comma-separated block numbers >= 0."""
    try:
        out = [int(part) for part in text.split(",")]
    except ValueError:
        out = [-1]
    if any(i < 0 for i in out):
        raise argparse.ArgumentTypeError(f"expected block numbers >= 0 separated by commas, got {text!r}")
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class ProgressBar:
    """A tqdm bar on stderr (bytes done, throughput, tensors done), drawn from
    a file entry point's ``progress`` callback. Used only on a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]  # (no stubs; used through Any)

        if self.bar is None:
            # shutil: a terminal that reports a 0x0 size (a bare pty) counts as 80x24; tqdm
            # would draw nothing there.
            size = shutil.get_terminal_size()
            self.bar = tqdm(total=p.total_bytes or None, desc=p.label, unit="B", unit_scale=True,
                            file=sys.stderr, ncols=size.columns, nrows=size.lines, mininterval=0.1)
        self.bar.set_postfix_str(f"{p.done_tensors}/{p.tensors or '?'} tensors", refresh=False)
        self.bar.update(p.done_bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(args: argparse.Namespace) -> ProgressBar | None:
    return None if args.quiet or not sys.stderr.isatty() else ProgressBar()


# The format an output's extension implies (`quantize --format` must agree).
EXTENSIONS = {".safetensors": "safetensors", ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}


def _format_of(path: str) -> str | None:
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


EXAMPLES = """examples:
  pyquant demo                                   # no files needed: a synthetic model, per-layer table
  pyquant quantize model.safetensors model.q4.safetensors --bits 4 --skip lm_head
  pyquant report model.safetensors model.q4.safetensors --json | jq .summary
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyquant",
        description="Fast, zero-copy 2/3/4/8-bit weight quantization (Rust core, C ABI, CFFI).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, help: str, description: str, *examples: str) -> argparse.ArgumentParser:
        """A subcommand whose --help ends with its examples."""
        return sub.add_parser(name, help=help, description=description,
                              epilog="examples:\n" + "".join(f"  pyquant {name} {e}".rstrip() + "\n" for e in examples),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def quant_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bits", type=int, default=4, help="bits per value: 2, 3, 4 or 8 (default: 4)")
        p.add_argument("--group-size", type=_group_size, default=128,
                       help="values per group along the last axis, or 'row' for one group per row (default: 128)")

    demo = command(
        "demo", "quantize a built-in synthetic transformer and print a per-layer table",
        "Builds a deterministic synthetic transformer in memory (no download), "
        "quantizes every layer at each bit width with the zero-copy path and prints shape, "
        "compression ratio, max abs error, relative RMSE and time per layer (!! flags a layer whose "
        "relative RMSE is high enough to break a model); then writes the "
        "model to a temporary safetensors file and runs the file pipeline on it "
        "(quantize, inspect, report, dequantize).",
        "", "--bits 4 --group-size 64 --no-files",
    )
    demo.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], help="bit widths (default: 8 4 2)")
    demo.add_argument("--group-size", type=_group_size, default=128,
                      help="values per group, or 'row' for one group per row (default: 128)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default: 0)")
    demo.add_argument("--no-files", action="store_true", help="skip the file pipeline part")

    q = command("quantize", "quantize a safetensors checkpoint",
                "Quantizes a .safetensors file or a sharded model directory "
                       "(with model.safetensors.index.json) into a pyquant checkpoint. Floating-point "
                       "tensors of 2+ dimensions are quantized; others (and --skip matches) are carried "
                "over unchanged. The output is written to a temporary file and renamed at the end.",
                "model.safetensors model.q4.safetensors",
                "llama/ llama.q4.safetensors --skip lm_head --bits-for 'mlp=8'",
                "model.safetensors model.q4.arrow   # the Arrow format, by extension")
    q.add_argument("input", help="a .safetensors file or a model directory")
    q.add_argument("output", help="the output checkpoint file (.safetensors, or .arrow for the Arrow format)")
    quant_options(q)
    q.add_argument("--method", choices=["minmax", "search"], default="minmax",
                   help="how each group's scale and min are chosen: its range, or an error-minimizing "
                        "search (lower error, slower; docs/scheme.md) (default: minmax)")
    q.add_argument("--scale-dtype", choices=["float32", "float16"], default="float32",
                   help="how scales and mins are stored; float16 saves 32 bits per group (default: float32)")
    q.add_argument("--axis", type=int, choices=[-1, 0], default=-1,
                   help="-1: groups along the rows; 0: groups down the columns of 2-D tensors, stored as "
                        "the transpose's (other tensors are kept) (default: -1)")
    q.add_argument("--format", choices=["safetensors", "arrow"], default=None,
                   help="output format: a safetensors checkpoint, or an Arrow IPC file in the "
                   "Arrow path's schema (default: from the output's extension, .arrow/.ipc/.feather "
                   "for arrow, else safetensors); a format the extension contradicts is refused")
    q.add_argument("--force-format", action="store_true",
                   help="write --format even if the output's extension says otherwise")
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
                   "Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS, F32 F16 BF16 (every quantizable tensor converted), or COPY (every "
                   "tensor copied unchanged)")
    g.add_argument("--imatrix", metavar="FILE", help="llama.cpp importance matrix (GGUF or legacy .dat)")
    g.add_argument("--include-weights", action="append", default=[], metavar="NAME",
                   help="use the importance matrix only for tensors whose name contains NAME (repeatable)")
    g.add_argument("--exclude-weights", action="append", default=[], metavar="NAME",
                   help="do not use the importance matrix for tensors whose name contains NAME (repeatable; "
                   "not with --include-weights)")
    g.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                   type=lambda text: ("spec", text),
                   help="GGML type for tensors whose name matches the regular expression (repeatable)")
    g.add_argument("--tensor-type-file", action="append", dest="tensor_type", metavar="FILE",
                   type=lambda text: ("file", text),
                   help="PATTERN=TYPE entries separated by spaces or newlines (taken in order with --tensor-type)")
    g.add_argument("--output-tensor-type", metavar="TYPE", help="GGML type of output.weight")
    g.add_argument("--token-embedding-type", metavar="TYPE", help="GGML type of token_embd.weight")
    g.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight unquantized")
    g.add_argument("--pure", action="store_true", help="the preset's type for every tensor (no promotions)")
    g.add_argument("--allow-requantize", action="store_true",
                   help="accept already quantized tensors (dequantized, then quantized: lower quality than from "
                   "16 or 32 bits)")
    g.add_argument("--override-kv", action="append", default=[], metavar="KEY=TYPE:VALUE",
                   help="set a key-value pair in the output (TYPE int, float, bool or str; repeatable), "
                   "e.g. general.name=str:mine")
    g.add_argument("--prune-layers", type=_layer_list, default=[], metavar="L0,L1,...",
                   help="leave these blocks out (the later ones numbered down; block_count set): use with care")
    g.add_argument("--dry-run", action="store_true",
                   help="write nothing: say how many tensors would change type and the output's tensor bytes")
    g.add_argument("--keep-split", action="store_true",
                   help="one output file per input file, OUTPUT-00001-of-0000N.gguf (the input may be a split "
                   "model, given by its first file NAME-00001-of-0000N.gguf, with or without this)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads that quantize (llama-quantize's positional [nthreads]); 0 or less: all cores "
                   "(the default)")
    g.add_argument("--arch", help="safetensors -> GGUF (an output named *.gguf): general.architecture to write; "
                   "--type is then a GGML type (Q4_K, Q8_0, ...)")

    d = command("dequantize", "turn a pyquant checkpoint or a quantized GGUF file back into float tensors",
                "Writes every tensor in its original shape: quantized tensors in their "
                "original dtype (or --dtype), carried-over tensors unchanged. A GGUF input gives a "
                "GGUF file (F32/F16/BF16 tensors), or a safetensors file if the output is named *.safetensors.",
                "model.q4.safetensors restored.safetensors",
                "model.q4.arrow restored.safetensors --dtype float16",
                "model-Q4_K_M.gguf model.safetensors   # or model-f16.gguf --dtype F16: a GGUF file")
    d.add_argument("input", help="a pyquant checkpoint (safetensors or Arrow format) or a GGUF file")
    d.add_argument("output", help="the file to write: plain safetensors (a GGUF input: GGUF unless "
                   "named *.safetensors)")
    d.add_argument("--dtype", type=_float_dtype, choices=list(_GGUF_FLOAT_TYPES), default=None,
                   help="dtype of the dequantized tensors (default: each tensor's original dtype; a GGUF "
                   "input: float32); carried-over tensors keep theirs. F32/F16/BF16 are accepted too")
    d.add_argument("--force", action="store_true", help="replace the output if it exists")
    d.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    i = command("inspect", "list what a checkpoint holds",
                "Tensors, dtypes, shapes, bits, sizes and compression ratio; for each "
                "tensor a pyquant checkpoint carried over unchanged, why it was kept.",
                "model.q4.safetensors", "model.q4.arrow --json")
    i.add_argument("file", help="a safetensors file, a pyquant checkpoint (either format) or a GGUF file")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    r = command("report", "error statistics of a quantized checkpoint against its original",
                "Per tensor: max abs error, RMSE, relative RMSE, cosine similarity and "
                "SNR in dB (!! flags a tensor whose relative RMSE is high enough to break a model; "
                "a carried-over tensor says why it was kept); then a summary.",
                "model.safetensors model.q4.safetensors", "model.safetensors model.q2.arrow --json")
    r.add_argument("original", help="the original safetensors file or model directory (or GGUF file)")
    r.add_argument("quantized", help="the pyquant checkpoint made from it (either format), or the GGUF file")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def is_gguf(path: str) -> bool:
    from .gguf_file import is_gguf as check

    return check(path)


def _tensor_types(specs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """--tensor-type and --tensor-type-file entries, in command-line order (as llama-quantize takes them)."""
    from .llama_quant import parse_tensor_type, read_tensor_type_file

    out = []
    for kind, text in specs:
        out += read_tensor_type_file(text) if kind == "file" else [parse_tensor_type(text)]
    return out


def _print_summary(args: argparse.Namespace, s: Summary, dequantized: bool = False, reasons: bool = True) -> None:
    """The closing lines of quantize / dequantize (none with --quiet): why each
    tensor was carried over (``reasons``), then counts, sizes and speed."""
    if args.quiet:
        return
    for name, why in s.kept_reasons.items() if reasons else ():
        print(f"kept {shown(name)}: {why}")
    verb, kept = ("dequantized", "copied") if dequantized else ("quantized", "kept")
    print(f"{verb} {s.quantized} tensors, {kept} {s.kept}: {_fmt_bytes(s.input_bytes)} -> "
          f"{_fmt_bytes(s.output_bytes)} ({s.input_bytes / max(s.output_bytes, 1):.2f}x) "
          f"in {s.seconds:.2f} s ({s.gb_per_s:.2f} GB/s) -> {args.output}")


# The options of GGUF -> GGUF quantization (llama-quantize's), by argparse dest.
_LLAMA_OPTIONS = ("imatrix", "include_weights", "exclude_weights", "tensor_type", "output_tensor_type",
                  "token_embedding_type", "leave_output_tensor", "pure", "allow_requantize", "override_kv",
                  "keep_split", "prune_layers", "dry_run")


def _given(args: argparse.Namespace, dests: tuple[str, ...]) -> list[str]:
    """The options among ``dests`` given on the command line, spelled as typed."""
    return ["--" + d.replace("_", "-") for d in dests if getattr(args, d) not in (None, False, [])]


def _threads(args: argparse.Namespace) -> int | None:
    """--threads as llama-quantize takes nthreads: 0 or less (or not given) is all cores."""
    return args.threads if args.threads is not None and args.threads > 0 else None


def cmd_quantize_gguf(args: argparse.Namespace) -> None:
    from .pipeline import quantize_gguf

    if args.arch is not None:
        raise QuantizeError(f"--arch: only for a safetensors input written as GGUF ({args.input} is a GGUF file: "
                            "its architecture is kept)")

    if args.type is None:
        raise QuantizeError(f"{args.input}: a GGUF file: quantizing it (into GGUF, as llama-quantize) needs "
                            "--type PRESET, e.g. --type Q4_K_M")
    bar = _progress_bar(args)
    try:
        s = quantize_gguf(args.input, args.output, preset=args.type, imatrix=args.imatrix,
                          include_weights=args.include_weights, exclude_weights=args.exclude_weights,
                          tensor_types=_tensor_types(args.tensor_type), output_tensor_type=args.output_tensor_type,
                          token_embedding_type=args.token_embedding_type,
                          leave_output_tensor=args.leave_output_tensor, pure=args.pure,
                          allow_requantize=args.allow_requantize, override_kv=args.override_kv,
                          keep_split=args.keep_split, prune_layers=args.prune_layers, dry_run=args.dry_run,
                          force=args.force, threads=_threads(args), progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if args.dry_run:
        if not args.quiet:
            print(f"dry run: {s.quantized} tensors would change type, {s.kept} would be copied: "
                  f"{_fmt_bytes(s.input_bytes)} -> {_fmt_bytes(s.output_bytes)} of tensor data "
                  f"({s.input_bytes / max(s.output_bytes, 1):.2f}x); nothing written")
        return
    _print_summary(args, s, reasons=False)  # what stays unquantized is the type choice's, not news


def cmd_safetensors_to_gguf(args: argparse.Namespace) -> None:
    from .pipeline import safetensors_to_gguf

    if args.type is None:
        raise QuantizeError(f"{args.output}: a GGUF output needs --type TYPE (e.g. --type Q4_K)")
    unused = _given(args, _LLAMA_OPTIONS)
    if unused:
        raise QuantizeError(f"{' '.join(unused)}: only for a GGUF input (llama-quantize's options; "
                            f"{args.input} is not a GGUF file)")
    bar = _progress_bar(args)
    try:
        s = safetensors_to_gguf(args.input, args.output, qtype=args.type, arch=args.arch, force=args.force,
                                threads=_threads(args), progress=bar)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(args, s)


def cmd_quantize(args: argparse.Namespace) -> None:
    from .pipeline import quantize_file
    from .plan import parse_bits_for

    if (args.method, args.scale_dtype, args.axis) != ("minmax", "float32", -1) and (
            is_gguf(args.input) or args.output.endswith(".gguf")):
        raise QuantizeError("--method / --scale-dtype / --axis are for pyquant checkpoints, not GGUF files (see --type)")
    if is_gguf(args.input):
        cmd_quantize_gguf(args)
        return
    if args.output.endswith(".gguf"):
        cmd_safetensors_to_gguf(args)
        return
    gguf_only = _given(args, ("type", *_LLAMA_OPTIONS, "arch", "threads"))
    if gguf_only:
        raise QuantizeError(f"{' '.join(gguf_only)}: only for a GGUF input or a .gguf output ({args.input} is not "
                            "a GGUF file)")
    bar = _progress_bar(args)
    try:
        s = quantize_file(args.input, args.output, bits=args.bits, group_size=args.group_size,
                          format=args.format or _format_of(args.output) or "safetensors", skip=args.skip, bits_for=parse_bits_for(args.bits_for),
                          force=args.force, allow_empty=args.allow_empty, progress=bar,
                          method=args.method, scale_dtype=args.scale_dtype, axis=args.axis)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(args, s)


# The --dtype choices (numpy names) and their GGML type names, for a GGUF input.
_GGUF_FLOAT_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _float_dtype(text: str) -> str:
    """``--dtype``: a numpy name, or its GGML spelling (F32, F16, BF16), as the numpy name."""
    by_ggml = {v: k for k, v in _GGUF_FLOAT_TYPES.items()}
    return by_ggml.get(text.upper(), text.lower())


def cmd_dequantize_gguf(args: argparse.Namespace) -> None:
    from .pipeline import dequantize_gguf

    bar = _progress_bar(args)
    try:
        s = dequantize_gguf(args.input, args.output, dtype=_GGUF_FLOAT_TYPES[args.dtype or "float32"],
                            force=args.force, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(args, s, dequantized=True)


def cmd_dequantize(args: argparse.Namespace) -> None:
    from .pipeline import dequantize_file

    if is_gguf(args.input):
        cmd_dequantize_gguf(args)
        return
    bar = _progress_bar(args)
    try:
        s = dequantize_file(args.input, args.output, force=args.force, dtype=args.dtype, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(args, s, dequantized=True)


def inspect_gguf_text(path: str, rows: list[InspectRow], meta: dict[str, str]) -> str:
    """The tensors of a GGUF file: GGML type, shape, bytes and bits per weight."""
    from .metrics import format_table

    table = [[shown(r.name), r.dtype, "x".join(map(str, reversed(r.shape))), _fmt_bytes(r.stored_bytes),
              f"{r.bits_per_weight:.4g}"] for r in rows]
    total = sum(r.stored_bytes for r in rows)
    values = sum(math.prod(r.shape) for r in rows)
    return (f"{path}: GGUF, architecture {meta.get('general.architecture', '?')}, file_type "
            f"{meta.get('general.file_type', '?')}, {len(rows)} tensors, {len(meta) - 1} key-value pairs\n"
            + format_table(["tensor", "type", "shape (ne0 first)", "bytes", "bpw"], table)
            + f"\ntotal: {_fmt_bytes(total)}, {8 * total / max(values, 1):.3f} bits per weight")


def inspect_text(path: str, as_json: bool = False) -> str:
    from .report import inspect
    from .metrics import format_table

    rows, meta = inspect(path)
    gguf = meta.get("format") == "gguf"
    if as_json:
        return json.dumps({
            "file": path, "format": meta.get("format"),
            "container": "gguf" if gguf else meta.get("pyquant.container", "safetensors"),
            "tensors": [{"name": r.name, "dtype": r.dtype, "shape": list(r.shape), "bits": r.bits,
                         "group_size": r.group_size, "stored_bytes": r.stored_bytes,
                         "original_bytes": r.original_bytes, "kept_because": r.kept_because,
                         **({"bits_per_weight": r.bits_per_weight} if gguf else {})} for r in rows],
        }, indent=2)
    if gguf:
        return inspect_gguf_text(path, rows, meta)
    table = [[shown(r.name), r.dtype, "x".join(map(str, r.shape)) or "scalar", r.bits or "-",
              r.group_size or "-", _fmt_bytes(r.stored_bytes),
              f"{r.original_bytes / r.stored_bytes:.2f}x" if r.stored_bytes else "-"] for r in rows]
    stored = sum(r.stored_bytes for r in rows)
    orig = sum(r.original_bytes for r in rows)
    kind = "pyquant checkpoint" if meta.get("format") == "pyquant" else "safetensors checkpoint"
    n_q = sum(r.bits is not None for r in rows)
    kept = "".join(f"\nkept {shown(r.name)}: {shown(r.kept_because)}" for r in rows if r.kept_because)
    return (f"{path}: {kind}, {len(rows)} tensors ({n_q} quantized)\n"
            + format_table(["tensor", "dtype", "shape", "bits", "group", "stored", "ratio"], table)
            + f"\ntotal: {_fmt_bytes(stored)} stored, {_fmt_bytes(orig)} original "
            f"({orig / stored if stored else 1:.2f}x)" + kept)


def report_text(original: str, quantized: str, as_json: bool, bar: ProgressBar | None = None) -> str:
    from .report import error_report
    from .metrics import HIGH_ERROR_NOTE, format_table

    try:
        rep = error_report(original, quantized, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isinf(v) else v

        d = rep.as_dict()
        d["tensors"] = [{k: clean(v) for k, v in t.items()} for t in d["tensors"]]
        return json.dumps(d, indent=2)
    rows = [[shown(t.name), "x".join(map(str, t.shape)), f"{t.bits:.4g}" if t.bits else "kept", f"{t.stats.max_abs:.3e}",
             f"{t.stats.rmse:.3e}", f"{t.stats.rel_rmse:.4f}", f"{t.stats.cosine:.6f}",
             "inf" if math.isinf(t.stats.snr_db) else f"{t.stats.snr_db:.1f}",
             "!!" if t.high_error else ""] for t in rep.tensors]
    s = rep.summary()
    kept = "".join(f"\nkept {shown(t.name)}: {shown(t.kept_because)}" for t in rep.tensors if t.kept_because)
    flagged = (f"\n{len(s['high_error'])} of {s['quantized']} quantized tensors flagged. {HIGH_ERROR_NOTE}"
               if s["high_error"] else "")
    return (format_table(["tensor", "shape", "bits", "max abs", "RMSE", "rel RMSE", "cosine", "SNR dB", "flag"],
                         rows)
            + f"\nsummary: {s['quantized']} quantized, {s['kept']} kept; mean rel RMSE {s['mean_rel_rmse']:.4f}, "
            f"worst {s['worst_rel_rmse']:.4f} ({shown(s['worst_tensor'] or '-')}), min cosine {s['min_cosine']:.6f}"
            + kept + flagged)


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

    implied = _format_of(args.output)
    if args.format is not None and implied is not None and implied != args.format and not args.force_format:
        parser.error(f"quantize: --format {args.format}, but the output {shown(args.output)!r} is named like a "
                     f"{implied} file: name it {'.arrow' if args.format == 'arrow' else '.safetensors'}, "
                     "or add --force-format")

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
            print(inspect_text(args.file, args.json))
        elif args.command == "report":
            print(report_text(args.original, args.quantized, args.json, _progress_bar(args)))
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
    except BrokenPipeError:
        # The reader went away (`pyquant inspect x | head`): stop quietly, as
        # Unix tools do; stdout goes to /dev/null so the exit flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
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

"""The `pyquant` command line."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__
from .errors import QuantizeError


def _group_size(text: str) -> int | None:
    if text in ("row", "none", "None"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'row', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyquant",
        description="Fast, zero-copy 2/4/8-bit weight quantization (Rust core, C ABI, CFFI).",
    )
    parser.add_argument("--version", action="version", version=f"pyquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="quantize a built-in synthetic transformer and print a per-layer table",
        description="Builds a deterministic synthetic transformer in memory (no download), "
        "quantizes every layer at each bit width with the zero-copy path and prints shape, "
        "compression ratio, max abs error, relative RMSE and time per layer.",
    )
    demo.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], help="bit widths (default: 8 4 2)")
    demo.add_argument("--group-size", type=_group_size, default=128,
                      help="values per group, or 'row' for one group per row (default: 128)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from . import demo

            print(demo.run(args.bits, args.group_size, args.seed))
    except QuantizeError as exc:
        print(f"pyquant: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

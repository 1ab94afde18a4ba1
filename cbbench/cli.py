"""The ``cbbench`` command line. Each sub-command lives in its own module exposing ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import sys

# module path of each sub-command, imported only when the parser is built
COMMAND_MODULES = [
    "cbbench.commands.weights",
    "cbbench.commands.train",
    "cbbench.commands.compare",
    "cbbench.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbbench", description="Class-balanced losses: kernels and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cbbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``cbbench`` command line. Each sub-command lives in its own module exposing ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

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
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: `kill -INT` would then never stop a long run. Interrupts always stop cbbench.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cbbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a comparison says what it kept; anything else kept nothing
        print(f"\ncbbench {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

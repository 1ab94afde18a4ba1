"""The ``cbbench`` command line. Each sub-command lives in its own module exposing ``register(subparsers)``.

Under a launcher (``torchrun --nproc_per_node=N -m cbbench train|compare ...``) the sub-commands that set
the default ``data_parallel=True`` run inside the launcher's process group (:mod:`cbbench.harness.ddp`);
the others refuse to run on several processes.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

# module path of each sub-command, imported only when the parser is built
COMMAND_MODULES = [
    "cbbench.commands.weights",
    "cbbench.commands.train",
    "cbbench.commands.compare",
    "cbbench.commands.bench",
    "cbbench.commands.effective_study",
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
    where = _rank_note()
    try:
        with _process_group(args):
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cbbench {args.command}{where}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a comparison says what it kept; anything else kept nothing
        print(f"\ncbbench {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


def _rank_note() -> str:
    """`` (rank r)`` in messages of a process that a launcher started among several, else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ:
        return f" (rank {os.environ['RANK']})"
    return ""


def _process_group(args):
    """The launcher's process group for a data parallel sub-command (nothing without a launcher)."""
    from .harness import ddp

    if not ddp.launched():
        return contextlib.nullcontext()
    if not getattr(args, "data_parallel", False):
        if int(os.environ["WORLD_SIZE"]) > 1:
            raise ValueError(f"'cbbench {args.command}' runs in one process; under torchrun only 'train' and "
                             "'compare' run (data parallel)")
        return contextlib.nullcontext()
    from .harness.train import resolve_device

    return ddp.process_group(resolve_device(args.device))


if __name__ == "__main__":
    raise SystemExit(main())

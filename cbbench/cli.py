"""The ``cbbench`` command line. Each sub-command lives in its own module exposing ``register(subparsers)``.

Under a launcher (``torchrun --nproc_per_node=N -m cbbench train|compare ...``) the sub-commands that set
the default ``data_parallel=True`` run inside the launcher's process group (:mod:`cbbench.harness.ddp`);
the others refuse to run on several processes.

Exit codes (the table: :mod:`cbbench.harness.errors`): 0 success, 2 usage (or the ``bench`` extra is not
installed), 3 input data, 4 output folder not writable, 5 output folder busy (locked by another cbbench), 6
``--resume`` conflict, 130 SIGINT, 143 SIGTERM. Every error a user can cause is one line on stderr, without a
traceback.

The command line is the harness and the benchmark suite: it needs the ``bench`` extra
(:mod:`cbbench.extras`), and says so in one line when a package of it is missing.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
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


# cbbench.harness.errors.EXIT_USAGE, which cannot be imported without the extra (tests/test_install.py)
EXIT_MISSING_EXTRA = 2


def main(argv=None) -> int:
    """Run one sub-command; returns its exit code (the table in :mod:`cbbench.harness.errors`). Every error
    a user can cause is one line on stderr, no traceback."""
    from . import extras

    absent = extras.missing()
    if absent:  # checked before anything imports the harness, which needs them
        print(f"cbbench: error: {extras.install_line('the cbbench command line', absent)}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    from .harness.errors import EXIT_DATA, EXIT_USAGE, CbbenchError, signal_exit_code

    parser = build_parser()
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: `kill -INT` would then never stop a long run. Interrupts always stop cbbench.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and main_thread:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (kill, a batch scheduler, torchrun stopping its workers) is handled as SIGINT: a comparison
    # keeps its finished runs and writes its summary; exit 143
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    where = _rank_note()
    head = f"cbbench {args.command}{where}"
    try:
        with _process_group(args):
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # a comparison says what it kept; anything else kept nothing
        stopped = "terminated (SIGTERM)" if signal_exit_code(exc) == 128 + signal.SIGTERM else "interrupted"
        print(f"\n{head}: {str(exc) or stopped}", file=sys.stderr)
        return signal_exit_code(exc)
    except CbbenchError as exc:
        print(f"{head}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:  # a package of the extra that only this command imports (asv, ...)
        package = extras.extra_module(exc)
        if package is None:
            raise
        print(f"{head}: error: {extras.install_line(head, [package])}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except FileNotFoundError as exc:
        print(f"{head}: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except ValueError as exc:
        print(f"{head}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a read or write the code above did not expect to fail: still one line
        print(f"{head}: error: {_os_error_line(exc)}", file=sys.stderr)
        return _os_error_code(exc)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _raise_terminated(signum, frame):
    from .harness.errors import Terminated

    raise Terminated()


def _os_error_line(exc: OSError) -> str:
    from .harness.output import output_error

    if exc.filename is not None and exc.errno in _WRITE_ERRNOS:
        return str(output_error(exc, exc.filename))
    return f"{exc.filename}: {exc.strerror}" if exc.filename is not None else str(exc.strerror or exc)


def _os_error_code(exc: OSError) -> int:
    from .harness.errors import EXIT_DATA, EXIT_OUTPUT

    return EXIT_OUTPUT if exc.errno in _WRITE_ERRNOS else EXIT_DATA


# errors only a write gives: a stray one is an output error (exit 4), any other an input error (exit 3)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _rank_note() -> str:
    """`` (rank r)`` in messages of a process that a launcher started among several, else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ:
        return f" (rank {os.environ['RANK']})"
    return ""


def _process_group(args):
    """The launcher's process group for a data parallel sub-command (nothing without a launcher)."""
    from .harness import ddp
    from .harness.errors import UsageError

    if not ddp.launched():
        return contextlib.nullcontext()
    if not getattr(args, "data_parallel", False):
        if int(os.environ["WORLD_SIZE"]) > 1:
            raise UsageError(f"'cbbench {args.command}' runs in one process; under torchrun only 'train' and "
                             "'compare' run (data parallel)")
        return contextlib.nullcontext()
    from .harness.train import resolve_device

    return ddp.process_group(resolve_device(args.device))


if __name__ == "__main__":
    raise SystemExit(main())

"""The errors a user can cause, and the exit codes of the ``cbbench`` command line (the one table of them).

Each error a user can fix is raised as one of the classes below; :func:`cbbench.cli.main` prints its
message as one line (``cbbench COMMAND: error: MESSAGE``, no traceback) and exits with its code:

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success (a diverged run is a result: the run is recorded with ``status: "diverged"``)
1     an internal error, i.e. a bug: Python prints a traceback
2     usage: a bad or missing option value, or an option that does not apply (argparse's code too)
3     data: an input file is missing, unreadable or invalid (list files, images, features, pickles)
4     output: the output folder or a file in it cannot be written (read-only, no space left, quota)
5     busy: another cbbench process holds the output folder (its lock file names the pid and host)
6     resume: ``--resume`` found results it must not keep (other configuration or data, unreadable)
7     failed runs: runs of a grid on a cluster failed after their retries; the others are kept, and
      ``--resume`` trains only the failed ones again
130   interrupted by SIGINT (Ctrl-C); a comparison keeps its finished runs and writes the summary
143   terminated by SIGTERM; the same as SIGINT
====  ==========================================================================================

Every class is also a ``ValueError`` (and the missing-file ones a ``FileNotFoundError``), the types the
Python API raised before these classes existed, so callers catching those keep working.
"""
from __future__ import annotations

import signal

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_DATA", "EXIT_OUTPUT", "EXIT_BUSY", "EXIT_RESUME", "EXIT_FAILED_RUNS",
           "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_CODES", "CbbenchError", "UsageError", "MissingOption",
           "DataError", "DataFileNotFound", "OutputError", "FolderBusy", "ResumeConflict", "RunsFailed", "Terminated",
           "as_data_error", "signal_exit_code"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_OUTPUT = 4
EXIT_BUSY = 5
EXIT_RESUME = 6
EXIT_FAILED_RUNS = 7
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

EXIT_CODES = {
    EXIT_OK: "success",
    1: "internal error (a bug: a traceback is printed)",
    EXIT_USAGE: "usage: bad or missing option, or an option that does not apply",
    EXIT_DATA: "data: an input file is missing, unreadable or invalid",
    EXIT_OUTPUT: "output: the output folder cannot be written (read-only, no space left)",
    EXIT_BUSY: "busy: another cbbench process writes to the output folder",
    EXIT_RESUME: "resume: the output folder holds results --resume must not keep",
    EXIT_FAILED_RUNS: "failed runs: runs on a cluster failed after their retries (the others are kept)",
    EXIT_INTERRUPTED: "interrupted (SIGINT)",
    EXIT_TERMINATED: "terminated (SIGTERM)",
}


class CbbenchError(Exception):
    """An error the user can fix; its message names the file (line, value) where there is one, and the fix."""

    exit_code = EXIT_USAGE


class UsageError(CbbenchError, ValueError):
    """A bad option value, or an option that does not apply to the command, dataset or methods."""

    exit_code = EXIT_USAGE


class MissingOption(UsageError, FileNotFoundError):
    """An option the dataset needs is missing (e.g. the folder dataset without ``--data-dir``)."""


class DataError(CbbenchError, ValueError):
    """An input file is unreadable or invalid (a list file's line, an image, a features array)."""

    exit_code = EXIT_DATA


class DataFileNotFound(DataError, FileNotFoundError):
    """An input file or folder does not exist."""


class OutputError(CbbenchError, ValueError):
    """The output folder, or a file in it, cannot be written."""

    exit_code = EXIT_OUTPUT


class FolderBusy(OutputError):
    """Another cbbench process holds the output folder's lock."""

    exit_code = EXIT_BUSY


class ResumeConflict(CbbenchError, ValueError):
    """``--resume`` found a result in the output folder that it must not keep."""

    exit_code = EXIT_RESUME


class RunsFailed(CbbenchError):
    """Runs of a comparison failed after their retries (a task that raised, or whose worker or node died:
    :mod:`cbbench.harness.executors`). Raised once every other run finished and was written, with the
    summary naming the failed ones; ``runs`` are the finished results, ``failures`` the failed runs."""

    exit_code = EXIT_FAILED_RUNS

    def __init__(self, message: str, runs: list = (), failures: list = ()):
        super().__init__(message)
        self.runs, self.failures = list(runs), list(failures)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt (see :func:`cbbench.cli.main`),
    so every ``except KeyboardInterrupt`` that keeps finished work handles it too."""

    signum = signal.SIGTERM


def signal_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the command (SIGINT for a plain KeyboardInterrupt)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def as_data_error(exc: Exception) -> Exception:
    """``exc`` (a ValueError or FileNotFoundError raised while reading input data) as a :class:`DataError`
    of the same message; a :class:`CbbenchError` already says what it is and is returned as it is."""
    if isinstance(exc, CbbenchError):
        return exc
    message = str(exc) if not isinstance(exc, OSError) or exc.strerror is None else \
        f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return (DataFileNotFound if isinstance(exc, FileNotFoundError) else DataError)(message)

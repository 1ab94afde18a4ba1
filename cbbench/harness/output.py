"""Writing into an output folder: one writer at a time, every file whole, permissions from the umask.

* :func:`folder_lock` takes ``OUT/.cbbench.lock`` for the duration of a command: an advisory
  ``fcntl.flock`` on that file, which names the holder (pid, host, command, start time). A second
  ``cbbench`` writing to the same folder stops at once with :class:`~cbbench.harness.errors.FolderBusy`
  (exit 5) naming the holder. The kernel drops the lock when its holder dies, so a lock file left by a
  crash (or ``kill -9``) is stale by construction: the next command takes it over and says whose it was.
* :func:`atomic_write` writes a file through a temporary file in the same folder (created with mode
  0666, so the umask decides the permissions, as for any file ``open`` creates), flushed to disk and
  renamed over the old one (``os.replace``): a reader, a crash or a full disk never leaves half a file.
  :func:`save_figure` does the same for a matplotlib figure.
* every failure to write (read-only folder, no space left, quota, no permission) is one
  :class:`~cbbench.harness.errors.OutputError` (exit 4) naming the file and the fix.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import io
import json
import os
import secrets
import socket
import sys
from typing import Optional, Union

from .errors import FolderBusy, OutputError

__all__ = ["LOCK_NAME", "output_error", "check_writable", "atomic_write", "save_figure", "folder_lock",
           "main_folder_lock"]

LOCK_NAME = ".cbbench.lock"

_FIXES = {
    errno.ENOSPC: "free some space on that disk or pass another --out",
    errno.EDQUOT: "your disk quota is used up: free some space or pass another --out",
    errno.EFBIG: "the file is larger than this system lets a process write: pass another --out",
    errno.EROFS: "that file system is read-only: pass another --out",
    errno.EACCES: "you may not write there: pass another --out, or make the folder writable",
    errno.EPERM: "you may not write there: pass another --out, or make the folder writable",
    errno.ENOTDIR: "a part of that path is a file, not a folder: pass another --out",
    errno.ENOENT: "a part of that path does not exist: pass another --out",
}


def output_error(exc: OSError, path: str, what: str = "cannot write") -> OutputError:
    """``exc``, raised while writing ``path``, as one :class:`OutputError` line with the fix."""
    reason = exc.strerror or str(exc)
    return OutputError(f"{path}: {what} ({reason}); {_FIXES.get(exc.errno, 'pass another --out')}")


def check_writable(out_dir: str) -> None:
    """Create ``out_dir`` and write (then remove) a file in it, or raise OutputError naming the folder."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}-{secrets.token_hex(4)}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output folder {out_dir!r} is not writable ({exc.strerror or exc}); "
                          f"{_FIXES.get(exc.errno, 'pass another --out')}") from None


def atomic_write(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` (text is written as UTF-8) to ``path`` whole: a temporary file in the same folder,
    flushed to disk, renamed over ``path``. Permissions follow the umask. Raises OutputError."""
    folder = os.path.dirname(path) or "."
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise output_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(exc, path) from None
        raise


def save_figure(fig, path: str, **savefig_kwargs) -> None:
    """``fig.savefig`` into memory, then :func:`atomic_write` to ``path`` (the format from its suffix)."""
    buf = io.BytesIO()
    fmt = os.path.splitext(path)[1].lstrip(".") or None
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    atomic_write(path, buf.getvalue())


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "a process that has not yet written its name"
    return (f"'{holder.get('command', 'cbbench')}' (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})")


def _read_fd(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        holder = json.loads(raw.decode("utf-8")) if raw else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def folder_lock(out_dir: str, command: Optional[str] = None, *, note=None):
    """Hold ``OUT/.cbbench.lock`` while the block runs (creating ``out_dir``); raise FolderBusy naming the
    holder when another process has it. A lock file whose holder died is taken over, with a note (to
    ``note``, default: a line on stderr). On a file system without ``flock`` the block runs unlocked,
    after a warning."""
    path = os.path.join(out_dir, LOCK_NAME)
    command = command or "cbbench " + " ".join(sys.argv[1:])
    note = note or (lambda text: print(text, file=sys.stderr, flush=True))
    check_writable(out_dir)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise output_error(exc, path, "cannot create the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_fd(fd)
            os.close(fd)
            raise FolderBusy(f"{out_dir}: in use by {_describe(holder)}; wait for it to finish, or pass another "
                             f"--out (two commands writing one folder would overwrite each other's results; "
                             f"lock file {path})") from None
        except OSError as exc:  # no flock on this file system (some FUSE and network mounts)
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size == 0:  # the empty file this call created: no holder to name
                    os.unlink(path)
            os.close(fd)
            note(f"warning: {out_dir}: cannot lock the folder ({exc.strerror or exc}); another cbbench writing "
                 "there at the same time would not be detected")
            fd = None
            break
        # a holder releasing the lock unlinks the file after we opened it: then ours is a dead inode
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if fd is None:
        yield
        return
    try:
        stale = _read_fd(fd)
        if stale and (stale.get("pid"), stale.get("host")) != (os.getpid(), socket.gethostname()):
            note(f"note: {out_dir}: taking over the lock left by {_describe(stale)}, which no longer holds it "
                 "(it crashed or was killed)")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
        except OSError as exc:
            raise output_error(exc, path, "cannot write the lock file") from None
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: a waiter that opened the old file sees it unlinked
        os.close(fd)


@contextlib.contextmanager
def main_folder_lock(out_dir: str, command: Optional[str] = None):
    """:func:`folder_lock` held by rank 0 (the process that writes, :mod:`cbbench.harness.ddp`) while the
    block runs on every rank; a busy folder stops every rank with the same error."""
    from .ddp import on_main

    with contextlib.ExitStack() as stack:
        def take() -> None:  # returns nothing: on_main hands the return value to every rank
            stack.enter_context(folder_lock(out_dir, command))

        on_main(take)
        yield

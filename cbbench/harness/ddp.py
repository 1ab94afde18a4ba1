"""The harness under a launcher (``torchrun``): the process group, each rank's device, and what only rank 0 does.

``torchrun --nproc_per_node=N -m cbbench train|compare ...`` starts N processes whose environment names
their rank (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`process_group`
joins them in the default process group (``env://``): NCCL when the run trains on CUDA, gloo on the CPU.
Each rank trains on ``cuda:LOCAL_RANK`` (for ``--device auto`` or ``cuda``). Rank 0 alone writes results
and shows progress bars; a check that only rank 0 makes (the output folder, finished runs to resume) is
made by :func:`on_main`, which hands its outcome, error included, to every rank, so all of them stop
together instead of waiting on each other's collectives.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Callable

import torch
import torch.distributed as dist

from .. import distributed

__all__ = ["launched", "local_rank", "is_main", "rank_device", "backend_for", "process_group", "on_main"]

# the errors a check raises for bad input; re-raised on every rank with the same message
_PASSED_ON = (ValueError, FileNotFoundError)


def launched() -> bool:
    """Whether a launcher (torchrun, or anything that sets ``RANK`` and ``WORLD_SIZE``) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Whether this process is rank 0 of the default group (or runs alone): the one that writes results."""
    return distributed.rank() == 0


def rank_device(device) -> torch.device:
    """The device this rank trains on for ``device`` (a resolved ``torch.device``): with more than one rank,
    CUDA without an index becomes ``cuda:LOCAL_RANK``; an explicit index is kept."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and (distributed.world_size() > 1 or launched()):
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise ValueError(f"local rank {index} has no GPU: this machine has {torch.cuda.device_count()}; start at "
                             "most that many processes per node (torchrun --nproc_per_node)")
        return torch.device("cuda", index)
    return device


def backend_for(device: torch.device) -> str:
    """The collective backend for a training device: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device, timeout_s: float = 1800.0):
    """Join the launcher's processes in the default process group for training on ``device`` (a resolved
    device, before :func:`rank_device`) and leave it on exit. Does nothing without a launcher, or when a
    group already exists (the caller's)."""
    if not launched() or distributed.is_distributed():
        yield
        return
    device = rank_device(device)
    backend = backend_for(device)
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("training on CUDA under a launcher needs NCCL, which this torch build lacks")
    options = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device
    dist.init_process_group(backend, **options)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _portable(exc: BaseException) -> tuple:
    """(class, message) that rebuilds ``exc`` on another rank: the cbbench error classes themselves (their
    exit codes, :mod:`cbbench.harness.errors`), else ValueError / FileNotFoundError."""
    from .errors import CbbenchError

    cls = type(exc)
    if not issubclass(cls, CbbenchError):
        cls = FileNotFoundError if isinstance(exc, FileNotFoundError) else ValueError
    return cls, str(exc)


def on_main(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` run on rank 0 alone; every rank returns its result, or raises the
    ``ValueError`` / ``FileNotFoundError`` it raised (same class for the cbbench errors, same message).
    Without a process group, just ``fn``."""
    if distributed.world_size() == 1:
        return fn(*args, **kwargs)
    outcome = None
    if is_main():
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except _PASSED_ON as exc:
            outcome = ("error", *_portable(exc))
        except BaseException as exc:  # the others must not wait for a broadcast that never comes
            distributed.broadcast_object(("error", RuntimeError, f"rank 0 failed: {type(exc).__name__}: {exc}"))
            raise
    outcome = distributed.broadcast_object(outcome)
    if outcome[0] == "ok":
        return outcome[1]
    raise outcome[1](outcome[2])

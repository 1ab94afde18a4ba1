"""Provenance of a result: device name, torch/CUDA versions, cbbench build, git commit, date, and the
machine's load when the numbers were taken. Used by the benchmark records (:mod:`cbbench.bench`) and the
harness's run results (:mod:`cbbench.harness`); it imports neither, so neither imports the other for it."""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
from pathlib import Path
from typing import Optional

import torch

_REPO = Path(__file__).resolve().parents[1]


def git_commit() -> Optional[str]:
    """The commit of the checkout cbbench runs from (``+dirty`` when it has uncommitted changes), or
    ``CBBENCH_COMMIT`` when set (asv environments install cbbench outside any checkout)."""
    env = os.environ.get("CBBENCH_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment(device="cpu") -> dict:
    """The record header: :func:`cbbench.info.collect` plus device, commit, date and load."""
    from .info import collect

    env = collect()
    env.update({
        "device": str(torch.device(device)),
        "device_name": device_name(device),
        "cuda_runtime": torch.version.cuda,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": load_average(),
    })
    return env

"""The one timing core shared by ``python -m cbbench.bench.speed``, the asv suite and pytest-benchmark.

CPU work is timed with the host's monotonic clock (the call returns when the work is done). CUDA work is
timed with CUDA events around each call, with the device idle before and synchronised after every
sample, so a sample is the end-to-end time of one call including its launch overhead; before each
sample the L2 cache is flushed by writing a buffer larger than it, so no sample reads its inputs from a
warm cache.

The speed runner and the pytest-benchmark micro-benchmarks take their samples with :func:`measure`.
asv takes its own samples (it chooses the repeats, keeps every sample and tests significance); its
``time_*`` benchmarks read :func:`asv_clock`, the same host clock, which on a GPU first waits for the
device, so a sample spans the queued work and not only its launch (or, on a shared CPU, the process's
CPU time).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

# Larger than the L2 of any current GPU (H100: 50 MiB, H200: 60 MiB, B200: 126 MiB).
_L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TimingPolicy:
    """How many calls to make: ``warmup`` untimed, then at least ``min_repeat`` timed samples and more
    until ``budget_s`` seconds of timing have passed (at most ``max_repeat``)."""

    warmup: int = 3
    min_repeat: int = 10
    max_repeat: int = 2000
    budget_s: float = 1.0


FULL = TimingPolicy()
QUICK = TimingPolicy(warmup=2, min_repeat=5, max_repeat=500, budget_s=0.25)


@dataclass
class Measurement:
    """Timed samples of one callable, in milliseconds, and the clock that took them."""

    samples_ms: List[float] = field(default_factory=list)
    clock: str = "host"

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    def quantile_ms(self, q: float) -> float:
        """Linear-interpolated quantile ``q`` in [0, 1] of the samples."""
        xs = sorted(self.samples_ms)
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def iqr_ms(self) -> float:
        return self.quantile_ms(0.75) - self.quantile_ms(0.25)

    @property
    def p20_ms(self) -> float:
        return self.quantile_ms(0.2)

    @property
    def p80_ms(self) -> float:
        return self.quantile_ms(0.8)

    def summary(self) -> dict:
        """What a record keeps of the samples: p20 / p50 (median) / p80, minimum, IQR, count, clock."""
        return {"median_ms": self.median_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms, "min_ms": self.min_ms,
                "iqr_ms": self.iqr_ms, "samples": self.n, "clock": self.clock}


def synchronize(device) -> None:
    """Wait for all work queued on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ASV_CLOCKS = ("wall", "cpu")


def asv_clock(device="cpu", kind: Optional[str] = None) -> Callable[[], float]:
    """The clock for asv's ``timer`` attribute on ``device``, in seconds.

    ``"wall"`` (default): the host clock, which on a CUDA device first synchronises it, so that asv's
    span between two readings covers the queued work. ``"cpu"`` (CPU devices only): the CPU time of
    the process (all its threads), which time slices given to other processes do not advance — for a
    regression gate on a shared machine, with one thread (``OMP_NUM_THREADS=1``), where wall time
    moves by more than the gate's factor with the load. ``kind`` defaults to the environment variable
    ``CBBENCH_ASV_CLOCK``, read when the benchmark module is imported."""
    kind = kind or os.environ.get("CBBENCH_ASV_CLOCK") or "wall"
    if kind not in ASV_CLOCKS:
        raise ValueError(f"CBBENCH_ASV_CLOCK must be one of {ASV_CLOCKS}, got {kind!r}")
    device = torch.device(device)
    if device.type != "cuda":
        return time.process_time if kind == "cpu" else time.perf_counter
    if kind == "cpu":
        raise ValueError("the cpu clock cannot time CUDA work; use CBBENCH_ASV_CLOCK=wall on a GPU")

    def synchronized_clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return synchronized_clock


class HostTimer:
    """Host wall clock around one call; right for CPU tensors, whose ops return when they are done."""

    clock = "host"

    def __call__(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


class CudaEventTimer:
    """CUDA events around one call on the current stream of ``device`` (made the current device while
    timing), with the L2 flushed before and the device synchronised after (so samples never overlap)."""

    clock = "cuda-events"

    def __init__(self, device):
        self.device = torch.device(device)
        self._flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=self.device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        # on self.device: the events are recorded on (and fn launches onto) that device's current stream,
        # not the default device's, when timing e.g. cuda:1
        with torch.cuda.device(self.device):
            self._flush.zero_()
            # an idle device at the start event: otherwise the host queues the first launches while the
            # flush runs, and their launch overhead falls outside the timed span
            torch.cuda.synchronize(self.device)
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
        return self._start.elapsed_time(self._end)


def timer_for(device):
    device = torch.device(device)
    return CudaEventTimer(device) if device.type == "cuda" else HostTimer()


def measure(fn: Callable[[], object], device="cpu", policy: Optional[TimingPolicy] = None) -> Measurement:
    """Time ``fn`` on ``device`` under ``policy`` (default :data:`FULL`); returns every sample."""
    policy = policy or FULL
    device = torch.device(device)
    timer = timer_for(device)
    for _ in range(policy.warmup):
        fn()
    synchronize(device)
    result = Measurement(clock=timer.clock)
    began = time.perf_counter()
    while result.n < policy.max_repeat and (
            result.n < policy.min_repeat or time.perf_counter() - began < policy.budget_s):
        result.samples_ms.append(timer(fn))
    return result

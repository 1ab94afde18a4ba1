"""The one timing core shared by ``python -m cbbench.bench.speed``, the asv suite and pytest-benchmark.

CPU work is timed with the host's monotonic clock (the call returns when the work is done). CUDA work is
timed with CUDA events around each call, with the device idle before and synchronised after every
sample, so a sample is the end-to-end time of one call including its launch overhead; before each
sample the L2 cache is flushed by writing a buffer larger than it, so no sample reads its inputs from a
warm cache.

The speed runner, the asv speed benchmarks (which hand asv every sample, for its statistics) and the
pytest-benchmark micro-benchmarks all take their samples with :func:`measure`. On a shared CPU the
process's CPU time can replace the wall clock (:class:`ProcessTimeTimer`).
"""
from __future__ import annotations

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
# `make bench` (cbbench bench's main job): fewer samples than FULL, enough for a median of 7 or more
MAIN = TimingPolicy(warmup=2, min_repeat=7, max_repeat=1000, budget_s=0.2)
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


class HostTimer:
    """Host wall clock around one call; right for CPU tensors, whose ops return when they are done."""

    clock = "host"
    now = staticmethod(time.perf_counter)

    def __call__(self, fn: Callable[[], object]) -> float:
        start = self.now()
        fn()
        return (self.now() - start) * 1e3


class ProcessTimeTimer(HostTimer):
    """The process's CPU time (all its threads) around one call, for CPU tensors on a shared machine:
    time slices the scheduler gives to other processes do not count, which on a loaded machine move
    wall-clock samples by more than a regression gate's factor. Use it with one thread
    (``OMP_NUM_THREADS=1``): with several, threads waiting for each other may spin and count."""

    clock = "process-cpu"
    now = staticmethod(time.process_time)


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


CPU_CLOCKS = ("wall", "process")


def timer_for(device, cpu_clock: str = "wall"):
    """CUDA events on a CUDA device; on the CPU the host wall clock, or with ``cpu_clock="process"``
    the process's CPU time (:class:`ProcessTimeTimer`)."""
    if cpu_clock not in CPU_CLOCKS:
        raise ValueError(f"cpu_clock must be one of {CPU_CLOCKS}, got {cpu_clock!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return CudaEventTimer(device)
    return ProcessTimeTimer() if cpu_clock == "process" else HostTimer()


def measure(fn: Callable[[], object], device="cpu", policy: Optional[TimingPolicy] = None,
            cpu_clock: str = "wall") -> Measurement:
    """Time ``fn`` on ``device`` under ``policy`` (default :data:`FULL`); returns every sample.
    ``cpu_clock`` chooses the CPU clock (:func:`timer_for`); CUDA work is always timed by events."""
    policy = policy or FULL
    device = torch.device(device)
    timer = timer_for(device, cpu_clock)
    for _ in range(policy.warmup):
        fn()
    synchronize(device)
    result = Measurement(clock=timer.clock)
    began = time.perf_counter()
    while result.n < policy.max_repeat and (
            result.n < policy.min_repeat or time.perf_counter() - began < policy.budget_s):
        result.samples_ms.append(timer(fn))
    return result

"""cbbench's benchmark core: one timing core (:mod:`.timing`), the cases and their inputs
(:mod:`.cases`), the implementations compared (:mod:`.providers`), the bandwidth floor
(:mod:`.bandwidth`), the environment record (:mod:`.records`), the speed runner (:mod:`.speed`,
``python -m cbbench.bench.speed``), the accuracy runner over the long-tail harness (:mod:`.accuracy`)
and the report writer (:mod:`.report`). The asv suite (``benchmarks/``), the pytest-benchmark
micro-benchmarks (``benchmarks/micro/``) and ``cbbench bench`` all time through this package.
"""
from .bandwidth import copy_bandwidth_gbps, effective_gbps, floor_bytes, floor_ms
from .cases import LOSSES, Case, make_inputs, suite
from .providers import IMPLEMENTATIONS, PROVIDERS, check, step
from .timing import FULL, QUICK, Measurement, TimingPolicy, measure, synchronize

__all__ = ["copy_bandwidth_gbps", "effective_gbps", "floor_bytes", "floor_ms", "LOSSES", "Case", "make_inputs",
           "suite", "IMPLEMENTATIONS", "PROVIDERS", "check", "step", "FULL", "QUICK", "Measurement",
           "TimingPolicy", "measure", "synchronize"]

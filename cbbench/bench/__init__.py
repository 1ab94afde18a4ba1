"""cbbench's benchmark core: one timing core (:mod:`.timing`), the one case table and the inputs
(:mod:`.cases`), the implementations compared (:mod:`.providers`), the bandwidth floor
(:mod:`.bandwidth`), operator counts (:mod:`.opcount`), the speed runner (:mod:`.speed`,
``python -m cbbench.bench.speed``), the accuracy runner over the long-tail harness (:mod:`.accuracy`),
the peers on the held test vectors (:mod:`.conformance`), the report writer (:mod:`.report`) and the
asv regression gate (:mod:`.gate`). Records carry :func:`cbbench.provenance.environment`. The asv suite
(``benchmarks/``), the pytest-benchmark micro-benchmarks (``benchmarks/micro/``) and ``cbbench bench``
all time through this package. The harness does not import it.
"""
from .bandwidth import copy_bandwidth_gbps, effective_gbps, floor_bytes, floor_ms
from .cases import LOSSES, Case, make_inputs, suite
from .providers import IMPLEMENTATIONS, PROVIDERS, check, step
from .timing import FULL, QUICK, Measurement, TimingPolicy, measure, synchronize

__all__ = ["copy_bandwidth_gbps", "effective_gbps", "floor_bytes", "floor_ms", "LOSSES", "Case", "make_inputs",
           "suite", "IMPLEMENTATIONS", "PROVIDERS", "check", "step", "FULL", "QUICK", "Measurement",
           "TimingPolicy", "measure", "synchronize"]

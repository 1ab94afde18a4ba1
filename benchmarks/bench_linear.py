"""Fused classifier heads (cbbench.functional.linear_*) beside ``F.linear`` + the loss and torch's
``F.linear_cross_entropy``: speed and extra memory of one forward+backward (loss and the gradients of
hidden, classifier weight and bias), for the ``asv`` set of the head cases
(:data:`cbbench.bench.cases.HEAD_TABLE`).

Speed hands asv every sample of the shared timing core, as benchmarks/bench_speed.py does
(``CBBENCH_ASV_CPU_CLOCK=process`` on a shared machine). Memory is the peak above the level before the
call less the gradients returned (MiB): on the CPU measured in a fresh process by
:func:`cbbench.bench.linear.measure_memory` (resident high-water mark with glibc's mmap threshold
fixed, so freed buffers leave the resident set), on CUDA by the allocator's peak. ``setup`` checks
each implementation against ``F.linear`` + the reference loss (a mismatch fails, not a number) and
skips what cannot run here.
"""
import os

from cbbench.bench.cases import head_case_id, head_suite, make_head_inputs, parse_head_case_id
from cbbench.bench.linear import (IMPLS, check, loss_fn, measure_memory, proc_peak_unavailable, reference_values,
                                  step)
from cbbench.bench.timing import TimingPolicy, measure

POLICY = TimingPolicy(warmup=1, min_repeat=5, max_repeat=50, budget_s=2.0)
CPU_CLOCK = os.environ.get("CBBENCH_ASV_CPU_CLOCK", "wall")


def _cases(device):
    return [head_case_id(c) for c in head_suite(device, "asv")]


def _prepare(impl, case_text, device, *, verify=True):
    case = parse_head_case_id(case_text, device)
    reason = IMPLS[impl].unavailable(case)
    if reason is not None:
        raise NotImplementedError(reason)
    inputs = make_head_inputs(case)
    fn = loss_fn(impl, case)
    if verify:
        check(fn, inputs, reference_values(case, inputs, IMPLS[impl].weighted))
    return case, inputs, fn


class _HeadSpeed:
    param_names = ["impl", "case"]
    device = ""
    unit = "seconds"
    timeout = 900

    def setup(self, impl, case):
        _, inputs, fn = _prepare(impl, case, self.device)
        self.run = step(fn, inputs)

    def track_fwd_bwd(self, impl, case):
        result = measure(self.run, self.device, POLICY, cpu_clock=CPU_CLOCK)
        return {"samples": [ms * 1e-3 for ms in result.samples_ms], "number": 1}


class _HeadMemory:
    param_names = ["impl", "case"]
    device = ""
    unit = "MiB"
    timeout = 900

    def setup(self, impl, case):
        if self.device == "cpu":
            reason = proc_peak_unavailable()
            if reason is not None:
                raise NotImplementedError(reason)
        self.case = parse_head_case_id(case, self.device)
        reason = IMPLS[impl].unavailable(self.case)
        if reason is not None:
            raise NotImplementedError(reason)

    def track_extra_memory(self, impl, case):
        """Peak memory of one forward+backward above the level before it, less the gradients returned."""
        return measure_memory(impl, self.case)["extra_mib"]


class HeadSpeedCPU(_HeadSpeed):
    device = "cpu"
    params = [list(IMPLS), _cases("cpu")]


class HeadMemoryCPU(_HeadMemory):
    device = "cpu"
    params = [list(IMPLS), _cases("cpu")]


class HeadSpeedCUDA(_HeadSpeed):
    device = "cuda"
    params = [list(IMPLS), _cases("cuda")]


class HeadMemoryCUDA(_HeadMemory):
    device = "cuda"
    params = [list(IMPLS), _cases("cuda")]

"""Speed of each loss x implementation x case (shape and dtype), on the CPU and on the GPU: median ms
of forward+backward and of forward only (host clock on the CPU, CUDA events on the GPU), and the
effective bandwidth (floor bytes / fwd+bwd time), all through the shared timing core.

Each class measures all of its combinations once, in ``setup_cache`` (one process: torch, the CUDA
context and torch.compile's caches are set up once instead of once per combination), and its
``track_`` methods report those measurements. Combinations that cannot run here (no GPU, kernels not
built, peer not installed) are skipped; an implementation that disagrees with the reference is
reported as a failure, not timed. asv flags increases as regressions, so ``track_effective_bandwidth``
(higher is better) is for reading, not for the regression gate.
"""
import itertools

import torch

from cbbench.bench.bandwidth import effective_gbps, floor_bytes
from cbbench.bench.providers import PROVIDERS
from cbbench.bench.timing import measure

from .common import CPU_IMPLEMENTATIONS, CUDA_SPEED_IMPLEMENTATIONS, POLICY, prepare, split_case


def measure_all(loss, device, params):
    """``{(impl, case): {"fwd_bwd": ms, "fwd": ms, "gbps": GB/s} | {"skip" | "fail": why}}``."""
    results = {}
    for impl, case_name in itertools.product(*params):
        shape, dtype = split_case(case_name)
        try:
            case, inputs, fn = prepare(loss, impl, device, shape, dtype)
        except NotImplementedError as exc:
            results[(impl, case_name)] = {"skip": str(exc)}
            continue
        except AssertionError as exc:
            results[(impl, case_name)] = {"fail": str(exc)}
            continue
        provider = PROVIDERS[impl]
        fwd_bwd = measure(provider.timed_step(fn, inputs, "fwd_bwd", device), device, POLICY).median_ms
        fwd = measure(provider.timed_step(fn, inputs, "fwd", device), device, POLICY).median_ms
        results[(impl, case_name)] = {"fwd_bwd": fwd_bwd, "fwd": fwd,
                                      "gbps": effective_gbps(floor_bytes(case, "fwd_bwd"), fwd_bwd)}
        del inputs, fn
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


class _LossSpeed:
    param_names = ["impl", "case"]
    timeout = 120

    def setup(self, cache, impl, case):
        entry = cache[(impl, case)]
        if "skip" in entry:
            raise NotImplementedError(entry["skip"])
        if "fail" in entry:
            raise AssertionError(entry["fail"])
        self.entry = entry

    def track_fwd_bwd(self, cache, impl, case):
        return self.entry["fwd_bwd"]

    track_fwd_bwd.unit = "ms"

    def track_fwd(self, cache, impl, case):
        return self.entry["fwd"]

    track_fwd.unit = "ms"

    def track_effective_bandwidth(self, cache, impl, case):
        return self.entry["gbps"]

    track_effective_bandwidth.unit = "GB/s"


# Each class has its own setup_cache: asv keys caches by the function's source location.
# Softmax is the class-weighted CE with PyTorch's weighted-mean reduction (= F.cross_entropy(weight=));
# sigmoid and focal (gamma 2) put w_y on all C binary terms and divide by N.
class SoftmaxCPU(_LossSpeed):
    params = [CPU_IMPLEMENTATIONS, ["256x1000 fp32", "8192x1000 fp32"]]

    def setup_cache(self):
        return measure_all("softmax", "cpu", self.params)

    setup_cache.timeout = 3600


class SigmoidCPU(_LossSpeed):
    params = [CPU_IMPLEMENTATIONS, ["8192x1000 fp32"]]

    def setup_cache(self):
        return measure_all("sigmoid", "cpu", self.params)

    setup_cache.timeout = 3600


class FocalCPU(_LossSpeed):
    params = [CPU_IMPLEMENTATIONS, ["8192x1000 fp32"]]

    def setup_cache(self):
        return measure_all("focal", "cpu", self.params)

    setup_cache.timeout = 3600


class SoftmaxCUDA(_LossSpeed):
    params = [CUDA_SPEED_IMPLEMENTATIONS, ["256x1000 fp32", "65536x1000 fp32", "16384x8142 fp32", "4096x131072 fp32",
                                     "65536x1000 bf16"]]

    def setup_cache(self):
        return measure_all("softmax", "cuda", self.params)

    setup_cache.timeout = 3600


class SigmoidCUDA(_LossSpeed):
    params = [CUDA_SPEED_IMPLEMENTATIONS, ["1048576x80 fp32", "16384x1203 bf16"]]

    def setup_cache(self):
        return measure_all("sigmoid", "cuda", self.params)

    setup_cache.timeout = 3600


class FocalCUDA(_LossSpeed):
    params = [CUDA_SPEED_IMPLEMENTATIONS, ["1048576x80 fp32", "16384x1203 bf16"]]

    def setup_cache(self):
        return measure_all("focal", "cuda", self.params)

    setup_cache.timeout = 3600

"""Speed of each loss x implementation x device x shape x dtype: median ms of forward+backward and of
forward only (host clock on the CPU, CUDA events on the GPU), and the effective bandwidth
(floor bytes / fwd+bwd time), all through the shared timing core.

Each class measures all of its combinations once, in ``setup_cache`` (one process: torch, the CUDA
context and torch.compile's caches are set up once instead of once per combination), and its
``track_`` methods report those measurements. Combinations that cannot run here are skipped; an
implementation that disagrees with the reference is reported as a failure, not timed.
asv flags increases as regressions, so ``track_effective_bandwidth`` (higher is better) is for reading,
not for the regression gate.
"""
import itertools

import torch

from cbbench.bench.bandwidth import effective_gbps, floor_bytes
from cbbench.bench.providers import step
from cbbench.bench.timing import measure

from .common import DEVICES, DTYPES, IMPLEMENTATIONS, POLICY, prepare


def measure_all(loss, params):
    """``{(impl, device, shape, dtype): {"fwd_bwd": ms, "fwd": ms, "gbps": GB/s} | {"skip"|"fail": why}}``."""
    results = {}
    for combo in itertools.product(*params):
        impl, device, shape, dtype = combo
        try:
            case, inputs, fn = prepare(loss, impl, device, shape, dtype)
        except NotImplementedError as exc:
            results[combo] = {"skip": str(exc)}
            continue
        except AssertionError as exc:
            results[combo] = {"fail": str(exc)}
            continue
        fwd_bwd = measure(step(fn, inputs, "fwd_bwd"), device, POLICY).median_ms
        fwd = measure(step(fn, inputs, "fwd"), device, POLICY).median_ms
        results[combo] = {"fwd_bwd": fwd_bwd, "fwd": fwd,
                          "gbps": effective_gbps(floor_bytes(case, "fwd_bwd"), fwd_bwd)}
        del inputs, fn
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


class _LossSpeed:
    param_names = ["impl", "device", "shape", "dtype"]
    timeout = 120

    def setup(self, cache, *params):
        entry = cache[tuple(params)]
        if "skip" in entry:
            raise NotImplementedError(entry["skip"])
        if "fail" in entry:
            raise AssertionError(entry["fail"])
        self.entry = entry

    def track_fwd_bwd(self, cache, *params):
        return self.entry["fwd_bwd"]

    track_fwd_bwd.unit = "ms"

    def track_fwd(self, cache, *params):
        return self.entry["fwd"]

    track_fwd.unit = "ms"

    def track_effective_bandwidth(self, cache, *params):
        return self.entry["gbps"]

    track_effective_bandwidth.unit = "GB/s"


# each class has its own setup_cache: asv keys caches by the function's source location
class SoftmaxCE(_LossSpeed):
    """Class-weighted softmax cross-entropy (weighted-mean reduction, as F.cross_entropy(weight=))."""
    params = [IMPLEMENTATIONS, DEVICES, ["256x1000", "8192x1000", "65536x1000", "16384x8142"], DTYPES]

    def setup_cache(self):
        return measure_all("softmax", self.params)

    setup_cache.timeout = 3600


class SigmoidCE(_LossSpeed):
    """Class-balanced sigmoid cross-entropy (w_y on all C binary terms)."""
    params = [IMPLEMENTATIONS, DEVICES, ["8192x1000", "1048576x80"], DTYPES]

    def setup_cache(self):
        return measure_all("sigmoid", self.params)

    setup_cache.timeout = 3600


class FocalLoss(_LossSpeed):
    """Class-balanced sigmoid focal loss, gamma = 2."""
    params = [IMPLEMENTATIONS, DEVICES, ["8192x1000", "1048576x80", "16384x1203"], DTYPES]

    def setup_cache(self):
        return measure_all("focal", self.params)

    setup_cache.timeout = 3600

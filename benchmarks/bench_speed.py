"""Speed of each loss x implementation x case on the CPU and on the GPU: one forward+backward (loss and
d loss / d logits) and one forward, in seconds.

Each benchmark times warm calls through the shared core (:func:`cbbench.bench.timing.measure`: host
clock on the CPU, CUDA events with the L2 flushed on the GPU) and hands asv its samples
(``{"samples": [...], "number": 1}``, which asv treats as timing samples): asv records them, reports
their median and spread, and ``asv continuous`` counts a change only when its Mann-Whitney U test finds
it significant (p < 0.002) *and* the ratio passes the factor. A sample is the median of one of
:data:`WINDOWS` consecutive windows of calls, not a single call: calls close in time share the state of
the machine (on a shared one, contention comes in episodes of seconds that slow every call by up to
1.5x), so the windows, not the calls, are the units the test may treat as independent — with every call
a sample, any episode during one commit's run is "significant". asv runs a ``track_*`` benchmark in
one round per commit unless told otherwise (``--attribute rounds=N``: N fresh processes per commit,
interleaved with the other commit's in ``asv continuous``). (asv's own ``time_*`` would re-run
``setup`` before every sample and time one cold call each: 1.4-1.9x the warm time at 128x100, and far
noisier.)

The cases are the ``asv`` set of the one case table (:data:`cbbench.bench.cases.CASE_TABLE`). ``setup``
checks the implementation against the reference on the timed inputs (a mismatch is a failure, not a
time) and skips what cannot run here (no GPU, kernels not built, peer not installed).

On a shared machine ``CBBENCH_ASV_CPU_CLOCK=process`` times the CPU classes by the process's CPU
time (use it with ``OMP_NUM_THREADS=1``; the regression gate's test does). It changes no benchmark
code, so asv's version of the benchmarks stays the same.
"""
import os
import statistics

from cbbench.bench.providers import MODES, PROVIDERS
from cbbench.bench.timing import TimingPolicy, measure

from .common import CPU_IMPLEMENTATIONS, CUDA_SPEED_IMPLEMENTATIONS, case_ids, prepare

# per round: at least 10 warm calls, more for up to 0.5 s, in WINDOWS windows
POLICY = TimingPolicy(warmup=3, min_repeat=10, max_repeat=500, budget_s=0.5)
WINDOWS = 8
CPU_CLOCK = os.environ.get("CBBENCH_ASV_CPU_CLOCK", "wall")


def window_medians(samples, windows):
    """The medians of ``windows`` consecutive, near-equal groups of ``samples`` (fewer when there are
    fewer samples), in time order."""
    n = len(samples)
    k = max(1, min(windows, n))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [statistics.median(samples[a:b]) for a, b in zip(bounds, bounds[1:])]


class _LossSpeed:
    param_names = ["impl", "case"]
    loss = ""
    device = ""
    unit = "seconds"
    timeout = 300

    def setup(self, impl, case):
        spec, inputs, fn = prepare(self.loss, impl, self.device, case)
        provider = PROVIDERS[impl]
        self.steps = {mode: provider.timed_step(fn, inputs, mode, self.device) for mode in MODES}

    def _samples(self, mode):
        result = measure(self.steps[mode], self.device, POLICY, cpu_clock=CPU_CLOCK)
        return {"samples": [ms * 1e-3 for ms in window_medians(result.samples_ms, WINDOWS)], "number": 1}

    def track_fwd_bwd(self, impl, case):
        return self._samples("fwd_bwd")

    def track_fwd(self, impl, case):
        return self._samples("fwd")


# Softmax is the class-weighted CE with PyTorch's weighted-mean reduction (= F.cross_entropy(weight=));
# sigmoid and focal (gamma 2) put w_y on all C binary terms and divide by N; softmax focal (gamma 2,
# LDAM-DRW's FocalLoss) weights each sample's loss by w_y and divides by N.
class SoftmaxCPU(_LossSpeed):
    loss, device = "softmax", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("softmax", "cpu", "asv")]


class SigmoidCPU(_LossSpeed):
    loss, device = "sigmoid", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("sigmoid", "cpu", "asv")]


class FocalCPU(_LossSpeed):
    loss, device = "focal", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("focal", "cpu", "asv")]


class SoftmaxFocalCPU(_LossSpeed):
    loss, device = "softmax_focal", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("softmax_focal", "cpu", "asv")]


class SoftmaxCUDA(_LossSpeed):
    loss, device = "softmax", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("softmax", "cuda", "asv")]


class SigmoidCUDA(_LossSpeed):
    loss, device = "sigmoid", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("sigmoid", "cuda", "asv")]


class FocalCUDA(_LossSpeed):
    loss, device = "focal", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("focal", "cuda", "asv")]


class SoftmaxFocalCUDA(_LossSpeed):
    loss, device = "softmax_focal", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("softmax_focal", "cuda", "asv")]

"""Speed of each loss x implementation x case on the CPU and on the GPU: asv ``time_*`` benchmarks of one
forward+backward (loss and d loss / d logits) and of one forward.

asv times them itself: it chooses how many calls make a sample, repeats samples over several rounds in
fresh processes, keeps every sample (``asv continuous`` records them) and applies its significance test
(Mann-Whitney U) before a change counts. The timed callable is the benchmark core's step
(:meth:`cbbench.bench.providers.Provider.timed_step`), on the core's host clock; on a GPU the class's
``timer`` synchronises the device before each reading (:func:`cbbench.bench.timing.asv_clock`). On a
shared CPU, ``CBBENCH_ASV_CLOCK=cpu`` times the CPU classes by the process's CPU time instead (the
regression gate's test does, with one thread).

The cases are the ``asv`` set of the one case table (:data:`cbbench.bench.cases.CASE_TABLE`). ``setup``
checks the implementation against the reference on the timed inputs (a mismatch is a failure, not a
time) and skips what cannot run here (no GPU, kernels not built, peer not installed). asv re-runs
``setup`` before every sample; the prepared step is kept per process (:data:`_PREPARED`), so a sample
does not re-compile (torch.compile) or re-check: the steps keep no state between calls.
"""
from cbbench.bench.providers import MODES, PROVIDERS
from cbbench.bench.timing import asv_clock

from .common import CPU_IMPLEMENTATIONS, CUDA_SPEED_IMPLEMENTATIONS, case_ids, prepare


# (loss, device, impl, case) -> {mode: timed step}, for the process's parameter combination
_PREPARED = {}


class _LossSpeed:
    param_names = ["impl", "case"]
    loss = ""
    device = ""
    timeout = 300
    # asv times one call per sample (a class with setup); 10 to 40 samples or 4 s per round, 2 rounds
    repeat = (10, 40, 4.0)
    warmup_time = 0.2

    def setup(self, impl, case):
        key = (self.loss, self.device, impl, case)
        if key not in _PREPARED:
            spec, inputs, fn = prepare(self.loss, impl, self.device, case)
            provider = PROVIDERS[impl]
            _PREPARED[key] = {mode: provider.timed_step(fn, inputs, mode, self.device) for mode in MODES}
        self.steps = _PREPARED[key]

    def time_fwd_bwd(self, impl, case):
        self.steps["fwd_bwd"]()

    def time_fwd(self, impl, case):
        self.steps["fwd"]()


# Softmax is the class-weighted CE with PyTorch's weighted-mean reduction (= F.cross_entropy(weight=));
# sigmoid and focal (gamma 2) put w_y on all C binary terms and divide by N.
class SoftmaxCPU(_LossSpeed):
    loss, device = "softmax", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("softmax", "cpu", "asv")]
    timer = staticmethod(asv_clock("cpu"))


class SigmoidCPU(_LossSpeed):
    loss, device = "sigmoid", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("sigmoid", "cpu", "asv")]
    timer = staticmethod(asv_clock("cpu"))


class FocalCPU(_LossSpeed):
    loss, device = "focal", "cpu"
    params = [CPU_IMPLEMENTATIONS, case_ids("focal", "cpu", "asv")]
    timer = staticmethod(asv_clock("cpu"))


class SoftmaxCUDA(_LossSpeed):
    loss, device = "softmax", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("softmax", "cuda", "asv")]
    timer = staticmethod(asv_clock("cuda", "wall"))


class SigmoidCUDA(_LossSpeed):
    loss, device = "sigmoid", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("sigmoid", "cuda", "asv")]
    timer = staticmethod(asv_clock("cuda", "wall"))


class FocalCUDA(_LossSpeed):
    loss, device = "focal", "cuda"
    params = [CUDA_SPEED_IMPLEMENTATIONS, case_ids("focal", "cuda", "asv")]
    timer = staticmethod(asv_clock("cuda", "wall"))

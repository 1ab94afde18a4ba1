"""Memory of one forward+backward: peak resident memory of the process on the CPU (asv ``peakmem_``),
peak CUDA memory allocated above the inputs on the GPU (``track_``, MiB)."""
import torch

from cbbench.bench.providers import step

from .common import IMPLEMENTATIONS, prepare

LOSSES = ["softmax", "sigmoid", "focal"]


class PeakMemoryCPU:
    params = [LOSSES, IMPLEMENTATIONS, ["8192x1000"]]
    param_names = ["loss", "impl", "shape"]
    timeout = 300

    def setup(self, loss, impl, shape):
        # no reference check here: it would raise the process's peak before the measured call
        self.case, self.inputs, self.fn = prepare(loss, impl, "cpu", shape, "float32", verify=False)
        self.run = step(self.fn, self.inputs, "fwd_bwd")

    def peakmem_fwd_bwd(self, loss, impl, shape):
        self.run()


class PeakMemoryCUDA:
    params = [LOSSES, IMPLEMENTATIONS, ["65536x1000", "1048576x80"], ["float32", "bfloat16"]]
    param_names = ["loss", "impl", "shape", "dtype"]
    timeout = 300

    def setup(self, loss, impl, shape, dtype):
        self.case, self.inputs, self.fn = prepare(loss, impl, "cuda", shape, dtype, verify=False)
        self.run = step(self.fn, self.inputs, "fwd_bwd")
        self.run()  # compile / autotune outside the measured call
        torch.cuda.synchronize()

    def track_peak_allocated(self, *params):
        """Peak bytes allocated during one forward+backward, above what the inputs already hold."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    track_peak_allocated.unit = "MiB"

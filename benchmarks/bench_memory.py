"""Memory of one forward+backward: peak resident memory of the process on the CPU (asv ``peakmem_``),
peak CUDA memory allocated above the inputs on the GPU (``track_``, MiB)."""
import torch

from cbbench.bench.providers import step

from .common import CPU_IMPLEMENTATIONS, CUDA_IMPLEMENTATIONS, prepare

LOSSES = ["softmax", "sigmoid", "focal"]
CUDA_SHAPES = {"softmax": "65536x1000", "sigmoid": "1048576x80", "focal": "1048576x80"}


class PeakMemoryCPU:
    """8192x1000 float32 logits (32 MiB; the gradient is another 32 MiB)."""
    params = [LOSSES, CPU_IMPLEMENTATIONS]
    param_names = ["loss", "impl"]
    timeout = 300

    def setup(self, loss, impl):
        # no reference check here: it would raise the process's peak before the measured call
        self.case, self.inputs, self.fn = prepare(loss, impl, "cpu", "8192x1000", "float32", verify=False)
        self.run = step(self.fn, self.inputs, "fwd_bwd")

    def peakmem_fwd_bwd(self, loss, impl):
        self.run()


class PeakMemoryCUDA:
    """float32 logits of 65536x1000 (softmax) or 1048576x80 (sigmoid, focal)."""
    params = [LOSSES, CUDA_IMPLEMENTATIONS]
    param_names = ["loss", "impl"]
    timeout = 300

    def setup(self, loss, impl):
        self.case, self.inputs, self.fn = prepare(loss, impl, "cuda", CUDA_SHAPES[loss], "float32", verify=False)
        self.run = step(self.fn, self.inputs, "fwd_bwd")
        self.run()  # compile / autotune outside the measured call
        torch.cuda.synchronize()

    def track_peak_allocated(self, loss, impl):
        """Peak bytes allocated during one forward+backward, above what the inputs already hold."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    track_peak_allocated.unit = "MiB"

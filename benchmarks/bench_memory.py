"""Memory of one forward+backward: the rise of the process's resident memory during the call on the CPU,
peak CUDA memory allocated above the inputs on the GPU (both ``track_``, MiB).

The CPU number is not asv's ``peakmem_`` (the peak of the whole process, setup included, which for
``compile`` is the compilation): the high-water mark is reset after setup (``5`` written to
``/proc/self/clear_refs``) and the call's peak ``VmHWM`` less the ``VmRSS`` before it is reported.
Linux only; skipped where ``/proc`` cannot do that."""
import torch

from cbbench.bench.cases import LOSSES, case_id, suite
from cbbench.bench.providers import step

from .common import CPU_IMPLEMENTATIONS, CUDA_IMPLEMENTATIONS, prepare


def memory_cases(device):
    """``"<loss> <case>"`` for the ``memory`` set of the case table on ``device``."""
    return [f"{c.loss} {case_id(c)}" for c in suite(device, losses=LOSSES, set_name="memory")]


def _status_kib(field):
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_rss():
    """Reset the process's resident-memory high-water mark (VmHWM) to its current resident size."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss_rise_mib(fn):
    """MiB by which the resident memory peaked above its level before ``fn()`` (high-water mark reset
    first, so nothing before the call counts)."""
    reset_peak_rss()
    before = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - before) / 1024


def proc_peak_rss_unavailable():
    """Why :func:`peak_rss_rise_mib` cannot work here, or ``None``."""
    try:
        reset_peak_rss()
        _status_kib("VmRSS")
        _status_kib("VmHWM")
    except OSError as exc:
        return f"no resettable peak RSS in /proc ({type(exc).__name__}: {exc})"
    return None


class PeakMemoryCPU:
    """The ``memory`` cases of the CPU (8192x1000 float32: 32 MiB of logits, another 32 of gradient)."""
    params = [memory_cases("cpu"), CPU_IMPLEMENTATIONS]
    param_names = ["case", "impl"]
    timeout = 300

    def setup(self, case, impl):
        reason = proc_peak_rss_unavailable()
        if reason is not None:
            raise NotImplementedError(reason)
        loss, _, shape = case.partition(" ")
        # no reference check here (not needed: bench_speed checks); one untimed call compiles / warms up
        self.case, self.inputs, self.fn = prepare(loss, impl, "cpu", shape, verify=False)
        self.run = step(self.fn, self.inputs, "fwd_bwd")
        self.run()

    def track_peak_rss(self, case, impl):
        """Rise of the resident memory during one forward+backward, above the level before it."""
        return peak_rss_rise_mib(self.run)

    track_peak_rss.unit = "MiB"


class PeakMemoryCUDA:
    """The ``memory`` cases of the GPU (float32 65536x1000 softmax, 1048576x80 sigmoid and focal)."""
    params = [memory_cases("cuda"), CUDA_IMPLEMENTATIONS]
    param_names = ["case", "impl"]
    timeout = 300

    def setup(self, case, impl):
        loss, _, shape = case.partition(" ")
        self.case, self.inputs, self.fn = prepare(loss, impl, "cuda", shape, verify=False)
        self.run = step(self.fn, self.inputs, "fwd_bwd")
        self.run()  # compile / autotune outside the measured call
        torch.cuda.synchronize()

    def track_peak_allocated(self, case, impl):
        """Peak bytes allocated during one forward+backward, above what the inputs already hold."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    track_peak_allocated.unit = "MiB"

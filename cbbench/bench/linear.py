"""Fused classifier heads: time and peak extra memory of one forward+backward, side by side in one run.

    python -m cbbench.bench.linear [--set quick|full] [--device cpu|cuda] [--threads 1] [--clock process]
                                   [--repeats 3] [--out report/linear]

Each case (``cbbench.bench.cases.HEAD_TABLE``: hidden N x H, C classes, class-balanced weights) runs
every implementation that can, after checking its loss and its three gradients against
``F.linear`` + the reference loss on the same inputs:

* ``fused`` -- :func:`cbbench.functional.linear_softmax_cross_entropy` and its sigmoid / focal
  siblings (row chunks, the fused kernel, default chunk budget);
* ``unfused`` -- ``F.linear`` followed by cbbench's fused loss (the logits materialised);
* ``torch_chunked`` -- torch's ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``
  (its chunked path with its default chunks; weighted CE only);
* ``torch_chunked_eqmem`` -- the same at the fused head's memory: ``batch_chunk_size`` half the fused
  head's default rows per chunk and kernel block (torch's chunked path holds two (rows, C) buffers --
  157 MiB at 682 rows of 32000 classes -- where cbbench holds one);
* ``torch`` -- torch's ``F.linear_cross_entropy`` without options (``linear`` + ``F.cross_entropy``);
* ``eager`` -- ``F.linear`` + the loss as written in plain PyTorch (the speed runner's eager peer,
  :data:`cbbench.bench.providers.EAGER`; for softmax the same computation as ``torch``);
* ``compile`` -- ``torch.compile`` of ``eager`` (a fresh compilation per case);
* ``liger`` / ``cce`` -- Liger-Kernel's fused linear CE and cut-cross-entropy, on CUDA where installed
  (CCE has no class weights: it is checked against, and does the work of, the unweighted CE).

Speed: the implementations take turns (round robin, ``--repeats`` rounds after one checked call), each
sample timed by the shared core (:func:`cbbench.bench.timing.measure`); on a shared CPU use one thread
and ``--clock process`` (CPU time of the process, which other processes' time slices do not inflate).

Memory: the rise of the peak above the level before the call, less the gradients the call returns
(every implementation must allocate those) = **extra** memory, beside the (N, C) logits it would
otherwise take. On the CPU a fresh process measures it (``--probe``) with glibc's mmap threshold
fixed at 64 KiB, so every freed buffer goes back to the system and the resident-set high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``) follows the live buffers; on CUDA,
``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .. import functional as cbf
from ..linear import chunking
from ..provenance import environment, load_average
from .cases import (FOCAL_GAMMA, HEAD_SETS, LOSS_TITLES, REDUCTION, HeadCase, HeadInputs, head_case_id, head_suite,
                    make_head_inputs, parse_head_case_id)
from .timing import TimingPolicy, measure

MIB = 2 ** 20


# ----------------------------------------------------------------------------------------------
# implementations
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadImpl:
    name: str
    title: str
    losses: Tuple[str, ...]
    devices: Tuple[str, ...] = ("cpu", "cuda")
    package: Optional[str] = None  # must be importable
    weighted: bool = True  # False: computes the unweighted CE (no class weights in its API)

    def unavailable(self, case: HeadCase) -> Optional[str]:
        if case.loss not in self.losses:
            return f"{self.name} has no {LOSS_TITLES[case.loss]}"
        if case.device not in self.devices:
            return f"{self.name} runs on {'/'.join(self.devices)} only"
        if case.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        if self.package is not None and importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed"
        return None


SOFTMAX_ONLY = ("softmax",)
IMPLS: Dict[str, HeadImpl] = {impl.name: impl for impl in (
    HeadImpl("fused", "cbbench fused head (row chunks)", ("softmax", "sigmoid", "focal")),
    HeadImpl("unfused", "F.linear + cbbench fused loss", ("softmax", "sigmoid", "focal")),
    HeadImpl("torch_chunked", "torch F.linear_cross_entropy, chunked", SOFTMAX_ONLY),
    HeadImpl("torch_chunked_eqmem", "torch F.linear_cross_entropy, chunked, cbbench's chunk memory", SOFTMAX_ONLY),
    HeadImpl("torch", "torch F.linear_cross_entropy (linear + cross_entropy)", SOFTMAX_ONLY),
    HeadImpl("eager", "F.linear + the loss in plain PyTorch", ("softmax", "sigmoid", "focal")),
    HeadImpl("compile", "torch.compile of F.linear + the loss in plain PyTorch", ("softmax", "sigmoid", "focal")),
    HeadImpl("liger", "Liger-Kernel fused linear CE", SOFTMAX_ONLY, ("cuda",), "liger_kernel"),
    HeadImpl("cce", "cut-cross-entropy (unweighted)", SOFTMAX_ONLY, ("cuda",), "cut_cross_entropy", weighted=False),
)}


def _cbbench_loss(case: HeadCase, linear: bool, backend: str = "auto", weighted: bool = True):
    """The case's loss through cbbench: the fused head (``linear``) or ``F.linear`` + the loss."""
    reduction = REDUCTION[case.loss] if weighted else "mean"
    kw = dict(reduction=reduction, backend=backend)
    if case.loss == "focal":
        kw["gamma"] = FOCAL_GAMMA
    if linear:
        fn = {"softmax": cbf.linear_softmax_cross_entropy, "sigmoid": cbf.linear_sigmoid_cross_entropy,
              "focal": cbf.linear_sigmoid_focal_loss}[case.loss]
        return lambda x: fn(x.hidden, x.linear_weight, x.target, x.weight if weighted else None,
                            linear_bias=x.linear_bias, **kw)
    fn = {"softmax": cbf.softmax_cross_entropy, "sigmoid": cbf.sigmoid_cross_entropy,
          "focal": cbf.sigmoid_focal_loss}[case.loss]
    return lambda x: fn(F.linear(x.hidden, x.linear_weight, x.linear_bias), x.target, x.weight if weighted else None,
                        **kw)


def loss_fn(impl: str, case: HeadCase) -> Callable[[HeadInputs], torch.Tensor]:
    """The forward of ``impl`` on the case: inputs -> loss (the softmax peers compute PyTorch's
    weighted mean, ``F.cross_entropy(weight=w)``, which is cbbench's ``"weighted_mean"``)."""
    if impl == "fused":
        return _cbbench_loss(case, linear=True)
    if impl == "unfused":
        return _cbbench_loss(case, linear=False)
    if impl in ("torch_chunked", "torch_chunked_eqmem", "torch"):
        options = None
        if impl == "torch_chunked":
            options = torch.nn.LinearCrossEntropyOptions()
        elif impl == "torch_chunked_eqmem":
            rows = (sum(chunking(case.n, case.c, case.torch_dtype, case.device)) + 1) // 2
            options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=rows, chunking_method=None)
        return lambda x: F.linear_cross_entropy(x.hidden, x.linear_weight, x.target, linear_bias=x.linear_bias,
                                                weight=x.weight, options=options)
    if impl in ("eager", "compile"):
        from .providers import EAGER, compiled

        eager = EAGER[case.loss]
        fn = (lambda h, w, b, y, cw: eager(F.linear(h, w, b), y, cw))  # noqa: E731
        fn = compiled(fn) if impl == "compile" else fn
        return lambda x: fn(x.hidden, x.linear_weight, x.linear_bias, x.target, x.weight)
    if impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        module = {}

        def liger(x):
            if "m" not in module:  # the class weights are a constructor argument
                module["m"] = LigerFusedLinearCrossEntropyLoss(ce_weight=x.weight, reduction="mean")
            return module["m"](x.linear_weight, x.hidden, x.target, x.linear_bias)
        return liger
    if impl == "cce":
        from cut_cross_entropy import linear_cross_entropy
        return lambda x: linear_cross_entropy(x.hidden, x.linear_weight, x.target, bias=x.linear_bias,
                                              reduction="mean")
    raise ValueError(f"unknown implementation {impl!r}; choose from {sorted(IMPLS)}")


def _leaves(x: HeadInputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return x.hidden, x.linear_weight, x.linear_bias


def step(fn: Callable[[HeadInputs], torch.Tensor], inputs: HeadInputs) -> Callable[[], torch.Tensor]:
    """One training step of the head: gradients cleared, loss, backward into the three leaves."""
    def run():
        for leaf in _leaves(inputs):
            leaf.grad = None
        loss = fn(inputs)
        loss.backward()
        return loss
    return run


def reference_values(case: HeadCase, inputs: HeadInputs, weighted: bool = True):
    """Loss and gradients of ``F.linear`` + the reference loss (``backend="reference"``)."""
    loss = _cbbench_loss(case, linear=False, backend="reference", weighted=weighted)(inputs)
    grads = torch.autograd.grad(loss, _leaves(inputs))
    return loss.detach(), [g.detach() for g in grads]


def check(fn, inputs: HeadInputs, expected, rtol: float = 2e-3) -> float:
    """Run one step and compare its loss and gradients with ``expected``; the largest error relative to
    each quantity's largest magnitude, or AssertionError above ``rtol``."""
    loss = step(fn, inputs)().detach()
    worst = 0.0
    for name, got, want in [("loss", loss, expected[0])] + [
            (n, leaf.grad, w) for n, leaf, w in zip(("d hidden", "d weight", "d bias"), _leaves(inputs), expected[1])]:
        if got is None:
            raise AssertionError(f"{name}: no gradient")
        scale = want.abs().max().item() if want.numel() else 0.0
        err = (got.float() - want.float()).abs().max().item() / max(scale, 1e-30) if want.numel() else 0.0
        if not err <= rtol:
            raise AssertionError(f"{name}: largest error {err:.2e} of its largest value (tolerance {rtol:g})")
        worst = max(worst, err)
    return worst


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _grad_bytes(inputs: HeadInputs) -> int:
    return sum(leaf.grad.numel() * leaf.grad.element_size() for leaf in _leaves(inputs) if leaf.grad is not None)


def measure_memory_here(impl: str, case: HeadCase) -> dict:
    """Peak memory of one forward+backward of ``impl`` in this process, after a warm-up call: the rise
    above the level before it, the gradients returned, and the difference (extra), in MiB. On the CPU
    run it through :func:`measure_memory` (a fresh process with the allocator set up for it)."""
    inputs = make_head_inputs(case)
    run = step(loss_fn(impl, case), inputs)
    run()  # warm-up: kernels loaded, BLAS buffers allocated
    for leaf in _leaves(inputs):
        leaf.grad = None
    gc.collect()
    if case.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        rise = torch.cuda.max_memory_allocated() - before
    else:
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current resident size
            fh.write("5")
        before = _status_kib("VmRSS") * 1024
        run()
        rise = _status_kib("VmHWM") * 1024 - before
    grads = _grad_bytes(inputs)
    return {"peak_rise_mib": rise / MIB, "grads_mib": grads / MIB, "extra_mib": max(0, rise - grads) / MIB}


def measure_memory(impl: str, case: HeadCase, threads: int = 1, timeout: float = 1800) -> dict:
    """:func:`measure_memory_here` in a fresh process on the CPU (glibc mmap threshold fixed at 64 KiB:
    freed buffers return to the system at once, so the resident high-water mark follows the live
    buffers), in this one on CUDA."""
    if case.device == "cuda":
        return measure_memory_here(impl, case)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "cbbench.bench.linear", "--probe", impl, head_case_id(case),
           "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({' '.join(cmd)}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def proc_peak_unavailable() -> Optional[str]:
    """Why the CPU memory probe cannot work here (no resettable ``VmHWM``), or ``None``."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _status_kib("VmHWM")
    except OSError as exc:
        return f"no resettable peak RSS in /proc ({type(exc).__name__}: {exc})"
    return None


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def run_case(case: HeadCase, impls, *, repeats: int = 3, cpu_clock: str = "process", threads: int = 1,
             memory: bool = True, progress=None) -> List[dict]:
    """Check, time (round robin) and measure the memory of each implementation on one case."""
    inputs = make_head_inputs(case)
    rows, runs, expected = [], {}, {}
    for name in impls:
        impl = IMPLS[name]
        row = {"case": head_case_id(case), "loss": case.loss, "shape": case.shape, "dtype": case.dtype,
               "device": case.device, "impl": name, "title": impl.title, "weighted": impl.weighted,
               "logits_mib": case.logits_bytes / MIB, "status": "ok"}
        rows.append(row)
        reason = impl.unavailable(case)
        if reason is not None:
            row.update(status="skipped", note=reason)
            continue
        if impl.weighted not in expected:
            expected[impl.weighted] = reference_values(case, inputs, impl.weighted)
        try:
            fn = loss_fn(name, case)
            row["max_rel_error"] = check(fn, inputs, expected[impl.weighted])
            runs[name] = step(fn, inputs)
        except AssertionError as exc:
            row.update(status="mismatch", note=str(exc))
        except Exception as exc:  # a peer that cannot run the case
            row.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
    del expected
    samples: Dict[str, List[float]] = {name: [] for name in runs}
    once = TimingPolicy(warmup=0, min_repeat=1, max_repeat=1, budget_s=0.0)
    clock = None
    for _ in range(repeats):
        for name, run in runs.items():
            m = measure(run, case.device, once, cpu_clock=cpu_clock)
            samples[name].extend(m.samples_ms)
            clock = m.clock
            if progress is not None:
                progress.update(1)
    del runs, inputs
    gc.collect()
    for row in rows:
        name = row["impl"]
        if name in samples and samples[name]:
            xs = samples[name]
            row.update(median_s=statistics.median(xs) / 1e3, min_s=min(xs) / 1e3, samples_s=[x / 1e3 for x in xs],
                       clock=clock)
        if memory and row["status"] == "ok":
            try:
                row.update(measure_memory(name, case, threads))
                row["extra_vs_logits"] = row["extra_mib"] / row["logits_mib"]
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                row["memory_note"] = str(exc)[-300:]
            if progress is not None:
                progress.update(1)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: List[dict]) -> None:
    """``fused_speedup``: the median over the rounds of this row's time / the fused head's in the same
    round (> 1: fused faster), on the same case; the implementations take turns within a round, so a
    drift of a shared machine falls on both sides of each ratio."""
    fused = next((r["samples_s"] for r in rows if r["impl"] == "fused" and r.get("samples_s")), None)
    for r in rows:
        if r.get("samples_s") and fused:
            r["fused_speedup"] = statistics.median(t / f for t, f in zip(r["samples_s"], fused))


def table(rows: List[dict]) -> str:
    """A markdown table of the rows: time, extra memory (and its share of the logits), speed-ups."""
    lines = ["| case | implementation | fwd+bwd (s) | extra memory (MiB) | extra / logits | fused is x faster (per round) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['impl']} | {r['status']}: {r.get('note', '')} | | | |")
            continue

        def fmt(key, spec):
            return format(r[key], spec) if r.get(key) is not None else "-"
        lines.append(f"| {r['case']} | {r['impl']} | {fmt('median_s', '.3f')} | {fmt('extra_mib', '.1f')} | "
                     f"{fmt('extra_vs_logits', '.3f')} | {fmt('fused_speedup', '.2f')} |")
    return "\n".join(lines)


def plot(rows: List[dict], path: Path) -> Optional[Path]:
    """Time against extra memory, one panel per case (matplotlib; ``None`` when it is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = list(dict.fromkeys(r["case"] for r in rows if r.get("median_s") and r.get("extra_mib") is not None))
    if not cases:
        return None
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for r in rows:
            if r["case"] == case and r.get("median_s") and r.get("extra_mib") is not None:
                ax.scatter(r["extra_mib"], r["median_s"], s=40)
                ax.annotate(r["impl"], (r["extra_mib"], r["median_s"]), fontsize=8, xytext=(4, 4),
                            textcoords="offset points")
        logits = next(r["logits_mib"] for r in rows if r["case"] == case)
        ax.axvline(logits / 8, color="grey", linestyle=":", label="1/8 of the logits")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("extra memory of fwd+bwd (MiB)")
        ax.set_ylabel("fwd+bwd (s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(set_name: str = "quick", device: str = "cpu", *, impls=tuple(IMPLS), repeats: int = 3,
        cpu_clock: str = "process", threads: int = 1, memory: bool = True, cases=None, log=print) -> dict:
    """Every case of the set on ``device``; returns ``{"env", "threads", "clock", "rows"}``."""
    from tqdm import tqdm

    torch.set_num_threads(threads)
    cases = cases if cases is not None else head_suite(device, set_name)
    if memory and device == "cpu" and proc_peak_unavailable() is not None:
        log(f"memory not measured: {proc_peak_unavailable()}")
        memory = False
    load_before = load_average()
    rows: List[dict] = []
    total = sum((repeats + memory) * sum(IMPLS[i].unavailable(c) is None for i in impls) for c in cases)
    with tqdm(total=total, desc="fused heads", unit="step", file=sys.stderr) as progress:
        for case in cases:
            rows.extend(run_case(case, impls, repeats=repeats, cpu_clock=cpu_clock, threads=threads, memory=memory,
                                 progress=progress))
    env = environment(device)
    env["load_average_1min_before"] = load_before
    return {"env": env, "threads": threads, "clock": cpu_clock if device == "cpu" else "cuda-events",
            "repeats": repeats, "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cbbench.bench.linear", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="set_name", choices=HEAD_SETS, default="quick")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--impl", action="append", choices=sorted(IMPLS), help="only these (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--clock", choices=("process", "wall"), default="process",
                        help="CPU clock: process CPU time (default) or wall time")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the checked call")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--out", type=Path, default=None, help="write linear.json, linear.md and linear.png here")
    parser.add_argument("--probe", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit("--threads and --repeats must be >= 1")
    if args.probe:  # the memory probe's process (measure_memory)
        torch.set_num_threads(args.threads)
        print(json.dumps(measure_memory_here(args.probe[0], parse_head_case_id(args.probe[1], args.device))))
        return 0
    result = run(args.set_name, args.device, impls=tuple(args.impl or IMPLS), repeats=args.repeats,
                 cpu_clock=args.clock, threads=args.threads, memory=not args.no_memory)
    result["env"]["load_average_1min_after"] = load_average()
    text = table(result["rows"])
    print(text)
    print(f"\nload average (1 min) before / after: {result['env']['load_average_1min_before']} / "
          f"{result['env']['load_average_1min_after']}; {args.threads} thread(s), clock {result['clock']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "linear.json").write_text(json.dumps(result, indent=1, default=str))
        (args.out / "linear.md").write_text(text + "\n")
        png = plot(result["rows"], args.out / "linear.png")
        print(f"wrote {args.out / 'linear.json'}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

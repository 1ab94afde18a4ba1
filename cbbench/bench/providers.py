"""Implementations of each benchmarked loss ("providers"), all computing the same number per case.

* ``reference`` — :mod:`cbbench.reference` through ``cbbench.functional(..., backend="reference")``;
* ``cpu`` / ``cuda`` — cbbench's fused Cython / CUDA kernels (skipped when not built);
* ``cuda_graph`` — the same CUDA call with the whole timed step (forward, or forward and backward)
  captured once in a CUDA graph and replayed: what a training loop under CUDA graphs or
  ``torch.compile(mode="reduce-overhead")`` pays, i.e. the kernels without Python and launch overhead.
  It is shown beside the eager peers but gets no speed-up ratio against them (not like for like);
* ``eager`` — what people write in plain PyTorch: ``F.cross_entropy(weight=w)``; the class-balanced
  sigmoid loss as ``F.binary_cross_entropy_with_logits`` on one-hot targets with the per-row weight
  ``w[y]``; the focal loss in torchvision's formula (``p_t``, ``(1 - p_t) ** gamma``); the softmax focal
  loss as LDAM-DRW writes it (``p = exp(-CE)``, ``(1 - p) ** gamma * CE``, times ``w[y]``);
* ``compile`` — ``torch.compile`` of the eager functions (a fresh compilation per case);
* ``liger`` — Liger-Kernel's ``LigerCrossEntropyLoss(weight=w)`` (softmax on CUDA, when installed); it
  writes its gradient into the logits in place (``Provider.mutates_input``);
* ``balanced_loss`` — the ``balanced-loss`` package from PyPI (``balanced_loss.Loss(class_balanced=True)``),
  the most-used published class-balanced loss, when installed. It computes the class-balanced weights
  from the counts on every call (numpy, as a user pays it) and a different quantity for two losses
  (:data:`BALANCED_LOSS_QUANTITY`): it is checked against the reference for what it computes.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .. import functional as cbf
from .. import ops
from .cases import CB_BETA, FOCAL_GAMMA, LOSS_TITLES, REDUCTION, Case, Inputs, long_tail_counts

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

IMPLEMENTATIONS = ("reference", "cpu", "cuda", "cuda_graph", "eager", "compile", "liger", "balanced_loss")
PEERS = ("eager", "compile", "liger", "balanced_loss")


# ----------------------------------------------------------------------------------------------
# the losses, per implementation
# ----------------------------------------------------------------------------------------------
def cbbench_loss(loss: str, backend: str, reduction: Optional[str] = None) -> LossFn:
    reduction = reduction or REDUCTION[loss]
    if loss == "softmax":
        return lambda z, y, w: cbf.softmax_cross_entropy(z, y, w, reduction=reduction, backend=backend)
    if loss == "sigmoid":
        return lambda z, y, w: cbf.sigmoid_cross_entropy(z, y, w, reduction=reduction, backend=backend)
    if loss == "softmax_focal":
        return lambda z, y, w: cbf.softmax_focal_loss(z, y, w, gamma=FOCAL_GAMMA, reduction=reduction,
                                                      backend=backend)
    return lambda z, y, w: cbf.sigmoid_focal_loss(z, y, w, gamma=FOCAL_GAMMA, reduction=reduction, backend=backend)


def eager_softmax(z, y, w):
    return F.cross_entropy(z, y, weight=w)


def eager_sigmoid(z, y, w):
    t = F.one_hot(y, z.shape[1]).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, t, weight=w[y].unsqueeze(1), reduction="sum") / z.shape[0]


def eager_focal(z, y, w):
    t = F.one_hot(y, z.shape[1]).to(z.dtype)
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** FOCAL_GAMMA
    return (loss * w[y].unsqueeze(1)).sum() / z.shape[0]


def eager_softmax_focal(z, y, w):
    # LDAM-DRW's FocalLoss with the class weight on each sample's loss: (1 - p_y)^gamma * w_y * CE, mean over N
    ce = F.cross_entropy(z, y, reduction="none")
    p = torch.exp(-ce)
    return ((1 - p) ** FOCAL_GAMMA * ce * w[y]).sum() / z.shape[0]


EAGER: Dict[str, LossFn] = {"softmax": eager_softmax, "sigmoid": eager_sigmoid, "focal": eager_focal,
                            "softmax_focal": eager_softmax_focal}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    return importlib.util.find_spec(module) is not None


# balanced-loss's loss types, and what it computes where that differs from the case's quantity:
# (reference reduction, divisor). Its cross-entropy passes one-hot float targets to F.cross_entropy, whose
# mean then divides by N (the paper's mean), not by the weight sum; its sigmoid loss is
# binary_cross_entropy_with_logits' mean over all N*C terms, so 1/C of the paper's mean.
BALANCED_LOSS_TYPES = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "focal": "focal_loss"}
BALANCED_LOSS_QUANTITY = {"softmax": ("mean", "1"), "sigmoid": ("mean", "C"), "focal": ("mean", "1")}


def balanced_loss_module(loss: str, counts, beta: float = CB_BETA, gamma: float = FOCAL_GAMMA):
    """``balanced_loss.Loss`` for ``loss`` with class-balanced weights of ``counts``."""
    from balanced_loss import Loss

    return Loss(loss_type=BALANCED_LOSS_TYPES[loss], beta=beta, fl_gamma=gamma,
                samples_per_class=[int(n) for n in counts], class_balanced=True)


def compiled(fn):
    """``torch.compile(fn)`` for one case's shapes (also used by the fused-head runner)."""
    # A fresh Dynamo state per case: the cache of one code object is shared by every shape, and past
    # the recompile limit Dynamo silently falls back to eager, which would be reported as "compile".
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


@dataclass(frozen=True)
class Provider:
    name: str
    description: str
    # True when a call overwrites its inputs (Liger's cross-entropy writes the gradient into the logits in
    # place): the speed runner gives such a provider inputs of its own, so the others see pristine ones
    mutates_input: bool = False
    # the cbbench kernel module this provider runs ("cpu"/"cuda"), or None
    kernel: Optional[str] = None
    # True when the timed step is captured in a CUDA graph and replayed (see :func:`graphed`)
    graphed: bool = False
    # True for torch.compile'd callables: their operators cannot be counted (see cbbench.bench.opcount)
    compiled: bool = False
    # loss -> (reference reduction, divisor "1" or "C") where this implementation computes another
    # quantity than the case's (REDUCTION): its check is against that quantity
    quantity: Optional[Dict[str, Tuple[str, str]]] = None

    def expected_quantity(self, case: Case) -> Tuple[str, float]:
        """``(reduction, divisor)`` of the reference value this implementation must reproduce."""
        reduction, divisor = (self.quantity or {}).get(case.loss, (REDUCTION[case.loss], "1"))
        return reduction, float(case.c if divisor == "C" else 1)

    def timed_step(self, fn: LossFn, inputs: Inputs, mode: str, device) -> Callable[[], object]:
        """The callable to time for ``mode``: :func:`step`, replayed from a CUDA graph when ``graphed``."""
        run = step(fn, inputs, mode)
        return graphed(run, device) if self.graphed else run

    def unavailable(self, case: Case) -> Optional[str]:
        """Why this implementation cannot run ``case`` here, or ``None`` when it can."""
        device = torch.device(case.device)
        if device.type == "cuda" and not (torch.version.cuda and torch.cuda.is_available()):
            return "no CUDA device"
        kernel = self.kernel
        if kernel is not None:
            if device.type != kernel:
                return f"the {kernel} kernels run on {kernel} tensors only"
            if ops.kernel_module(kernel) is None:
                return f"cbbench {kernel} kernels not built ({ops.kernel_status(kernel)})"
        if self.name == "liger":
            if case.loss != "softmax":
                return "Liger-Kernel has no class-weighted sigmoid/focal loss"
            if device.type != "cuda":
                return "Liger-Kernel runs on CUDA only"
            if not installed("liger_kernel"):
                return "liger-kernel not installed"
        if self.name == "balanced_loss":
            if case.loss not in BALANCED_LOSS_TYPES:
                return f"balanced-loss has no {LOSS_TITLES[case.loss]} loss"
            if not installed("balanced_loss"):
                return "balanced-loss not installed (pip install balanced-loss)"
        return None

    def build(self, case: Case, inputs: Optional[Inputs] = None) -> LossFn:
        """A callable ``(logits, target, weight) -> scalar loss`` for ``case``."""
        reason = self.unavailable(case)
        if reason is not None:
            raise RuntimeError(f"{self.name} cannot run {case.label()}: {reason}")
        if self.name == "reference" or self.kernel is not None:
            return cbbench_loss(case.loss, self.kernel or self.name)
        if self.name == "eager":
            return EAGER[case.loss]
        if self.name == "compile":
            return compiled(EAGER[case.loss])
        if self.name == "balanced_loss":
            module = balanced_loss_module(case.loss, long_tail_counts(case.c).tolist())
            return lambda z, y, w: module(z, y)
        from liger_kernel.transformers import LigerCrossEntropyLoss

        if inputs is None:
            raise ValueError("the liger provider needs the case's inputs (its weight is a module buffer)")
        module = LigerCrossEntropyLoss(weight=inputs.weight, reduction="mean")
        return lambda z, y, w: module(z, y)


PROVIDERS: Dict[str, Provider] = {p.name: p for p in (
    Provider("reference", "cbbench reference (plain PyTorch, autograd)"),
    Provider("cpu", "cbbench fused Cython kernel", kernel="cpu"),
    Provider("cuda", "cbbench fused CUDA kernel", kernel="cuda"),
    Provider("cuda_graph", "cbbench fused CUDA kernel, the step replayed from a CUDA graph", kernel="cuda",
             graphed=True),
    Provider("eager", "torch eager: F.cross_entropy(weight=) / BCE-with-logits / torchvision focal"),
    Provider("compile", "torch.compile of the eager version", compiled=True),
    Provider("liger", "Liger-Kernel LigerCrossEntropyLoss(weight=)", mutates_input=True),
    Provider("balanced_loss", "balanced-loss (PyPI) Loss(class_balanced=True)", quantity=BALANCED_LOSS_QUANTITY),
)}


# ----------------------------------------------------------------------------------------------
# the timed callables and the correctness check
# ----------------------------------------------------------------------------------------------
MODES = ("fwd_bwd", "fwd")


def step(fn: LossFn, inputs: Inputs, mode: str) -> Callable[[], object]:
    """The work timed for ``mode``: ``"fwd_bwd"`` = loss and d loss / d logits (``autograd.grad``, so
    no accumulation into ``.grad``); ``"fwd"`` = the loss under ``no_grad``."""
    z, y, w = inputs.logits, inputs.target, inputs.weight
    if mode == "fwd_bwd":
        def run():
            return torch.autograd.grad(fn(z, y, w), z)[0]
    elif mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(z, y, w)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return run


def graphed(run: Callable[[], object], device) -> Callable[[], object]:
    """``run`` captured once in a CUDA graph (after a warm-up on a side stream, as torch's CUDA-graph
    notes prescribe); the returned callable replays it. Its outputs live in the graph's memory pool
    and are overwritten by every replay."""
    device = torch.device(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


# normwise tolerance max|a - b| <= atol + rtol * max|b| per logits dtype
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (2e-4, 1e-7), "float16": (2e-2, 1e-4),
             "bfloat16": (4e-2, 1e-3)}


def reference_values(case: Case, inputs: Inputs, quantity: Optional[Tuple[str, float]] = None):
    """The reference loss and gradient for ``case``, computed at float32 (float64 for float64) from the
    same logits values; ``quantity`` = ``(reduction, divisor)`` for an implementation that computes
    another quantity (:meth:`Provider.expected_quantity`)."""
    reduction, divisor = quantity or (REDUCTION[case.loss], 1.0)
    compute = torch.float64 if case.dtype == "float64" else torch.float32
    z = inputs.logits.detach().to(compute).requires_grad_(True)
    loss = cbbench_loss(case.loss, "reference", reduction)(z, inputs.target, inputs.weight) / divisor
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def check(fn: LossFn, case: Case, inputs: Inputs, expected=None) -> float:
    """Largest normwise error of loss and gradient of ``fn`` against the reference (``expected`` =
    :func:`reference_values`, default the case's quantity), relative to the tolerance of the case's
    dtype (<= 1 passes). Raises AssertionError on a mismatch."""
    exp_loss, exp_grad = expected if expected is not None else reference_values(case, inputs)
    z = inputs.logits
    loss = fn(z, inputs.target, inputs.weight)
    (grad,) = torch.autograd.grad(loss, z)
    rtol, atol = TOLERANCE[case.dtype]
    worst = 0.0
    for name, got, want in (("loss", loss.detach(), exp_loss), ("grad", grad, exp_grad)):
        got = got.to(want.dtype)
        if not torch.isfinite(got).all():
            raise AssertionError(f"{case.label()}: non-finite {name}")
        err = (got - want).abs().max().item()
        bound = atol + rtol * want.abs().max().item()
        ratio = err / bound
        if ratio > 1.0:
            raise AssertionError(f"{case.label()}: {name} differs from the reference by {err:.3g} "
                                 f"(allowed {bound:.3g})")
        worst = max(worst, ratio)
    return worst

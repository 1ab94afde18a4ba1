"""`make cuda-emu-check`: every CUDA kernel of kernels/cuda executed by the emulator, on every launch path,
against cbbench/reference.py.

* softmax_ce on every path (group<G>xNV for every G and NV, block, cluster at compute capability 9.0,
  split at 8.0 and beyond the cluster capacity), sigmoid cross-entropy and sigmoid focal on every path
  with class and multi-hot targets, and the in-place gradient scale;
* the softmax focal loss (gamma 2 and 0.5, rows with p_y -> 1, per-class alpha) and sample weights on
  every kernel;
* f32, f64, f16, bf16 with every option: class weight, logit offset with -inf-masked classes (scattered,
  and a leading run as long as a split chunk), target margin, scale, label smoothing, gradient scale,
  forward only, ignore_index (-100 and a valid class), out-of-range targets, rows off 16-byte alignment
  (logits, targets and gradient at different offsets), C from 1 to above the split threshold, rows of
  extreme logits;
* the loss of every row and **every gradient entry** compared with the reference (float64, on the same
  dtype-rounded inputs) at the dtype's tolerance; out-of-range rows must be NaN, ignored rows 0; every
  buffer is guarded by canaries (no write outside it) and a guard page;
* under several fiber orders (forward, reverse, seeded random) on a compute capability 9.0 device and
  once on an 8.0 device (no clusters); the outputs of one case must be bitwise identical under every
  order, and across devices wherever the path is the same (no result may depend on thread timing);
* the reduction's divisor and gradient scale for every reduction and target kind against the formula of
  cbbench/shapes.py: in a launch of its own (divisor.cu) and inside the loss kernels' launch (cb_divisor.cuh:
  weighted, unweighted, sample-weighted, multi-hot and forward-only calls on every path), where the call
  must be the loss launch alone (two on the split path) and leave its sync words zero;
* the launch planner's device queries: a stream being captured takes the split path and makes no query,
  a cluster that cannot be resident falls back to split, launches per call are counted.

Prints one line per kernel, dtype, path and configuration with the values checked; exits 1 on any
failure (70 when a kernel touched memory outside its buffers: the emulator names the block, the thread
and the case). `--only REGEX` restricts the cases (tests/test_cuda_emulated_kernels.py runs planted bugs that
way), `--lib` takes an already built emulator library.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import build_emulator  # noqa: E402
from emulator import Emulator  # noqa: E402

from cbbench import reference, shapes  # noqa: E402

DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
# (rtol, atol) of the per-row loss (accumulated in fp32, fp64 for f64) and of a gradient entry (stored in
# the logits' dtype: about one unit in the last place of that dtype, relative to the gradient's scale).
# Softmax rows add a term for the size of their adjusted logits: the kernels form z' = scale (z + offset
# - margin) and z' - max in the accumulation type, so a row at |z'| = 1e4 carries errors of ulp(1e4).
LOSS_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-5), torch.float16: (2e-5, 2e-5),
            torch.bfloat16: (2e-5, 2e-5)}
GRAD_TOL = {torch.float64: (1e-10, 1e-14), torch.float32: (2e-5, 2e-7), torch.float16: (2 ** -10, 2e-7),
            torch.bfloat16: (2 ** -7, 2e-7)}
# One step of the dtype's subnormal range: the rounding of a gradient entry that small (fp16 below 6.1e-5,
# reached by the small gradients of a reduction divided by its divisor) is absolute, not relative.
GRAD_SUBNORMAL = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2.0 ** -24, torch.bfloat16: 0.0}
# (device, compute capability, fiber order): the configurations every case runs under.
CONFIGS = {"cc9-forward": (0, "forward"), "cc9-reverse": (0, "reverse"), "cc9-random": (0, "random"),
           "cc8-forward": (1, "forward")}
IGNORE = -100
SYNC_WORDS = 4  # cb_kernels.h, kDivisorSyncWords
ACC_EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -23, torch.bfloat16: 2.0 ** -23}


class Failure(Exception):
    pass


def _vec(dtype: torch.dtype) -> int:
    return 16 // torch.empty((), dtype=dtype).element_size()


def softmax_classes(dtype: torch.dtype) -> list[int]:
    """Row lengths covering every softmax plan of the dtype, most with a ragged tail (kernels/cuda/
    cb_softmax_rows.cuh, first_plan): group<G>x1 for G = 4..32, group32xNV for NV = 2..8, block, a
    cluster of 2, 3 and 8 CTAs, split."""
    v = _vec(dtype)
    per_cta = 512 * (8 if dtype == torch.float64 else 32 // v)  # vectors a block holds in registers
    group = [1, 3 * v - 1, 4 * v, 5 * v - 2, 8 * v, 9 * v - 1, 16 * v, 17 * v - 3, 32 * v, 33 * v - 1, 64 * v,
             65 * v - 2, 128 * v, 129 * v - 1, 256 * v]
    block = [256 * v + 1, 1203, per_cta * v]
    cluster = [per_cta * v + 1, 3 * per_cta * v - 5, 8 * per_cta * v]
    split = [8 * per_cta * v + 3]
    return sorted({c for c in group + block + cluster + split if c >= 1} | {2})


def sigmoid_classes(dtype: torch.dtype) -> list[int]:
    """Row lengths covering every sigmoid / focal layout (group<4..32>, block; cb_sigmoid_rows.cuh)."""
    v = _vec(dtype)
    return [1, 2, 3 * v + 1, 16 * v, 17 * v - 1, 40 * v + 3, 64 * v, 300 * v + 1, 1024 * v, 1024 * v + 5]


def _rows_for(classes: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, 300_000 // classes))


def _offset(dtype: torch.dtype, k: int) -> int:
    return (k * torch.empty((), dtype=dtype).element_size()) % 16


def _logits(gen: torch.Generator, rows: int, classes: int, dtype: torch.dtype) -> torch.Tensor:
    z = torch.randn(rows, classes, generator=gen, dtype=torch.float64) * 3
    if rows > 3:  # a row of extreme logits (|z| = 1e4; fp16: 6e4)
        big = 6e4 if dtype == torch.float16 else 1e4
        z[1] = big * torch.where(torch.arange(classes) % 2 == 0, 1.0, -1.0)
    return z.to(dtype)


def _targets(gen: torch.Generator, rows: int, classes: int, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask of rows whose target is out of range)."""
    y = torch.randint(0, classes, (rows,), generator=gen)
    bad = torch.zeros(rows, dtype=torch.bool)
    if variant in ("options", "forward_only") and rows >= 4:  # (many_rows ignores rows of its own)
        y[torch.randperm(rows, generator=gen)[: max(1, rows // 10)]] = IGNORE
        y[rows - 1] = classes  # out of range above
        y[rows - 2] = -5       # and below (not the ignore index)
        bad[rows - 2:] = True
    return y, bad


# ---- comparisons -------------------------------------------------------------------------------------------
def _compare(name: str, got: torch.Tensor, want: torch.Tensor, rtol, atol) -> float:
    """Max of |got - want| / (atol + rtol |want|) over the finite entries (rtol, atol: numbers or tensors
    broadcasting to ``want``); NaN and inf must match."""
    got, want = got.double(), want.detach()
    rtol = torch.as_tensor(rtol, dtype=torch.float64).expand_as(want)
    atol = torch.as_tensor(atol, dtype=torch.float64).expand_as(want)
    nan_w, nan_g = torch.isnan(want), torch.isnan(got)
    if not torch.equal(nan_w, nan_g):
        i = int((nan_w != nan_g).flatten().nonzero()[0])
        raise Failure(f"{name}: flat entry {i} is {got.flatten()[i].item()} where the reference has "
                      f"{want.flatten()[i].item()}")
    inf_w = torch.isinf(want)
    if not torch.equal(got[inf_w], want[inf_w]) or torch.isinf(got[~inf_w]).any():
        raise Failure(f"{name}: infinities differ from the reference")
    fin = ~(nan_w | inf_w)
    if not fin.any():
        return 0.0
    ratio = (got[fin] - want[fin]).abs() / (atol[fin] + rtol[fin] * want[fin].abs())
    worst = float(ratio.max())
    if worst > 1.0:
        k = int(ratio.argmax())
        idx = fin.nonzero()[k].tolist()
        raise Failure(f"{name}: entry {idx} = {got[fin][k].item()!r}, reference {want[fin][k].item()!r} "
                      f"(error {worst:.3g} x the tolerance)")
    return worst


def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def expected_divisor(reduction: str, dtype: torch.dtype, classes: int, ignore_index: int, y=None, w=None, s=None,
                     t=None, floor: bool = True) -> torch.Tensor:
    """The divisor of cbbench/shapes.py (local_divisor, finish_divisor) in float64, rounded to the loss dtype
    once: class-index targets ``y`` (out-of-range ones clamped for the weight gather, as the kernels do) or a
    multi-hot target ``t``, class weight ``w``, sample weight ``s``."""
    if t is not None:
        local = shapes.local_divisor(reduction, multi_hot_target=t.double(), column_weight=w, num_rows=t.shape[0],
                                     sample_weight=s)
    else:
        row_weight = None
        if w is not None:
            row_weight = w.double()[y.clamp(0, classes - 1)]
        if s is not None:
            row_weight = s.double() if row_weight is None else row_weight * s.double()
        local = shapes.local_divisor(reduction, valid=y != ignore_index, row_weight=row_weight)
    d = shapes.finish_divisor(reduction, local) if floor else local
    return d.to(dtype)


class Fused:
    """A loss call that computes its reduction's divisor inside its own launch (cb_kernels.h, FusedDivisor):
    the kernel writes the divisor and grad_scale (both start as NaN, and so do the chunks' partials), every
    block that writes a gradient waits for them, and the sync words must be zero again after the launch."""

    CODE = {"mean": 1, "weighted_mean": 2}

    def __init__(self, reduction: str, want: torch.Tensor):
        self.reduction, self.want = reduction, want
        self.scale = 1.0 / float(want)  # what the reference's gradient is multiplied by

    def buffers(self, emu: Emulator, acc: torch.dtype, items: int):
        """``items``: the rows, or the target's entries for a multi-hot "mean" (summed whole)."""
        chunks = emu.lib.cbk_divisor_chunks(items)
        self.gs = emu.tensor(torch.full((), math.nan, dtype=acc))
        self.div = emu.tensor(torch.full((), math.nan, dtype=acc), 8)
        self.partials = emu.tensor(torch.full((chunks,), math.nan, dtype=torch.float64))
        self.sync = emu.tensor(torch.zeros(SYNC_WORDS, dtype=torch.int32), 4)
        return self.gs, self.div, self.partials, self.sync

    def after(self) -> None:
        if self.sync.any():
            raise Failure(f"the divisor's sync words are {self.sync.tolist()} after the launch (want zeros: the "
                          "last block resets them for the next launch)")
        self.got = (self.div.clone(), self.gs.clone())

    def check(self) -> int:
        dtype = self.want.dtype
        eps = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23
        div, gs = self.got
        _compare("fused divisor", div.reshape(1), self.want.reshape(1), 2 * eps, 0.0)
        _compare("fused gradient scale", gs.reshape(1), (torch.ones((), dtype=dtype) / self.want).reshape(1),
                 4 * eps, 0.0)
        return 2


# ---- cases -------------------------------------------------------------------------------------------------
class Case:
    """One kernel call: its inputs (CPU tensors), the reference's outputs, and how to run it."""

    kernel = ""

    def __init__(self, key: str, dtype: torch.dtype, classes: int):
        self.key, self.dtype, self.classes = key, dtype, classes


class SoftmaxCase(Case):
    kernel = "softmax_ce"
    # many_rows (short rows only, see all_cases): 9007 rows, so the divisor is summed in 9 chunks by as many
    # blocks and the loss kernel's blocks wait for the one that publishes the last
    variants = ("plain", "options", "smoothing", "forward_only", "masked", "focal", "focal_certain", "many_rows")

    def __init__(self, dtype: torch.dtype, classes: int, variant: str, seed: int):
        super().__init__(f"softmax_ce {dtype} C={classes} {variant}", dtype, classes)
        gen = torch.Generator().manual_seed(seed)
        rows = 9007 if variant == "many_rows" else _rows_for(classes, 2, 67)
        self.rows, self.variant = rows, variant
        self.z = _logits(gen, rows, classes, dtype)
        self.y, self.bad = _targets(gen, rows, classes, variant)
        self.weight = self.offset = self.margin = self.alpha = self.sample_weight = None
        self.scale, self.eps, self.grad_scale, self.gamma = 1.0, 0.0, None, 0.0
        self.z_off, self.g_off, self.y_off = 0, 0, 0
        self.ignore_index = IGNORE
        if variant == "masked" and classes >= 4:
            # a leading run of -inf classes: a whole split chunk (16384 f32 elements) when the row has one,
            # half the row otherwise; targets in the rest; the ignore index is a valid class
            first = 16384 * _vec(dtype) // 4 + 5 if classes > 2 * 16384 * _vec(dtype) // 4 else classes // 2
            self.offset = torch.zeros(classes)
            self.offset[:first] = -math.inf
            self.y = torch.randint(first, classes, (rows,), generator=gen)
            self.ignore_index = first
            self.grad_scale = 0.5
        elif variant == "options":
            self.weight = torch.rand(classes, generator=gen) * 2.9 + 0.1
            self.offset = torch.randn(classes, generator=gen)
            if classes >= 3:  # -inf masks some classes that are nobody's target
                masked = torch.rand(classes, generator=gen) < 0.15
                masked[self.y.clamp(0, classes - 1)] = False
                self.offset[masked] = -math.inf
            self.margin = torch.rand(classes, generator=gen) * 0.5
            self.scale, self.grad_scale = 1.7, 0.37
            self.z_off, self.g_off, self.y_off = _offset(dtype, 1), _offset(dtype, 3), 8
        elif variant == "many_rows":
            self.weight = torch.rand(classes, generator=gen) + 0.5
            self.sample_weight = torch.rand(rows, generator=gen) * 2
            self.y[torch.randperm(rows, generator=gen)[: rows // 9]] = IGNORE
        elif variant == "smoothing":
            self.weight = torch.rand(classes, generator=gen) + 0.5
            self.eps, self.grad_scale = 0.1, 2.5
            self.z_off, self.g_off = 8, _offset(dtype, 1)
        elif variant == "forward_only":
            self.weight = torch.rand(classes, generator=gen) + 0.5
            self.eps = 0.05
            self.z_off = _offset(dtype, 3)
        elif variant in ("focal", "focal_certain"):
            # the softmax focal loss with per-class alpha and sample weights; "certain": rows whose target
            # logit dominates (p_y -> 1, where gamma < 1 must stay finite)
            self.weight = torch.rand(classes, generator=gen) + 0.5
            self.alpha = torch.rand(classes, generator=gen) * 0.9 + 0.1
            self.sample_weight = torch.rand(rows, generator=gen) * 2
            self.gamma = 2.0 if variant == "focal" else 0.5
            self.grad_scale = 0.7
            self.z_off, self.g_off = _offset(dtype, 1), 8
            if variant == "focal_certain":
                z = self.z.double()
                live = (self.y >= 0) & (self.y < classes)
                boost = 40.0 if dtype in (torch.float32, torch.float64) else 12.0
                z[live.nonzero().flatten(), self.y[live]] = z[live].abs().max(1).values + boost
                self.z = z.to(dtype)
        # the reduction's divisor computed in the loss launch: weighted with ignored and out-of-range rows,
        # with sample weights, unweighted, and forward only (block 0, no wait)
        self.fused = None
        reduction = {"options": "weighted_mean", "focal": "weighted_mean", "smoothing": "mean",
                     "forward_only": "weighted_mean", "many_rows": "weighted_mean"}.get(variant)
        if reduction is not None:
            self.fused = Fused(reduction, expected_divisor(reduction, _acc(dtype), classes, self.ignore_index, self.y,
                                                           self.weight, self.sample_weight))
            self.grad_scale = self.fused.scale
        self.want_loss, self.want_grad = self._reference()

    def _reference(self):
        z = self.z.to(torch.float64, copy=True).requires_grad_(True)  # never self.z itself (f64)
        y = torch.where(self.bad, torch.full_like(self.y, self.ignore_index), self.y)
        f64 = (lambda t: None if t is None else t.double())
        options = dict(reduction="none", ignore_index=self.ignore_index, logit_offset=f64(self.offset),
                       target_margin=f64(self.margin), scale=self.scale, sample_weight=f64(self.sample_weight))
        if self.gamma > 0:
            loss = reference.softmax_focal_loss(z, y, f64(self.weight), gamma=self.gamma, alpha=f64(self.alpha),
                                                **options)
        else:
            loss = reference.softmax_cross_entropy(z, y, f64(self.weight), label_smoothing=self.eps, **options)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        grad = grad * (1.0 if self.grad_scale is None else self.grad_scale)
        loss, grad = loss.detach().clone(), grad.clone()
        loss[self.bad] = math.nan
        grad[self.bad] = math.nan
        return loss, grad

    def path(self, emu: Emulator, device: int) -> str:
        return emu.plan(self.classes, self.dtype, device)

    def run(self, emu: Emulator, device: int, stream: int | None = None):
        acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        z = emu.tensor(self.z, self.z_off)
        y = emu.tensor(self.y, self.y_off)
        w = None if self.weight is None else emu.tensor(self.weight, 4)
        off = None if self.offset is None else emu.tensor(self.offset, 12)
        margin = None if self.margin is None else emu.tensor(self.margin, 8)
        alpha = None if self.alpha is None else emu.tensor(self.alpha, 4)
        sw = None if self.sample_weight is None else emu.tensor(self.sample_weight, 12)
        gs = div = partials = sync = None
        if self.fused is not None:
            gs, div, partials, sync = self.fused.buffers(emu, acc, self.rows)
        elif self.grad_scale is not None:
            gs = emu.tensor(torch.tensor(self.grad_scale, dtype=acc))
        loss = emu.tensor(torch.full((self.rows,), -777.0, dtype=acc))
        grad = None
        if self.variant != "forward_only":
            grad = emu.tensor(torch.full((self.rows, self.classes), -777.0, dtype=self.dtype), self.g_off)
        ws_bytes = emu.workspace_bytes(self.rows, self.classes, self.dtype, device)
        ws = emu.tensor(torch.zeros(ws_bytes, dtype=torch.uint8)) if ws_bytes else None
        p = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        fused = 0 if self.fused is None else Fused.CODE[self.fused.reduction]
        rc = emu.lib.cbk_softmax_ce(device, stream, _code(self.dtype), p(z), p(y), p(w), p(off), p(margin),
                                    self.scale, self.eps, self.gamma, p(alpha), p(sw), self.ignore_index, p(gs),
                                    p(loss), p(grad), self.rows, self.classes, p(ws), fused, p(div), p(partials),
                                    p(sync))
        _after_launch(emu, rc, [z, y, w, off, margin, alpha, sw, gs, loss, grad, ws, div, partials, sync])
        if self.fused is not None:
            self.fused.after()
        return loss.clone(), None if grad is None else grad.clone()

    def _magnitude(self) -> torch.Tensor:
        """Per row: 4 ulp (of the accumulation type) of the largest adjusted logit, |z| + |offset| + margin."""
        z = self.z.double().abs()
        if self.offset is not None:
            z = z + torch.where(torch.isinf(self.offset), 0.0, self.offset.double().abs())
        if self.margin is not None:
            z = z + self.margin.double().abs().max()
        return 4 * ACC_EPS[self.dtype] * (z * self.scale).amax(dim=1)

    def check(self, loss, grad) -> tuple[float, int]:
        rtol, atol = LOSS_TOL[self.dtype]
        weight = (3.0 if self.weight is not None else 1.0) * (2.0 if self.sample_weight is not None else 1.0)
        mag = self._magnitude()
        worst = _compare("loss", loss, self.want_loss, rtol, atol + weight * mag)
        values = loss.numel()
        if grad is not None:
            rtol, atol = GRAD_TOL[self.dtype]
            coef = max(abs(self.grad_scale or 1.0) * self.scale * weight, 1e-30)
            worst = max(worst, _compare("gradient", grad, self.want_grad, rtol + mag.unsqueeze(1),
                                        atol * coef + GRAD_SUBNORMAL[self.dtype]))
            values += grad.numel()
        if self.fused is not None:
            values += self.fused.check()
        return worst, values


class SigmoidCase(Case):
    kernel = "sigmoid_focal"
    variants = ("plain", "options", "multi_hot", "forward_only")

    def __init__(self, dtype: torch.dtype, classes: int, variant: str, loss: str, seed: int):
        super().__init__(f"{loss} {dtype} C={classes} {variant}", dtype, classes)
        self.kernel = loss
        gen = torch.Generator().manual_seed(seed)
        rows = _rows_for(classes, 2, 45)
        self.rows, self.variant = rows, variant
        self.focal = loss == "focal"
        self.gamma = {"plain": 2.0, "options": 0.5, "multi_hot": 1.0, "forward_only": 0.0}[variant] if self.focal else 0.0
        self.alpha = 0.25 if (self.focal and variant in ("options", "multi_hot")) else -1.0
        self.z = _logits(gen, rows, classes, dtype)
        self.multi_hot = variant == "multi_hot"
        self.bad = torch.zeros(rows, dtype=torch.bool)
        if self.multi_hot:
            self.t = (torch.rand(rows, classes, generator=gen) < 0.2).to(dtype)
            self.y = None
        else:
            self.y, self.bad = _targets(gen, rows, classes, variant)
            self.t = None
        self.weight = None if variant == "plain" else torch.rand(classes, generator=gen) * 2 + 0.2
        self.sample_weight = torch.rand(rows, generator=gen) * 2 if variant in ("options", "multi_hot") else None
        self.grad_scale = {"options": 0.61, "multi_hot": 3.0}.get(variant)
        self.z_off = {"options": _offset(dtype, 1), "multi_hot": 8, "forward_only": _offset(dtype, 3)}.get(variant, 0)
        self.g_off = {"options": 4 % 16, "multi_hot": _offset(dtype, 1)}.get(variant, 0)
        # the divisor in the loss launch: class targets weighted (with sample weights), multi-hot weighted
        # (mean column weight; sigmoid) and unweighted (the target summed whole; focal), and unweighted
        # forward only
        self.fused = None
        reduction = {"options": "weighted_mean", "multi_hot": "mean" if self.focal else "weighted_mean",
                     "forward_only": "mean"}.get(variant)
        if reduction is not None:
            self.fused = Fused(reduction, expected_divisor(reduction, _acc(dtype), classes, IGNORE, self.y,
                                                           self.weight, self.sample_weight, self.t))
            self.grad_scale = self.fused.scale
        self.want_loss, self.want_grad = self._reference()

    def _reference(self):
        z = self.z.to(torch.float64, copy=True).requires_grad_(True)  # never self.z itself (f64)
        w = None if self.weight is None else self.weight.double()
        target = self.t.double() if self.multi_hot else torch.where(self.bad, torch.full_like(self.y, IGNORE), self.y)
        sw = None if self.sample_weight is None else self.sample_weight.double()
        if self.focal:
            loss = reference.sigmoid_focal_loss(z, target, w, gamma=self.gamma,
                                                alpha=None if self.alpha < 0 else self.alpha, reduction="none",
                                                ignore_index=IGNORE, sample_weight=sw)
        else:
            loss = reference.sigmoid_cross_entropy(z, target, w, reduction="none", ignore_index=IGNORE,
                                                   sample_weight=sw)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        grad = grad * (1.0 if self.grad_scale is None else self.grad_scale)
        loss, grad = loss.detach().clone(), grad.clone()
        loss[self.bad] = math.nan
        grad[self.bad] = math.nan
        return loss, grad

    def path(self, emu: Emulator, device: int) -> str:
        return emu.sigmoid_plan(self.classes, self.dtype)

    def run(self, emu: Emulator, device: int, stream: int | None = None):
        acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        z = emu.tensor(self.z, self.z_off)
        y = None if self.y is None else emu.tensor(self.y, 8)
        t = None if self.t is None else emu.tensor(self.t, _offset(self.dtype, 1))
        w = None if self.weight is None else emu.tensor(self.weight, 4)
        sw = None if self.sample_weight is None else emu.tensor(self.sample_weight, 8)
        gs = div = partials = sync = None
        if self.fused is not None:
            positives = self.multi_hot and self.fused.reduction == "mean"
            gs, div, partials, sync = self.fused.buffers(emu, acc, self.rows * (self.classes if positives else 1))
        elif self.grad_scale is not None:
            gs = emu.tensor(torch.tensor(self.grad_scale, dtype=acc))
        loss = emu.tensor(torch.full((self.rows,), -777.0, dtype=acc))
        grad = None
        if self.variant != "forward_only":
            grad = emu.tensor(torch.full((self.rows, self.classes), -777.0, dtype=self.dtype), self.g_off)
        p = lambda x: None if x is None else x.data_ptr()  # noqa: E731
        fused = 0 if self.fused is None else Fused.CODE[self.fused.reduction]
        rc = emu.lib.cbk_sigmoid_focal(device, stream, _code(self.dtype), p(z), p(y), p(t), p(w), self.gamma,
                                       self.alpha, p(sw), IGNORE, int(self.focal), p(gs), p(loss), p(grad), self.rows,
                                       self.classes, fused, p(div), p(partials), p(sync))
        _after_launch(emu, rc, [z, y, t, w, sw, gs, loss, grad, div, partials, sync])
        if self.fused is not None:
            self.fused.after()
        return loss.clone(), None if grad is None else grad.clone()

    def check(self, loss, grad) -> tuple[float, int]:
        # the per-row loss sums C terms in fp32: its rounding error grows with C
        rtol, atol = LOSS_TOL[self.dtype]
        worst = _compare("loss", loss, self.want_loss, rtol * max(1.0, self.classes / 2000), atol)
        values = loss.numel()
        if grad is not None:
            rtol, atol = GRAD_TOL[self.dtype]
            coef = (abs(self.grad_scale or 1.0) * (2.2 if self.weight is not None else 1.0)
                    * (2.0 if self.sample_weight is not None else 1.0))
            worst = max(worst, _compare("gradient", grad, self.want_grad, rtol,
                                        atol * coef + GRAD_SUBNORMAL[self.dtype]))
            values += grad.numel()
        if self.fused is not None:
            values += self.fused.check()
        return worst, values


class ScaleCase(Case):
    kernel = "scale_in_place"
    variants = ("1", "0.5", "-3.25")

    def __init__(self, dtype: torch.dtype, numel: int, variant: str, seed: int):
        super().__init__(f"scale {dtype} n={numel} x{variant}", dtype, numel)
        gen = torch.Generator().manual_seed(seed)
        self.s = float(variant)
        self.g = (torch.randn(numel, generator=gen, dtype=torch.float64) * 5).to(dtype)
        self.off = _offset(dtype, seed % 3)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        self.want = (self.g.to(acc) * self.s).to(dtype)  # the kernel's rounding: to acc, times s, back

    def path(self, emu: Emulator, device: int) -> str:
        return "grid-stride"

    def run(self, emu: Emulator, device: int, stream: int | None = None):
        acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        g = emu.tensor(self.g, self.off)
        s = emu.tensor(torch.tensor(self.s, dtype=acc))
        rc = emu.lib.cbk_scale_in_place(device, stream, _code(self.dtype), g.data_ptr(), g.numel(), s.data_ptr(),
                                        int(acc == torch.float64))
        _after_launch(emu, rc, [g, s])
        return g.clone(), None

    def check(self, out, _grad) -> tuple[float, int]:
        if not torch.equal(out.view(torch.uint8), self.want.view(torch.uint8)):
            i = int((out != self.want).nonzero()[0][0])
            raise Failure(f"entry {i}: {out[i].item()!r}, expected exactly {self.want[i].item()!r}")
        return 0.0, out.numel()


class DivisorCase(Case):
    """The reduction's divisor and its reciprocal in one launch (divisor.cu), against the formula of
    cbbench/shapes.py (local_divisor, finish_divisor) in float64, rounded to the loss dtype once."""
    kernel = "loss_divisor"
    variants = ("mean", "weighted", "weighted+sample", "sample", "zero-weights", "negative", "unfloored",
                "multi-hot weighted", "multi-hot weighted+sample", "multi-hot mean")

    def __init__(self, dtype: torch.dtype, rows: int, variant: str, seed: int):
        super().__init__(f"divisor {dtype} rows={rows} {variant}", dtype, 0)
        gen = torch.Generator().manual_seed(seed)
        self.rows, self.variant, self.c = rows, variant, 37
        self.multi_hot = variant.startswith("multi-hot")
        self.weighted = variant != "mean" and variant != "multi-hot mean"
        self.floor = variant != "unfloored"
        y = torch.randint(0, self.c, (rows,), generator=gen)
        if rows >= 3:
            y[::3] = IGNORE                # ignored rows
        if rows >= 5:
            y[1], y[4] = self.c + 2, -7    # out of range: clamped for the gather (their rows are NaN)
        self.y = y
        w = torch.rand(self.c, generator=gen) + 0.1
        s = torch.rand(rows, generator=gen) + 0.5
        if variant == "zero-weights":
            w.zero_()
        if variant == "negative":
            w -= 0.9
        self.w = None if variant in ("mean", "sample", "multi-hot mean") else w.float()
        self.s = s.float() if ("sample" in variant) else None
        self.t = (torch.rand(rows, self.c, generator=gen) < 0.2).double() if self.multi_hot else None
        reduction = "weighted_mean" if self.weighted else "mean"
        self.want = expected_divisor(reduction, dtype, self.c, IGNORE, y, self.w, self.s, self.t, self.floor)
        self.want_scale = torch.ones((), dtype=dtype) / self.want

    def path(self, emu: Emulator, device: int) -> str:
        return "one block"

    def run(self, emu: Emulator, device: int, stream: int | None = None):
        # no rows: null pointers, as torch hands over for empty tensors (the kernel reads none)
        positives = None
        if self.variant == "multi-hot mean" and self.rows > 0:  # the target summed whole
            positives = emu.tensor(self.t, 8)
        y = None if self.multi_hot or self.rows == 0 else emu.tensor(self.y, 8 * (self.rows % 2))
        w = None if self.w is None else emu.tensor(self.w, 4)
        s = None if self.s is None or self.rows == 0 else emu.tensor(self.s, 12)
        out = emu.tensor(torch.full((2,), float("nan"), dtype=self.dtype))
        chunks = emu.lib.cbk_divisor_chunks(self.rows * (self.c if positives is not None else 1))
        partials = emu.tensor(torch.full((chunks,), float("nan"), dtype=torch.float64))
        sync = emu.tensor(torch.zeros(SYNC_WORDS, dtype=torch.int32))
        size = out.element_size()
        rc = emu.lib.cbk_loss_divisor(device, stream, _ptr(y), _ptr(w), _ptr(s), _ptr(positives),
                                      _code(torch.float64), IGNORE, self.rows, self.c, int(self.multi_hot),
                                      int(self.weighted), int(self.floor), out.data_ptr(), out.data_ptr() + size,
                                      int(self.dtype == torch.float64), partials.data_ptr(), sync.data_ptr())
        _after_launch(emu, rc, [y, w, s, positives, out, partials, sync])
        if sync.any():
            raise Failure(f"the divisor's sync words are {sync.tolist()} after the launch (want zeros)")
        return out.clone(), None

    def check(self, out, _grad) -> tuple[float, int]:
        eps = 2.0 ** -52 if self.dtype == torch.float64 else 2.0 ** -23
        worst = _compare("divisor", out[:1], self.want.reshape(1), 2 * eps, 0.0)
        worst = max(worst, _compare("gradient scale", out[1:], self.want_scale.reshape(1), 4 * eps, 0.0))
        return worst, 2


def _ptr(t):
    return None if t is None else t.data_ptr()


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The loss dtype of logits of ``dtype`` (the kernels' accumulation type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _code(dtype):
    from emulator import DTYPE_CODE
    return DTYPE_CODE[dtype]


def _after_launch(emu: Emulator, rc: int, buffers) -> None:
    message = emu.last_failure()
    for b in buffers:
        if b is not None and not emu.intact(b):
            raise Failure("a kernel wrote outside its buffer (canary overwritten)")
    if rc != 0 or message:
        raise Failure(f"launcher returned CUDA error {rc}: {message or 'no emulator message'}")


def all_cases(only: str | None) -> list[Case]:
    cases: list[Case] = []
    seed = 0
    for name, dtype in DTYPES.items():
        for c in softmax_classes(dtype):
            # the long rows run the two variants that differ most (every option; forward only)
            variants = SoftmaxCase.variants[:-1] if c <= 20000 else ("options", "forward_only", "masked", "focal")
            if c <= 16:
                variants += ("many_rows",)
            for variant in variants:
                seed += 1
                cases.append((SoftmaxCase, (dtype, c, variant, seed)))
        for c in sigmoid_classes(dtype):
            for loss in ("sigmoid", "focal"):
                for variant in SigmoidCase.variants:
                    seed += 1
                    cases.append((SigmoidCase, (dtype, c, variant, loss, seed)))
        for n in (1, 7, 4099, 100003):
            for variant in ScaleCase.variants:
                seed += 1
                cases.append((ScaleCase, (dtype, n, variant, seed)))
        if dtype in (torch.float32, torch.float64):  # the loss dtypes
            for n in (0, 1, 7, 300, 4099, 100003):  # 100003: 98 chunks, all summed by the one block
                for variant in DivisorCase.variants:
                    seed += 1
                    cases.append((DivisorCase, (dtype, n, variant, seed)))
    pattern = re.compile(only) if only else None
    built = []
    for cls, args in cases:
        label = f"{cls.kernel} {args}"
        if pattern and cls is SigmoidCase:
            label = f"{args[3]} {args}"
        if pattern and not pattern.search(label):
            continue
        built.append(cls(*args))
    return built


# ---- the planner's device queries ----------------------------------------------------------------------------
def check_planner(emu: Emulator, out, workers: int = 0) -> list[str]:
    """Capture-safe queries, the fallback when a cluster cannot be resident, launches per call; and the
    divisor summed inside the launch when only one block runs at a time (one OS thread: the blocks that
    started first must not wait for blocks that cannot start)."""
    errors = []
    emu.lib.cbemu_set_workers(1)
    emu.reset()
    lone = SoftmaxCase(torch.float32, 11, "many_rows", seed=990)
    try:
        lone.check(*lone.run(emu, 0))
        out(f"divisor   one block resident at a time: {lone.rows} rows, {emu.lib.cbk_divisor_chunks(lone.rows)} "
            "chunks, no deadlock, results checked: ok")
    except Failure as e:
        errors.append(f"divisor with one resident block: {e}")
    finally:
        emu.lib.cbemu_set_workers(workers)
        emu.free_all()
    f32 = torch.float32
    capturing = 0x5EED
    emu.set_device(2, 9, 0)
    emu.set_capturing(capturing)
    emu.reset()
    case = SoftmaxCase(f32, 20000, "options", seed=991)
    try:
        plan = emu.plan(20000, f32, 2, capturing)
        loss, grad = case.run(emu, 2, capturing)
        case.check(loss, grad)
        launches = emu.launches()
        if plan != "split2" or launches != 2 or emu.capture_violations() != 0:
            errors.append(f"while capturing: plan {plan}, {launches} launches, {emu.capture_violations()} device "
                          "queries (want split2, 2 launches, no query)")
        emu.set_capturing(None)
        uncaptured = emu.plan(20000, f32, 2, None)
        emu.set_capturing(capturing)
        cached = emu.plan(20000, f32, 2, capturing)
        if uncaptured != "cluster2x320" or cached != "cluster2x320" or emu.capture_violations() != 0:
            errors.append(f"after an uncaptured call: plan {uncaptured}, while capturing {cached} (want cluster2x320 "
                          f"from the cache) with {emu.capture_violations()} queries")
        out(f"planner   capture: split2 with no device query while capturing, {cached} from the cache after: "
            f"{'ok' if not errors else 'FAILED'}")
    except Failure as e:
        errors.append(f"capture case: {e}")
    finally:
        emu.set_capturing(None)
    emu.set_device(3, 9, 0, max_cluster=2)
    fits = SoftmaxCase(f32, 40000, "options", seed=992)
    try:
        plan = emu.plan(40000, f32, 3)
        fits.check(*fits.run(emu, 3))
        ok = plan == "split3"
        out(f"planner   a cluster of 3 that cannot be resident (device allows 2): {plan}, "
            f"results checked: {'ok' if ok else 'FAILED'}")
        if not ok:
            errors.append(f"cluster that does not fit: plan {plan}, want split3")
    except Failure as e:
        errors.append(f"cluster fallback: {e}")
    return errors


# ---- driver --------------------------------------------------------------------------------------------------
def run(emu: Emulator, cases: list[Case], configs: list[str], out=print) -> int:
    failures: list[str] = []
    groups: dict[tuple, dict] = defaultdict(lambda: {"cases": 0, "values": 0, "worst": 0.0, "launches": set(),
                                                     "failed": 0})
    digests: dict[tuple[str, str], tuple[str, str]] = {}
    for config in configs:
        device, order = CONFIGS[config]
        emu.set_order(order, seed=12345)
        for case in cases:
            path = case.path(emu, device)
            g = groups[(case.kernel, str(case.dtype).replace("torch.", ""), path, config)]
            g["cases"] += 1
            emu.reset()
            emu.lib.cbemu_set_context(f"{config} {case.key} [{path}]".encode())
            try:
                loss, grad = case.run(emu, device)
                g["launches"].add(emu.launches())
                want_launches = 2 if path.startswith("split") else 1
                if getattr(case, "fused", None) is not None and emu.launches() != want_launches:
                    raise Failure(f"{emu.launches()} launches for a call with its divisor, want {want_launches}: "
                                  "the loss kernel and nothing else")
                worst, values = case.check(loss, grad)
                g["worst"] = max(g["worst"], worst)
                g["values"] += values
                d = _digest(loss, grad)
                key = (case.key, path)
                if key in digests and digests[key][0] != d:
                    raise Failure(f"outputs differ bitwise from the run under {digests[key][1]}: the result depends "
                                  "on the order threads run in")
                digests.setdefault(key, (d, config))
            except Failure as e:
                g["failed"] += 1
                failures.append(f"{config} {case.key} [{path}]: {e}")
            finally:
                emu.free_all()
    for (kernel, dtype, path, config), g in sorted(groups.items()):
        launches = "/".join(str(n) for n in sorted(g["launches"])) or "-"
        status = "ok" if not g["failed"] else f"FAILED ({g['failed']} of {g['cases']})"
        out(f"{kernel:<14} {dtype:<9} {path:<14} {config:<12} cases {g['cases']:>3}  values {g['values']:>9,}  "
            f"max err/tol {g['worst']:.2f}  launches/call {launches}  {status}")
    total = sum(g["values"] for g in groups.values())
    for f in failures[:40]:
        out("  " + f)
    if len(failures) > 40:
        out(f"  ... and {len(failures) - 40} more")
    return total if not failures else -len(failures)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, help="an emulator library already built (default: build it)")
    ap.add_argument("--kernels", type=Path, default=build_emulator.KERNELS, help="kernel sources to build")
    ap.add_argument("--out", type=Path, default=build_emulator.DEFAULT_OUT, help="build folder")
    ap.add_argument("--only", help="regular expression over the case labels (e.g. 'softmax_ce.*float32')")
    ap.add_argument("--configs", default="cc9-forward,cc9-reverse,cc9-random,cc8-forward",
                    help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--workers", type=int, default=0, help="OS threads running blocks (0: up to 4)")
    args = ap.parse_args(argv)
    # The reference and the comparisons are small tensor ops between launches: torch's own worker threads
    # would only spin against the emulator's OS threads (measured: 100x slower comparisons).
    torch.set_num_threads(1)
    start = time.perf_counter()
    lib = args.lib or build_emulator.build(args.kernels, args.out, selftest=False)
    emu = Emulator(lib)
    emu.lib.cbemu_install_fault_handler()
    emu.lib.cbemu_set_workers(args.workers)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}")
    cases = all_cases(args.only)
    if not cases:
        print(f"cuda-emu-check: no case matches --only {args.only!r}")
        return 2
    built = time.perf_counter()
    total = run(emu, cases, configs)
    planner_errors = [] if args.only else check_planner(emu, print, args.workers)
    for e in planner_errors:
        print("  " + e)
    elapsed = time.perf_counter() - start
    if total < 0 or planner_errors:
        print(f"cuda-emu-check: FAILED ({-min(total, 0) + len(planner_errors)} failures, {elapsed:.0f} s)")
        return 1
    print(f"cuda-emu-check: OK ({len(cases)} cases x {len(configs)} configurations, {total:,} values checked "
          f"against cbbench/reference.py, build {built - start:.0f} s, run {elapsed - (built - start):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

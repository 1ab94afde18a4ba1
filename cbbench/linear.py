"""A classifier head fused with a cbbench loss: ``loss(hidden @ W.T + b, target)`` without the (M, C) logits.

For large class counts the logits and their gradient dominate memory (M = 8192, C = 32000 in float32:
1 GB each). Here the rows are processed in chunks; for each chunk

1. ``z = b + h_chunk @ W.T`` on the device's BLAS (only this chunk of logits exists),
2. the loss's fused op (``torch.ops.cbbench.*_fused``: the same device kernels as the losses; contract
   in ``cbbench/ops/__init__.py``) turns blocks of the chunk's rows into their summed loss and
   ``g = d loss / d z`` (reduction ``"sum"`` -- or ``"none"`` per row); each block's gradient is
   copied over its logits, so a chunk holds one (rows, C) buffer and one block (on the CPU a block
   stays in a core's L2 cache, and the copy costs ~1 % of the time),
3. ``g`` is multiplied straight back: ``dh[chunk] = g @ W``, ``dW += g.T @ h_chunk``, ``db += sum(g)``,
   into buffers allocated once,

and the next chunk reuses the buffer. The reduction's divisor is the
global one, computed from the targets before the first chunk by the kernel module of the device
(``torch.ops.cbbench.loss_divisor``), and the summed loss and the gradients are divided by it once at the
end with a 0-dim tensor: nothing is read back to the host, so CUDA calls never synchronise. The order of every
sum is fixed (chunks in order, the kernels' fixed-order sums): same inputs, same thread count, same
bits.

Autograd (:class:`LinearLossFunction`: a function of hidden, weight and bias, which the ops' autograd --
a function of the logits -- cannot express; docs/design.md, "Autograd"), in the ops' manner:

* reduced losses compute the three gradients in the forward pass; the first backward hands them over,
  scaled in place by ``grad_output`` (nothing to do when it is 1);
* ``reduction="none"`` needs ``grad_output`` per row: the backward runs the chunks again, scaling each
  chunk's gradient rows by it;
* a further backward (``retain_graph=True``) runs the chunks again; ``create_graph=True``
  differentiates the reference (``linear`` + the loss of :mod:`cbbench.reference`), so higher orders
  work (the logits are materialised there).

:mod:`cbbench.functional` (``linear_*``) checks the arguments and sends what the chunks cannot do
(:func:`unfused_only`: ``torch.func``, forward-mode AD, ``torch.compile``, ``torch.jit.trace``, learnable
class vectors or soft targets; the reference backend) to the plain ``linear`` + loss path.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.autograd.forward_ad as forward_ad

from . import reference

Tensor = torch.Tensor

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "DEFAULT_MIN_CHUNK_BYTES", "KERNEL_BLOCK_BYTES", "chunking", "HeadLoss",
           "LinearPlan", "make_plan", "unfused_only", "autocast_inputs", "run_chunks", "linear_loss", "reference_loss",
           "LinearLossFunction"]

# The default memory budget of one chunk: 1/12 of what the materialised logits would take, within
# [16 MiB, 96 MiB]. Every chunk reads the classifier weight twice and reads and writes its gradient once,
# so the fewer the chunks the less of that traffic; on the CPU it is what the chunked head pays against
# one large matmul (at 8192x1024x32000 fp32 on a 2-core Xeon: 1000-row chunks beat linear + loss, 500-row
# ones did not, cbbench/bench/linear.py). The floor keeps small batches in large chunks; the ceiling and
# the fraction keep the bound of 1/8 of the logits (8192x1024x32000 fp32: 674 rows, 8 per kernel
# call; 8192x1024x8142: 650 rows, 32 per call).
DEFAULT_MIN_CHUNK_BYTES = 16 << 20
DEFAULT_MAX_CHUNK_BYTES = 96 << 20
_DEFAULT_FRACTION = 12
# The kernel runs on blocks of a chunk's rows, and each block's gradient is copied back over its logits:
# a chunk then holds one (rows, C) buffer, not two. On the CPU a block's logits and gradient stay in a
# core's L2 cache (1 MiB each); on the GPU a block is large enough to fill the device. A block takes at
# most a quarter of the budget.
KERNEL_BLOCK_BYTES = {"cpu": 1 << 20, "cuda": 16 << 20}
_HALF = (torch.float16, torch.bfloat16)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def chunking(num_rows: int, num_classes: int, dtype: torch.dtype, device_type: str, *,
             chunk_size: Optional[int] = None, memory_budget: Optional[int] = None) -> Tuple[int, int]:
    """``(rows per chunk, rows per kernel call)``. The chunk: ``chunk_size`` when given, else as many
    rows as fit ``memory_budget`` bytes (default: 1/12 of the logits, at least
    :data:`DEFAULT_MIN_CHUNK_BYTES`, at most :data:`DEFAULT_MAX_CHUNK_BYTES`) beside one kernel block;
    at least 1, at most ``num_rows``. The block: :data:`KERNEL_BLOCK_BYTES` of the kernel's gradient
    (and, for half precision on the CPU, of the float32 rows the kernel computes on), at most a quarter
    of the budget and at most the chunk."""
    per_row = num_classes * _element_size(dtype)
    kernel_row = per_row + (num_classes * 8 if dtype in _HALF and device_type == "cpu" else 0)
    block_bytes = KERNEL_BLOCK_BYTES.get(device_type, KERNEL_BLOCK_BYTES["cuda"])
    if chunk_size is None:
        if memory_budget is None:
            memory_budget = min(max(num_rows * per_row // _DEFAULT_FRACTION, DEFAULT_MIN_CHUNK_BYTES),
                                DEFAULT_MAX_CHUNK_BYTES)
        block_bytes = min(block_bytes, memory_budget // 4)
        block = max(1, block_bytes // kernel_row)
        chunk_size = max(memory_budget - block * kernel_row, 0) // per_row
    rows = max(1, min(int(chunk_size), num_rows))
    return rows, max(1, min(block_bytes // kernel_row, rows))


class HeadLoss(NamedTuple):
    """The loss of a head (checked arguments): ``kind`` ``"softmax"`` or ``"sigmoid"``, the whole flat
    ``target`` ((M,) class indices, or (M, C) multi-hot), the class ``weight``, the flat ``sample_weight``
    ((M,) or ``None``), the caller's ``reduction``, ``ignore_index`` and the loss's options (softmax:
    logit_offset, target_margin, scale, label_smoothing, gamma -- ``None`` for cross-entropy -- and the
    per-class alpha; sigmoid: gamma -- ``None`` for sigmoid cross-entropy -- and alpha)."""
    kind: str
    target: Tensor
    weight: Optional[Tensor]
    sample_weight: Optional[Tensor]
    reduction: str
    ignore_index: int
    options: tuple

    @classmethod
    def softmax(cls, target, weight, sample_weight, reduction, ignore_index, *, logit_offset, target_margin, scale,
                label_smoothing, gamma=None, alpha=None) -> "HeadLoss":
        return cls("softmax", target, weight, sample_weight, reduction, ignore_index,
                   (logit_offset, target_margin, scale, label_smoothing, gamma, alpha))

    @classmethod
    def sigmoid(cls, target, weight, sample_weight, reduction, ignore_index, *, gamma, alpha) -> "HeadLoss":
        return cls("sigmoid", target, weight, sample_weight, reduction, ignore_index, (gamma, alpha))

    def fused(self, logits: Tensor, start: int, stop: int, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
        """The fused op on the logits of rows [start, stop): ``(loss, d loss / d logits)``."""
        target = self.target[start:stop]
        s = None if self.sample_weight is None else self.sample_weight[start:stop]
        if self.kind == "softmax":
            offset, margin, scale, eps, gamma, alpha = self.options
            return torch.ops.cbbench.softmax_cross_entropy_fused(logits, target, self.weight, offset, margin, scale,
                                                                 eps, gamma or 0.0, alpha, s, self.ignore_index,
                                                                 reduction, need_grad)
        gamma, alpha = self.options
        return torch.ops.cbbench.sigmoid_focal_fused(logits, target, self.weight, gamma or 0.0,
                                                     -1.0 if alpha is None else alpha, s, self.ignore_index,
                                                     gamma is not None, reduction, need_grad)

    def reference(self, logits: Tensor) -> Tensor:
        """The loss of ``logits`` by :mod:`cbbench.reference` (differentiable to any order)."""
        common = dict(reduction=self.reduction, ignore_index=self.ignore_index, sample_weight=self.sample_weight)
        if self.kind == "softmax":
            offset, margin, scale, eps, gamma, alpha = self.options
            adjust = dict(logit_offset=offset, target_margin=margin, scale=scale)
            if gamma is not None:
                return reference.softmax_focal_loss(logits, self.target, self.weight, gamma=gamma, alpha=alpha,
                                                    **adjust, **common)
            return reference.softmax_cross_entropy(logits, self.target, self.weight, label_smoothing=eps, **adjust,
                                                   **common)
        gamma, alpha = self.options
        return reference.sigmoid_focal_loss(logits, self.target, self.weight, gamma=gamma or 0.0, alpha=alpha,
                                            **common)


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform is running. torch has no public query (docs/design.md, "Private
    APIs"; tests/test_linear_losses.py checks this one still answers); a Python ``autograd.Function``
    without ``setup_context`` -- the chunked head's -- cannot run under a transform."""
    return torch._C._are_functorch_transforms_active()


def unfused_only(tensors, others) -> bool:
    """Whether a head must run as ``linear`` + the loss (the logits materialised) rather than in chunks:
    under ``torch.compile``, ``torch.jit.trace`` or a ``torch.func`` transform, with a dual input
    (forward-mode AD: the chunked head has no jvp), or when one of ``others`` (class vectors, a soft
    target) needs a gradient -- the chunks give those of hidden, weight and bias only."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _functorch_active():
        return True
    present = [t for t in (*tensors, *others) if t is not None]
    if any(t.requires_grad for t in others if t is not None):
        return True
    return any(forward_ad.unpack_dual(t).tangent is not None for t in present)


class LinearPlan(NamedTuple):
    """One fused head call: its ``loss``, the finished divisor (0-dim float64 on the device, ``None`` for
    ``"sum"`` / ``"none"``), the rows per chunk and per kernel call."""
    loss: HeadLoss
    divisor: Optional[Tensor]
    rows: int
    block_rows: int

    @property
    def reduction(self) -> str:
        return self.loss.reduction


def make_plan(loss: HeadLoss, hidden: Tensor, linear_weight: Tensor, *, chunk_size: Optional[int] = None,
              memory_budget: Optional[int] = None) -> LinearPlan:
    """The plan of ``loss`` for (M, H) ``hidden`` and (C, H) ``linear_weight``: the global divisor from
    the targets first (by the kernel module of the device), then the chunking."""
    num_rows, num_classes = hidden.shape[0], linear_weight.shape[0]
    divisor = None
    if loss.reduction in ("mean", "weighted_mean"):
        divisor = torch.ops.cbbench.loss_divisor(loss.target, loss.weight, loss.sample_weight, num_classes,
                                                 loss.ignore_index, loss.reduction, True)
    rows, block = chunking(num_rows, num_classes, hidden.dtype, hidden.device.type, chunk_size=chunk_size,
                           memory_budget=memory_budget)
    return LinearPlan(loss, divisor, rows, block)


def autocast_inputs(hidden: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor]):
    """Under ``torch.autocast`` on the inputs' device, the inputs cast (differentiably, so their
    gradients come back in their own dtypes) to autocast's dtype, which ``F.linear`` would compute in;
    the chunks then run with autocast off. Otherwise the inputs as they are."""
    if not torch.is_autocast_enabled(hidden.device.type):
        return hidden, linear_weight, linear_bias
    dtype = torch.get_autocast_dtype(hidden.device.type)
    return hidden.to(dtype), linear_weight.to(dtype), None if linear_bias is None else linear_bias.to(dtype)


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


Grads = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def _add_loss(total: Tensor, loss: Tensor, none: bool, start: int, stop: int) -> None:
    """The kernel's loss of rows [start, stop) into the running total (or the rows of ``"none"``)."""
    if none:
        total[start:stop] = loss
    else:
        total += loss


def run_chunks(plan: LinearPlan, hidden: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor],
               want: Tuple[bool, bool, bool] = (False, False, False),
               row_scale: Optional[Tensor] = None) -> Tuple[Tensor, Grads]:
    """The loss and the gradients in ``want`` (hidden, weight, bias) of the plan, chunk by chunk; with
    ``row_scale`` ((M,), reduction ``"none"``) each row's gradient is scaled by it (the backward of
    ``"none"``). Gradients of a reduced loss are divided by the divisor; ``None`` where not wanted.
    Runs in the inputs' dtype, autocast off (see :func:`autocast_inputs`)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return _run_chunks(plan, hidden, linear_weight, linear_bias, want, row_scale)


def _run_chunks(plan: LinearPlan, hidden: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor],
                want: Tuple[bool, bool, bool], row_scale: Optional[Tensor]) -> Tuple[Tensor, Grads]:
    num_rows, num_classes = hidden.shape[0], linear_weight.shape[0]
    device, dtype = hidden.device, hidden.dtype
    need_grad = any(want)
    half = dtype in _HALF
    acc_dtype = torch.float32 if half else dtype  # the weight and bias gradients sum over all chunks
    dh = torch.empty_like(hidden) if want[0] else None
    # the weight gradient is written by the first chunk's matmul, not zeroed first (a zero fill is one more
    # pass over (C, H): 65 ms of 4.1 s at 2048x1024x32000 on one CPU thread); zeroed only if no chunk runs
    dw = torch.empty(linear_weight.shape, dtype=acc_dtype, device=device) if want[1] else None
    dw_written = False
    db = torch.zeros(num_classes, dtype=acc_dtype, device=device) if want[2] else None
    none = plan.reduction == "none"
    loss_dtype = _loss_dtype(dtype)
    total = (torch.empty(num_rows, dtype=loss_dtype, device=device) if none
             else torch.zeros((), dtype=torch.float64, device=device))
    weight_t = linear_weight.t()
    chunk_reduction = "none" if none else "sum"
    # one chunk buffer for all chunks: a fresh one per chunk would be a fresh mapping on the CPU (glibc
    # maps large blocks), its pages faulted and zeroed again every chunk (0.6 s of 15 at 8192x1024x32000)
    buffer = torch.empty((min(plan.rows, num_rows), num_classes), dtype=dtype, device=device)
    for start in range(0, num_rows, plan.rows):
        stop = min(start + plan.rows, num_rows)
        h = hidden[start:stop]
        z = buffer[:stop - start]
        if linear_bias is None:
            torch.mm(h, weight_t, out=z)
        else:
            torch.addmm(linear_bias, h, weight_t, out=z)
        if not need_grad:
            loss, _ = plan.loss.fused(z, start, stop, chunk_reduction, False)
            _add_loss(total, loss, none, start, stop)
            continue
        # the kernel on blocks of rows; each block's gradient is scaled (rows of "none"), summed into the
        # bias gradient and copied over its logits while it is in cache
        for first in range(0, stop - start, plan.block_rows):
            last = min(first + plan.block_rows, stop - start)
            loss, block = plan.loss.fused(z[first:last], start + first, start + last, chunk_reduction, True)
            _add_loss(total, loss, none, start + first, start + last)
            if row_scale is not None:
                block.mul_(row_scale[start + first:start + last].unsqueeze(1).to(block.dtype))
            if db is not None:
                db += block.sum(0, dtype=acc_dtype)
            z[first:last].copy_(block)
            del block
        g = z  # now the chunk's gradient
        if dh is not None:
            torch.mm(g, linear_weight, out=dh[start:stop])
        if dw is not None:
            if half:  # accumulate in float32: one rounding at the end, not one per chunk
                part = torch.mm(g.t(), h)
                if dw_written:
                    dw.add_(part)
                else:
                    dw.copy_(part)
                del part
            elif dw_written:
                dw.addmm_(g.t(), h)
            else:
                torch.mm(g.t(), h, out=dw)
            dw_written = True
    if dw is not None and not dw_written:  # no rows: no chunk ran
        dw.zero_()
    divisor = plan.divisor
    if none:
        loss = total
    elif divisor is None:
        loss = total.to(loss_dtype)
    else:
        loss = (total / divisor).to(loss_dtype)
    if divisor is not None and need_grad:
        inverse = divisor.reciprocal()
        for grad in (dh, dw, db):
            if grad is not None:
                grad.mul_(inverse)
    if half:
        dw = None if dw is None else dw.to(dtype)
        db = None if db is None else db.to(dtype)
    return loss, (dh, dw, db)


def reference_loss(plan: LinearPlan, hidden: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor]) -> Tensor:
    """The same loss by ``linear`` and the reference (:mod:`cbbench.reference`): differentiable to any
    order; materialises the logits."""
    logits = torch.nn.functional.linear(hidden, linear_weight, linear_bias)
    return plan.loss.reference(logits)


def _scaled(grad: Optional[Tensor], grad_loss: Tensor) -> Optional[Tensor]:
    """``grad * grad_output`` of a reduced loss, in place (``torch.ops.cbbench.scale_grad_``: nothing to do
    when it is 1, read on the device on the GPU)."""
    if grad is None:
        return None
    try:
        torch.ops.cbbench.scale_grad_(grad, grad_loss)
    except RuntimeError:  # a batch of grad_outputs (jacobian(vectorize=True)): one product each
        return (grad * grad_loss).to(grad.dtype)
    return grad


class LinearLossFunction(torch.autograd.Function):
    """``apply(hidden, linear_weight, linear_bias, plan)``: the plan's loss, differentiable with respect
    to the first three (see the module docstring for each kind of backward)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor], plan: LinearPlan):
        want = tuple(ctx.needs_input_grad[:3])
        ahead = plan.reduction != "none"  # a reduced loss: its gradients now, handed over by the backward
        loss, grads = run_chunks(plan, hidden, linear_weight, linear_bias, want if ahead else (False,) * 3)
        ctx.plan, ctx.want, ctx.grads = plan, want, grads if ahead else None
        ctx.save_for_backward(hidden, linear_weight, linear_bias)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        plan, want = ctx.plan, ctx.want
        grads, ctx.grads = ctx.grads, None
        hidden, linear_weight, linear_bias = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference
            inputs = [t for t, w in zip((hidden, linear_weight, linear_bias), want) if w]
            with torch.enable_grad():
                value = reference_loss(plan, hidden, linear_weight, linear_bias)
            found = iter(torch.autograd.grad(value, inputs, grad_loss, create_graph=True))
            return tuple(next(found) if w else None for w in want) + (None,)
        if plan.reduction == "none":
            _, grads = run_chunks(plan, hidden, linear_weight, linear_bias, want, row_scale=grad_loss.reshape(-1))
            return grads + (None,)
        if grads is None:  # the gradients were handed over by an earlier backward: run the chunks again
            _, grads = run_chunks(plan, hidden, linear_weight, linear_bias, want)
        return tuple(_scaled(g, grad_loss) for g in grads) + (None,)


def linear_loss(plan: LinearPlan, hidden: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor]) -> Tensor:
    """The plan's loss on (M, H) ``hidden``: through :class:`LinearLossFunction` when a gradient is
    needed, the chunks alone otherwise."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, linear_weight, linear_bias)):
        return LinearLossFunction.apply(hidden, linear_weight, linear_bias, plan)
    return run_chunks(plan, hidden, linear_weight, linear_bias)[0]

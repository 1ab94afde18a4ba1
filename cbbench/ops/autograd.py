"""Eager autograd of the fused ops: a PyTorch loss under every autograd feature.

* **First backward**: the kernel wrote the gradient of the reduced loss in the forward pass; the
  first backward hands that tensor over (no copy), scaled in place when ``grad_output`` is not 1
  (AMP's ``GradScaler``; one read and write of the (N, C) gradient, no extra memory). Once handed
  over it is the caller's (``.grad`` may take it without a copy and be zeroed or clipped in place).
* **Further backwards** (``retain_graph=True``): the kernel runs again on the saved logits. The
  logits are saved by reference (``save_for_backward``, with its in-place check), so they stay alive
  until the backward, as the log-softmax output of ``F.cross_entropy`` does.
* **Higher order** (``create_graph=True``: Hessian-vector products, gradient penalties): the backward
  differentiates the reference (``cbbench/reference.py``) at the saved logits, so the gradient is
  itself differentiable, to any order.
* **Forward mode** (``torch.autograd.forward_ad``): the tangent from the kernel's gradient.

``torch.func`` transforms and gradients for inputs other than the logits take the reference
directly (see :mod:`cbbench.functional`); ``torch.compile`` traces the registered op
(:mod:`cbbench.ops.library`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.autograd.forward_ad

from .library import SIGMOID_FOCAL, SOFTMAX_CROSS_ENTROPY, FusedOp, SigmoidFocalArgs, SoftmaxArgs, scaled_grad

Tensor = torch.Tensor


def reference_vjp(fused: FusedOp, args: NamedTuple, grad_loss: Tensor) -> Tensor:
    """``grad_loss``-weighted gradient of the reference loss at ``args.logits``, differentiable."""
    with torch.enable_grad():
        value = fused.reference(args)
    (grad,) = torch.autograd.grad(value, args.logits, grad_loss, create_graph=True)
    return grad


def _slow_backward(fused: FusedOp, args: NamedTuple, grad_loss: Tensor) -> Tensor:
    """The backwards that do not hand over the forward's gradient: create_graph=True (differentiate
    the reference) and a backward after the gradient was handed over (run the kernel again)."""
    if torch.is_grad_enabled():
        return reference_vjp(fused, args, grad_loss)
    _, grad = fused.run(args._replace(need_grad=True))
    return scaled_grad(grad, grad_loss, args.reduction, in_place=True)


def slow_backward(name: str, logits: Tensor, target: Tensor, weight, logit_offset, target_margin, scale: float,
                  label_smoothing: float, gamma: float, alpha: float, focal: bool, ignore_index: int, reduction: str,
                  grad_loss: Tensor) -> Tensor:
    """:func:`_slow_backward` for the C++ fast path's autograd node (kernels/cpu/fast_path.cpp)."""
    if name == SOFTMAX_CROSS_ENTROPY.name:
        fused = SOFTMAX_CROSS_ENTROPY
        args = SoftmaxArgs(logits, target, weight, logit_offset, target_margin, scale, label_smoothing, ignore_index,
                           reduction, True)
    else:
        fused = SIGMOID_FOCAL
        args = SigmoidFocalArgs(logits, target, weight, gamma, alpha, ignore_index, focal, reduction, True)
    return _slow_backward(fused, args, grad_loss)


class FusedFunction(torch.autograd.Function):
    """``apply(logits, fused, args)``: the loss of ``fused`` on ``args`` (whose ``logits`` is
    ``logits``), differentiable with respect to the logits."""

    @staticmethod
    def forward(ctx, logits: Tensor, fused: FusedOp, args: NamedTuple) -> Tensor:
        loss, grad = fused.run(args)
        ctx.fused, ctx.rest, ctx.reduction = fused, args[1:], args.reduction
        ctx.grad = grad if args.need_grad else None
        ctx.save_for_backward(logits)
        if torch.autograd.forward_ad._current_level >= 0:
            ctx.save_for_forward(logits)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad = ctx.grad
        ctx.grad = None
        if grad is not None and not torch.is_grad_enabled():  # the common case: hand it over
            return scaled_grad(grad, grad_loss, ctx.reduction, in_place=True), None, None
        (logits,) = ctx.saved_tensors
        return _slow_backward(ctx.fused, ctx.fused.args(logits, *ctx.rest), grad_loss), None, None

    @staticmethod
    def jvp(ctx, logits_tangent: Tensor, _fused, _args):
        # the loss is linear in each row's terms: its tangent is <d loss / d logits, tangent>, per row
        # for "none" -- the kernel's own first derivative (forward mode needs no second one)
        (logits,) = ctx.saved_tensors
        args = ctx.fused.args(logits, *ctx.rest)
        grad = ctx.grad if ctx.grad is not None else ctx.fused.run(args._replace(need_grad=True))[1]
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        product = grad.to(dtype) * logits_tangent.to(dtype)
        return product.sum(1) if args.reduction == "none" else product.sum()


# Function.apply's Python wrapper only adds what torch.func needs (setup_context binding, functorch
# dispatch); the fused path never runs under torch.func (cbbench.functional takes the reference
# there), so calls go straight to the C++ apply: ~1.5 us less on a ~30 us small-batch call.
apply = super(torch.autograd.Function, FusedFunction).apply

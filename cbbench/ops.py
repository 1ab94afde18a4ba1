"""torch.library ops over the fused kernels, and the choice of backend.

Two ops, ``cbbench::softmax_cross_entropy`` and ``cbbench::sigmoid_focal`` (sigmoid cross-entropy is
the focal op with ``focal=False``), each returning ``(loss, grad_logits)``: the kernels compute the loss
and the gradient of the *reduced* loss in one pass over each row, the gradient is saved, and backward
only rescales it by ``grad_output`` (and not at all when that is 1 on the CPU). Both ops have fake
kernels and autograd, so they run under ``torch.compile(fullgraph=True)``.

Kernel contract (implemented by ``cbbench._cpu`` — Cython — and ``cbbench._cuda`` — CUDA)::

    softmax_ce_fwd(logits, target, weight, logit_offset, target_margin, scale, label_smoothing,
                   ignore_index, grad_scale, loss_rows, grad)
    sigmoid_focal_fwd(logits, target, weight, gamma, alpha, ignore_index, focal, grad_scale,
                      loss_rows, grad)

``logits`` (M, C) contiguous; ``target`` (M,) int64 contiguous, or for ``sigmoid_focal_fwd`` a (M, C)
multi-hot tensor of the logits' dtype (soft labels are therefore rounded to that dtype); ``weight`` /
``logit_offset`` / ``target_margin``: (C,) float32 contiguous or ``None``; ``alpha < 0`` means no alpha.
The *loss dtype* is float32, or float64 for float64 logits. ``grad_scale``: 0-dim tensor of the loss
dtype on the logits' device (read by the kernel, so no host synchronisation), or ``None`` for 1 (the
"sum" and "none" reductions); ``loss_rows``: (M,)
output of the loss dtype, the weighted per-row loss (0 for ignored rows); ``grad``: (M, C) output in
the logits' dtype, or ``None`` for forward only; it receives ``grad_scale * d loss_rows[i] / d
logits[i, :]``. A target outside ``[0, C)`` that is not ``ignore_index`` makes its row's loss and
gradient NaN (never an out-of-bounds read). The CPU module handles float32/float64 (other dtypes are
upcast here); the CUDA module float32/float16/bfloat16/float64.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional, Tuple

import torch

from . import reference

Tensor = torch.Tensor

BACKENDS = ("auto", "reference", "cpu", "cuda")
_KERNEL_MODULES = {"cpu": "cbbench._cpu", "cuda": "cbbench._cuda"}
_loaded: dict = {}


def kernel_module(device_type: str):
    """The compiled kernel module for ``"cpu"`` or ``"cuda"``, or ``None`` when it was not built."""
    if device_type not in _loaded:
        try:
            _loaded[device_type] = (importlib.import_module(_KERNEL_MODULES[device_type]), None)
        except ImportError as exc:  # not built, or built against another torch
            _loaded[device_type] = (None, f"{type(exc).__name__}: {exc}")
    return _loaded[device_type][0]


def kernel_status(device_type: str) -> str:
    """``"available"`` or why the kernel module for ``device_type`` could not be imported."""
    return "available" if kernel_module(device_type) is not None else _loaded[device_type][1]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map a requested backend (and ``CBBENCH_BACKEND`` for ``"auto"``) to ``reference``/``cpu``/``cuda``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("CBBENCH_BACKEND", "").strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"environment variable CBBENCH_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        kind = device.type
        return kind if kind in _KERNEL_MODULES and kernel_module(kind) is not None else "reference"
    if backend in _KERNEL_MODULES:
        if device.type != backend:
            raise ValueError(f"backend={backend!r} needs {backend} tensors, got tensors on {device}")
        if kernel_module(backend) is None:
            raise RuntimeError(
                f"backend={backend!r}: the {backend} kernels of cbbench are not built "
                f"({kernel_status(backend)}); reinstall cbbench"
                + (" with CBBENCH_CUDA=1 and `pip install --no-build-isolation`" if backend == "cuda" else "")
                + ", or use backend='reference'"
            )
    return backend


# ----------------------------------------------------------------------------------------------
# shared pieces of the two ops
# ----------------------------------------------------------------------------------------------
_UPCAST_ON_CPU = (torch.float16, torch.bfloat16)


def _kernel_io(logits: Tensor) -> Tuple[object, Tensor]:
    kern = kernel_module(logits.device.type)
    if kern is None:
        raise RuntimeError(f"cbbench has no fused kernel for {logits.device.type} tensors ({kernel_status(logits.device.type)})")
    if logits.device.type == "cpu" and logits.dtype in _UPCAST_ON_CPU:
        logits = logits.float()
    return kern, logits.contiguous()


def _reduction_scales(denominator: Optional[Tensor], loss_dtype: torch.dtype) -> Tuple[Optional[Tensor],
                                                                                    Optional[Tensor]]:
    """The denominator in the loss dtype and the kernels' ``grad_scale``, its reciprocal in the loss
    dtype too (so float64 gradients are float64-exact), in two small device ops (no host sync);
    ``(None, None)`` for "sum"/"none", where the kernels take a grad_scale of ``None`` as 1."""
    if denominator is None:
        return None, None
    denominator = denominator.to(loss_dtype)
    return denominator, denominator.reciprocal()


def _outputs(loss_rows: Tensor, grad: Optional[Tensor], logits: Tensor, reduction: str,
             denominator: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    loss = reference.reduce_rows(loss_rows, loss_rows, reduction, denominator)
    if grad is None:
        return loss, logits.new_empty((0,))
    return loss, grad if grad.dtype == logits.dtype else grad.to(logits.dtype)


def _loss_rows(z: Tensor) -> Tensor:
    return torch.empty(z.shape[0], dtype=_loss_dtype(z), device=z.device)


def _loss_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _fake_outputs(logits: Tensor, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    shape = (logits.shape[0],) if reduction == "none" else ()
    loss = logits.new_empty(shape, dtype=_loss_dtype(logits))
    grad = torch.empty_like(logits) if need_grad else logits.new_empty((0,))
    return loss, grad


def _class_index_denominator(target: Tensor, weight: Optional[Tensor], ignore_index: int,
                             reduction: str) -> Optional[Tensor]:
    if reduction in ("sum", "none"):
        return None
    valid = target != ignore_index
    row_weight = None
    if weight is not None and reduction == "weighted_mean":
        # clamped: neither ignore_index nor a bad target may index out of bounds here (`valid` masks
        # the ignored rows; a bad target's row is NaN from the kernel)
        row_weight = weight[target.clamp(0, weight.numel() - 1)]
    return reference.reduction_denominator(reduction, valid=valid, row_weight=row_weight)


def _is_eager(t: Tensor) -> bool:
    """A real tensor outside any tracing (dynamo, AOTAutograd/make_fx hand us tensor subclasses)."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling()


def _scale_saved_grad(grad: Tensor, grad_output: Tensor, reduction: str) -> Tensor:
    """d loss / d logits from the saved gradient of the reduced loss and the incoming grad_output."""
    if grad_output is None:  # only output[1] was used (grads are not materialised)
        return None
    if grad.dim() == 1 and grad_output.numel() != 0:  # the (0,) placeholder; a real one is (M, C), maybe M = 0
        raise RuntimeError("cbbench: this loss was computed without a gradient (need_grad=False); "
                           "call it with logits that require grad")
    if reduction == "none":
        return (grad * grad_output.unsqueeze(1)).to(grad.dtype)
    if _is_eager(grad_output):
        if grad.device.type == "cuda":
            kern = kernel_module("cuda")
            if kern is not None and hasattr(kern, "scaled_grad"):
                return kern.scaled_grad(grad, grad_output)
        elif grad_output.item() == 1.0:  # a host read is free on the CPU
            return grad
    return (grad * grad_output).to(grad.dtype)


def _register_fused(op, reduction_arg: int) -> None:
    """Fake kernel and autograd of a fused op: ``args[0]`` is the logits, ``args[reduction_arg]`` the
    reduction, ``args[-1]`` need_grad; output 1 is the saved gradient of the reduced loss."""

    def fake(*args):
        return _fake_outputs(args[0], args[reduction_arg], args[-1])

    def setup_context(ctx, inputs, output):
        ctx.reduction = inputs[reduction_arg]
        ctx.num_inputs = len(inputs)
        ctx.save_for_backward(output[1])
        # nothing flows back through output[1]; materialising its zero (M, C) gradient cost more than the kernel
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, _grad_of_grad):
        (grad,) = ctx.saved_tensors
        return (_scale_saved_grad(grad, grad_loss, ctx.reduction),) + (None,) * (ctx.num_inputs - 1)

    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)


# ----------------------------------------------------------------------------------------------
# softmax cross-entropy
# ----------------------------------------------------------------------------------------------
def _softmax_cross_entropy_impl(logits: Tensor, target: Tensor, weight: Optional[Tensor], logit_offset: Optional[Tensor],
                          target_margin: Optional[Tensor], scale: float, label_smoothing: float,
                          ignore_index: int, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    """Fused softmax cross-entropy on (M, C) logits: ``(loss, d reduced loss / d logits)``."""
    kern, z = _kernel_io(logits)
    denom = _class_index_denominator(target, weight, ignore_index, reduction)
    loss_rows = _loss_rows(z)
    denom, grad_scale = _reduction_scales(denom, loss_rows.dtype)
    grad = torch.empty_like(z) if need_grad else None
    kern.softmax_ce_fwd(z, target.contiguous(), weight, logit_offset, target_margin, float(scale),
                        float(label_smoothing), int(ignore_index), grad_scale, loss_rows, grad)
    return _outputs(loss_rows, grad, logits, reduction, denom)


softmax_cross_entropy = torch.library.custom_op("cbbench::softmax_cross_entropy", _softmax_cross_entropy_impl,
                                                mutates_args=())
_register_fused(softmax_cross_entropy, reduction_arg=8)


# ----------------------------------------------------------------------------------------------
# sigmoid cross-entropy and sigmoid focal loss
# ----------------------------------------------------------------------------------------------
def _sigmoid_focal_impl(logits: Tensor, target: Tensor, weight: Optional[Tensor], gamma: float, alpha: float,
                  ignore_index: int, focal: bool, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    """Fused sigmoid cross-entropy (``focal=False``) or focal loss on (M, C) logits; ``alpha < 0``: none."""
    kern, z = _kernel_io(logits)
    if target.is_floating_point():
        target = target.to(z.dtype).contiguous()
        denom = reference.reduction_denominator(reduction, multi_hot_target=target, column_weight=weight,
                                                num_rows=z.shape[0])
    else:
        target = target.contiguous()
        denom = _class_index_denominator(target, weight, ignore_index, reduction)
    loss_rows = _loss_rows(z)
    denom, grad_scale = _reduction_scales(denom, loss_rows.dtype)
    grad = torch.empty_like(z) if need_grad else None
    kern.sigmoid_focal_fwd(z, target, weight, float(gamma), float(alpha), int(ignore_index), bool(focal),
                           grad_scale, loss_rows, grad)
    return _outputs(loss_rows, grad, logits, reduction, denom)


sigmoid_focal = torch.library.custom_op("cbbench::sigmoid_focal", _sigmoid_focal_impl, mutates_args=())
_register_fused(sigmoid_focal, reduction_arg=7)


# ----------------------------------------------------------------------------------------------
# calling the fused ops
# ----------------------------------------------------------------------------------------------
class _EagerFused(torch.autograd.Function):
    """The same implementation and backward as the registered op, without torch.library's dispatch
    and argument normalisation (about 0.1 ms a call in eager mode, more than a small kernel). Only the
    logits enter as an autograd input; the other arguments travel as one tuple (the kernels give no
    gradient for them), which keeps ``apply``'s per-argument bookkeeping off the small-shape path."""

    @staticmethod
    def forward(ctx, logits, impl, rest, reduction):
        loss, grad = impl(logits, *rest)
        ctx.reduction = reduction
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return _scale_saved_grad(grad, grad_loss, ctx.reduction), None, None, None


def _call(op, impl, reduction_arg: int, args: tuple) -> Tensor:
    if torch.compiler.is_compiling():  # dynamo / export see the registered op with its fake kernel
        return op(*args)[0]
    return _EagerFused.apply(args[0], impl, args[1:], args[reduction_arg])


def fused_softmax_cross_entropy(*args) -> Tensor:
    """The loss of ``cbbench::softmax_cross_entropy`` (same arguments), differentiable w.r.t. the logits."""
    return _call(softmax_cross_entropy, _softmax_cross_entropy_impl, 8, args)


def fused_sigmoid_focal(*args) -> Tensor:
    """The loss of ``cbbench::sigmoid_focal`` (same arguments), differentiable w.r.t. the logits."""
    return _call(sigmoid_focal, _sigmoid_focal_impl, 7, args)

"""The two fused ops as ``torch.library`` custom ops: schema, per-device kernels, fake kernels and the
autograd that ``torch.compile`` traces.

``cbbench::softmax_cross_entropy`` and ``cbbench::sigmoid_focal`` each return ``(loss, grad)``: the
reduced loss and the gradient of the reduced loss with respect to the logits (an empty (0,) tensor
when ``need_grad`` is false). Each device's kernel is registered with ``register_kernel`` and kept in
:attr:`FusedOp.device_kernels` too, so eager calls reach the same function without the dispatcher
(about 30 us a call, as much as the whole eager ``F.cross_entropy`` at a batch of 8x10).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from .. import reference
from .loading import KERNEL_MODULES, kernel_module, kernel_status

Tensor = torch.Tensor

# The CPU kernels compute in float32/float64; half-precision logits are upcast for them.
_UPCAST_ON_CPU = (torch.float16, torch.bfloat16)


class SoftmaxArgs(NamedTuple):
    """The arguments of ``cbbench::softmax_cross_entropy`` (and of its kernels), in schema order."""
    logits: Tensor
    target: Tensor
    weight: Optional[Tensor]
    logit_offset: Optional[Tensor]
    target_margin: Optional[Tensor]
    scale: float
    label_smoothing: float
    ignore_index: int
    reduction: str
    need_grad: bool


class SigmoidFocalArgs(NamedTuple):
    """The arguments of ``cbbench::sigmoid_focal``: sigmoid cross-entropy with ``focal=False``;
    ``alpha < 0`` means no alpha."""
    logits: Tensor
    target: Tensor
    weight: Optional[Tensor]
    gamma: float
    alpha: float
    ignore_index: int
    focal: bool
    reduction: str
    need_grad: bool


def _softmax_reference(a: SoftmaxArgs) -> Tensor:
    return reference.softmax_cross_entropy(a.logits, a.target, a.weight, reduction=a.reduction,
                                           ignore_index=a.ignore_index, label_smoothing=a.label_smoothing,
                                           logit_offset=a.logit_offset, target_margin=a.target_margin,
                                           scale=a.scale)


def _sigmoid_focal_reference(a: SigmoidFocalArgs) -> Tensor:
    return reference.sigmoid_focal_loss(a.logits, a.target, a.weight, gamma=a.gamma if a.focal else 0.0,
                                        alpha=None if a.alpha < 0 else a.alpha, reduction=a.reduction,
                                        ignore_index=a.ignore_index)


@dataclass
class FusedOp:
    """One fused loss: its argument tuple, the kernel modules' function, the same loss by the
    reference (for the gradients the kernels do not give), the registered op and its device kernels."""
    name: str
    args: type
    kernel_name: str
    reference: Callable[[NamedTuple], Tensor]
    op: Optional[object] = None
    device_kernels: Dict[str, Callable] = field(default_factory=dict)

    def run(self, args: NamedTuple) -> Tuple[Tensor, Tensor]:
        """``(loss, grad)`` by the kernel of the logits' device (no dispatcher)."""
        kernel = self.device_kernels["cpu"] if args.logits.is_cpu else self.device_kernels.get(args.logits.device.type)
        if kernel is None:
            device = args.logits.device.type
            raise RuntimeError(f"cbbench has no fused kernel for {device} tensors ({kernel_status(device)})")
        return kernel(*args)


def _device_kernel(fused: FusedOp, device_type: str) -> Callable:
    """The ``register_kernel`` implementation of ``fused`` on ``device_type``: adapt the inputs to the
    kernel module's contract (contiguous, CPU half upcast) and its outputs to the op's."""
    kernel_name = fused.kernel_name
    upcast = _UPCAST_ON_CPU if device_type == "cpu" else ()

    def kernel(logits: Tensor, target: Tensor, *rest) -> Tuple[Tensor, Tensor]:
        module = kernel_module(device_type)
        if module is None:
            raise RuntimeError(f"cbbench has no fused kernel for {device_type} tensors ({kernel_status(device_type)})")
        z = logits.float() if logits.dtype in upcast else logits
        if not z.is_contiguous():
            z = z.contiguous()
        if target.is_floating_point():  # multi-hot: the kernels read it in the logits' dtype
            target = target.to(z.dtype)
        if not target.is_contiguous():
            target = target.contiguous()
        loss, grad = getattr(module, kernel_name)(z, target, *rest)
        if grad is None:
            return loss, logits.new_empty((0,))
        return loss, grad if grad.dtype == logits.dtype else grad.to(logits.dtype)

    return kernel


def _loss_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _register(fused: FusedOp, impl: Callable) -> FusedOp:
    """Define the custom op from ``impl`` (its signature is the schema), register a kernel per device
    with a kernel module, the fake kernel, and the autograd ``torch.compile`` traces: the saved
    gradient times ``grad_output``, out of place (eager calls take :mod:`cbbench.ops.autograd`'s
    path, which can scale in place)."""
    op = torch.library.custom_op(f"cbbench::{fused.name}", impl, mutates_args=())
    for device in KERNEL_MODULES:
        kernel = _device_kernel(fused, device)
        op.register_kernel(device)(kernel)
        fused.device_kernels[device] = kernel

    def fake(*inputs):
        a = fused.args(*inputs)
        shape = (a.logits.shape[0],) if a.reduction == "none" else ()
        loss = a.logits.new_empty(shape, dtype=_loss_dtype(a.logits))
        grad = torch.empty_like(a.logits) if a.need_grad else a.logits.new_empty((0,))
        return loss, grad

    def setup_context(ctx, inputs, output):
        ctx.reduction = fused.args(*inputs).reduction
        ctx.save_for_backward(output[1])
        ctx.set_materialize_grads(False)  # nothing flows back through output[1]

    def backward(ctx, grad_loss, _grad_of_grad):
        (grad,) = ctx.saved_tensors
        return (scaled_grad(grad, grad_loss, ctx.reduction, in_place=False),) + (None,) * (len(fused.args._fields) - 1)

    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    fused.op = op
    return fused


def scaled_grad(grad: Tensor, grad_loss: Optional[Tensor], reduction: str, *, in_place: bool) -> Optional[Tensor]:
    """d loss / d logits from the gradient of the reduced loss and the incoming ``grad_output``;
    ``in_place`` when ``grad`` is ours to overwrite. In place, a ``grad_output`` of exactly 1 leaves
    ``grad`` untouched: read on the host for CPU tensors (free there), on the device by the CUDA
    module's ``scaled_grad`` (no synchronisation)."""
    if grad_loss is None:
        return None
    if grad.dim() == 1 and grad_loss.numel() != 0:  # the (0,) placeholder; a real one is (M, C), maybe M = 0
        raise RuntimeError("cbbench: this loss was computed without a gradient (its logits did not require "
                           "grad when it ran)")
    if reduction == "none":
        factor = grad_loss.unsqueeze(1)
    else:
        factor = grad_loss
        if in_place and type(grad_loss) is Tensor:
            try:
                if grad_loss.is_cpu:
                    if grad_loss.item() == 1.0:
                        return grad
                elif grad.is_cuda:  # reads grad_output on the device; no pass over grad when it is 1
                    return kernel_module("cuda").scaled_grad(grad, grad_loss)
            except RuntimeError:  # a batch of grad_outputs (jacobian(vectorize=True)): one product each
                in_place = False
    return grad.mul_(factor) if in_place else (grad * factor).to(grad.dtype)


# ----------------------------------------------------------------------------------------------
# the ops (the functions' signatures are the schemas; the bodies run only on devices without a kernel)
# ----------------------------------------------------------------------------------------------
def _no_kernel(logits: Tensor) -> None:
    raise RuntimeError(f"cbbench has no fused kernel for {logits.device.type} tensors; use backend='reference'")


def _softmax_cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor], logit_offset: Optional[Tensor],
                           target_margin: Optional[Tensor], scale: float, label_smoothing: float, ignore_index: int,
                           reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    _no_kernel(logits)


def _sigmoid_focal(logits: Tensor, target: Tensor, weight: Optional[Tensor], gamma: float, alpha: float,
                   ignore_index: int, focal: bool, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    _no_kernel(logits)


SOFTMAX_CROSS_ENTROPY = _register(
    FusedOp("softmax_cross_entropy", SoftmaxArgs, "softmax_ce", _softmax_reference), _softmax_cross_entropy)
SIGMOID_FOCAL = _register(
    FusedOp("sigmoid_focal", SigmoidFocalArgs, "sigmoid_focal", _sigmoid_focal_reference), _sigmoid_focal)

"""The fused op path: compiled kernel modules, ``torch.library`` ops and their autograd.

* :mod:`cbbench.ops.loading` -- which kernel modules were built; which backend a call runs on;
* :mod:`cbbench.ops.library` -- the custom ops ``cbbench::softmax_cross_entropy`` and
  ``cbbench::sigmoid_focal``: schema, a kernel registered per device, fake kernels, compile autograd;
* :mod:`cbbench.ops.autograd` -- eager autograd (repeated, higher-order and forward-mode included);
* ``cbbench._C`` (``kernels/cpu/fast_path.cpp``) -- the same CPU losses and backward for plain 2-D
  inputs in one C++ call, where per-call overhead decides (small batches); optional.

Kernel contract (implemented by ``cbbench._cpu`` -- Cython -- and ``cbbench._cuda`` -- CUDA)::

    softmax_ce(logits, target, weight, logit_offset, target_margin, scale, label_smoothing,
               ignore_index, reduction, need_grad) -> (loss, grad)
    sigmoid_focal(logits, target, weight, gamma, alpha, ignore_index, focal, reduction,
                  need_grad) -> (loss, grad)

``logits`` (M, C) contiguous; ``target`` (M,) int64 contiguous, or for ``sigmoid_focal`` a (M, C)
multi-hot tensor of the logits' dtype; ``weight`` / ``logit_offset`` / ``target_margin``: (C,) float32
contiguous or ``None``; ``alpha < 0`` means no alpha; ``reduction`` one of ``"mean"``,
``"weighted_mean"``, ``"sum"``, ``"none"`` with the divisors of :mod:`cbbench.reference` (computed by
the kernel module, on the device, before the rows, so the rows' gradients are written already
divided: nothing to average gives a divisor of 1; a weight sum of 0 gives 1; a negative one is kept).
Returns ``loss``: 0-dim (``(M,)`` for ``"none"``) in the *loss dtype* (float32, float64 for float64
logits); ``grad``: ``d loss / d logits`` in the logits' dtype, or ``None`` without ``need_grad``.
The reduced loss is summed in a fixed order: bitwise the same at any thread count. A target that is
neither ``ignore_index`` nor in ``[0, C)``: the CPU module raises ``ValueError``; the CUDA module,
which cannot read it without synchronising, makes that row's loss and gradient NaN (never an
out-of-bounds read). The CPU module takes float32/float64 (half precision is upcast by the op), the
CUDA module float32/float16/bfloat16/float64.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad

from . import autograd
from .library import SIGMOID_FOCAL, SOFTMAX_CROSS_ENTROPY, FusedOp, SigmoidFocalArgs, SoftmaxArgs
from .loading import (BACKENDS, fast_path, fast_path_backend, fast_path_status, kernel_module, kernel_status,
                      resolve_backend, uses_kernels)

Tensor = torch.Tensor

__all__ = [
    "BACKENDS",
    "kernel_module",
    "kernel_status",
    "resolve_backend",
    "uses_kernels",
    "fast_path",
    "fast_path_status",
    "fast_path_backend",
    "fast_path_allowed",
    "transforms_active",
    "jit_tracing",
    "forward_ad_active",
    "call",
    "SoftmaxArgs",
    "SigmoidFocalArgs",
    "SOFTMAX_CROSS_ENTROPY",
    "SIGMOID_FOCAL",
]


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, jacrev, jvp, ...) is tracing this call: the
    fused kernels read raw data pointers, so such calls take the reference, which composes with every
    transform."""
    return torch._C._are_functorch_transforms_active()


def jit_tracing() -> bool:
    """Whether ``torch.jit.trace`` (or ``torch.onnx.export``'s tracer) records this call: the tracer sees
    only ATen ops, so a kernel call would be recorded as the empty output tensor it fills (a traced loss
    that returns garbage); such calls take the reference, whose ops the tracer records. (Dynamo cannot
    trace ``_is_tracing``; under torch.compile it is not asked.)"""
    return not torch.compiler.is_compiling() and torch._C._is_tracing()


def forward_ad_active() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level`` is open (dual logits need the autograd
    function's ``jvp`` even where no gradient is needed)."""
    return torch.autograd.forward_ad._current_level >= 0


def fast_path_allowed(backend: str):
    """The fast-path module (``cbbench._C``) when this call may try it, else ``None``: CPU backend,
    no torch.compile tracing, no torch.func transform, no forward-mode AD, no ``torch.jit.trace``
    (the module itself declines any argument outside its scope)."""
    fast = fast_path()
    if fast is None or not fast_path_backend(backend) or torch.compiler.is_compiling() \
            or torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0 \
            or torch._C._is_tracing():
        return None
    return fast


def call(fused: FusedOp, args) -> Tensor:
    """The loss of ``fused`` on ``args`` (its argument tuple), differentiable w.r.t. ``args.logits``:
    the registered op under ``torch.compile``, the eager autograd otherwise."""
    if torch.compiler.is_compiling():
        return fused.op(*args)[0]
    if not args.need_grad and not forward_ad_active():
        return fused.run(args)[0]
    return autograd.apply(args.logits, fused, args)

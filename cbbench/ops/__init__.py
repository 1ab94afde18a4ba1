"""The op path: the compiled op library and kernel modules, and the calls into them.

The ops are defined once, in C++ (``kernels/ops/ops.cpp``, module ``cbbench._C``): their schemas, the
autograd on the Autograd key, and a differentiable composite for what the fused kernels cannot serve;
``cbbench._cpu`` (Cython, ``kernels/cpu/``) and ``cbbench._cuda`` (``kernels/cuda/``) register the device
kernels; Python registers only the fake kernels (:mod:`cbbench.ops.fake`). Eager calls, ``torch.compile``
and ``torch.jit.trace`` all go through the dispatcher to the same kernels.

* :mod:`cbbench.ops.loading` -- which modules were built; which backend a call runs on.

The ops (rows of logits: (M, C))::

    torch.ops.cbbench.softmax_cross_entropy(logits, target, weight, logit_offset, target_margin, scale,
                                            label_smoothing, ignore_index, reduction) -> loss
    torch.ops.cbbench.sigmoid_focal(logits, target, weight, gamma, alpha, ignore_index, focal,
                                    reduction) -> loss
    torch.ops.cbbench.softmax_cross_entropy_fused(..., need_grad) -> (loss, grad)
    torch.ops.cbbench.sigmoid_focal_fused(..., need_grad) -> (loss, grad)
    torch.ops.cbbench.loss_divisor(target, weight, num_classes, ignore_index, reduction, floor) -> divisor
    torch.ops.cbbench.scale_grad_(grad, grad_output) -> ()

``target`` (M,) int64, or for the sigmoid family a (M, C) floating-point multi-hot target;
``weight`` / ``logit_offset`` / ``target_margin``: (C,) or ``None``; ``alpha < 0`` means no alpha;
``reduction`` one of ``"mean"``, ``"weighted_mean"``, ``"sum"``, ``"none"`` with the divisors of
:mod:`cbbench.reference` (computed by the kernel module, on the device, before the rows, so the rows'
gradients are written already divided: nothing to average gives a divisor of 1; a weight sum of 0 gives
1; a negative one is kept). The loss is 0-dim (``(M,)`` for ``"none"``) in the *loss dtype* (float32,
float64 for float64 logits); a fused op's ``grad`` is ``d loss / d logits`` in the logits' dtype, ``(0,)``
without ``need_grad``. Sums run in a fixed order: bitwise the same at any thread count. A class target
that is neither ``ignore_index`` nor in ``[0, C)``: the CPU kernels raise ``ValueError``; the CUDA kernels,
which cannot read it without synchronising, make that row's loss and gradient NaN (never an
out-of-bounds read). CPU kernels compute float16/bfloat16 logits in float32; CUDA kernels take float32,
float16, bfloat16 and float64.
"""
from __future__ import annotations

import torch

from . import fake, loading
from .loading import (BACKENDS, eager_module_for, kernel_module, kernel_status, ops_available, resolve_backend,
                      uses_kernels)

__all__ = ["BACKENDS", "kernel_module", "kernel_status", "ops_available", "resolve_backend", "uses_kernels",
           "softmax_cross_entropy", "sigmoid_focal", "eager_module"]

if ops_available():
    fake.register()


def eager_module():
    """``cbbench._C``, whose ``softmax_cross_entropy`` / ``sigmoid_focal`` enter the ops for eager calls
    (see :func:`softmax_cross_entropy`), or ``None`` where it is not built."""
    return loading._ops[0]


def softmax_cross_entropy(*args):
    """``torch.ops.cbbench.softmax_cross_entropy`` on its schema's arguments: eager calls enter through the op
    library's pybind function (the same op and dispatch, without torch.ops' argument boxing), traced ones
    (``torch.compile``) through ``torch.ops``."""
    if torch.compiler.is_compiling():
        return torch.ops.cbbench.softmax_cross_entropy.default(*args)
    return loading._ops[0].softmax_cross_entropy(*args)


def sigmoid_focal(*args):
    """``torch.ops.cbbench.sigmoid_focal``, entered as :func:`softmax_cross_entropy` says."""
    if torch.compiler.is_compiling():
        return torch.ops.cbbench.sigmoid_focal.default(*args)
    return loading._ops[0].sigmoid_focal(*args)

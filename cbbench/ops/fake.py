"""The fake (meta) kernels of the cbbench ops -- the one part of an op registered in Python, as in
torchvision: shapes and dtypes for ``torch.compile``'s tracing and for ``torch.library.opcheck``. The
schemas, the autograd and the device kernels are C++ (kernels/ops/ops.cpp, kernels/cpu/cpu_ops.h,
kernels/cuda/binding.cpp)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


def loss_dtype(logits: Tensor) -> torch.dtype:
    """The loss dtype: float32, float64 for float64 logits (kernels/ops/cb_ops.h, loss_dtype)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _loss(logits: Tensor, reduction: str) -> Tensor:
    shape = (logits.shape[0],) if reduction == "none" else ()
    return logits.new_empty(shape, dtype=loss_dtype(logits))


def _fused(logits: Tensor, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    return _loss(logits, reduction), torch.empty_like(logits) if need_grad else logits.new_empty((0,))


def register() -> None:
    """Register the fake kernels (once the op library ``cbbench._C`` has defined the ops)."""
    lib = "cbbench::"

    @torch.library.register_fake(lib + "softmax_cross_entropy")
    def _softmax(logits, target, weight, logit_offset, target_margin, scale, label_smoothing, gamma, alpha,
                 sample_weight, ignore_index, reduction):
        return _loss(logits, reduction)

    @torch.library.register_fake(lib + "sigmoid_focal")
    def _sigmoid(logits, target, weight, gamma, alpha, sample_weight, ignore_index, focal, reduction):
        return _loss(logits, reduction)

    @torch.library.register_fake(lib + "softmax_cross_entropy_fused")
    def _softmax_fused(logits, target, weight, logit_offset, target_margin, scale, label_smoothing, gamma, alpha,
                       sample_weight, ignore_index, reduction, need_grad):
        return _fused(logits, reduction, need_grad)

    @torch.library.register_fake(lib + "sigmoid_focal_fused")
    def _sigmoid_fused(logits, target, weight, gamma, alpha, sample_weight, ignore_index, focal, reduction,
                       need_grad):
        return _fused(logits, reduction, need_grad)

    @torch.library.register_fake(lib + "loss_divisor")
    def _divisor(target: Tensor, weight: Optional[Tensor], sample_weight: Optional[Tensor], num_classes,
                 ignore_index, reduction, floor):
        return target.new_empty((), dtype=torch.float64)

    @torch.library.register_fake(lib + "scale_grad_")
    def _scale(grad: Tensor, grad_output: Tensor) -> None:
        return None

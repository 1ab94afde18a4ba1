"""Shapes and reductions shared by the reference, the op layer and the public functions.

A loss takes logits (N, C) or (N, C, d1, ...) and targets (N,) or (N, d1, ...), as PyTorch's losses
do. The kernels and the reference work on *rows*: (M, C) logits with M = N * d1 * ..., the class
dimension last.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

# "mean": the paper's (softmax: / non-ignored samples; sigmoid/focal: / positives, at least 1);
# "weighted_mean": PyTorch's (/ sum of the applied weights); "sum"; "none": per-sample losses.
REDUCTIONS = ("mean", "weighted_mean", "sum", "none")


def rows(x: Tensor) -> Tensor:
    """(N, C, d1, ...) -> (N * d1 * ..., C), class dimension last (a view when possible)."""
    if x.dim() > 2:
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])


def sample_shape(logits: Tensor) -> tuple:
    """The shape of one value per sample: (N,) or (N, d1, ...)."""
    return (logits.shape[0],) + tuple(logits.shape[2:])


def unflatten(per_row: Tensor, logits: Tensor) -> Tensor:
    """Per-row values (M,) back to the sample shape of ``logits``."""
    if logits.dim() > 2:
        return per_row.reshape(sample_shape(logits))
    return per_row

"""Shapes and reductions shared by the reference, the op layer and the public functions.

A loss takes logits (N, C) or (N, C, d1, ...) and targets (N,) or (N, d1, ...), as PyTorch's losses
do. The kernels and the reference work on *rows*: (M, C) logits with M = N * d1 * ..., the class
dimension last.
"""
from __future__ import annotations

from typing import Optional

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


# ----------------------------------------------------------------------------------------------
# the reductions' divisors: one formula for the reference, the kernels' contract (kernels/cpu/
# cb_cpu_loss.h and the CUDA binding implement the same) and the distributed normaliser
# ----------------------------------------------------------------------------------------------
def local_divisor(reduction: str, *, valid: Optional[Tensor] = None, row_weight: Optional[Tensor] = None,
                  multi_hot_target: Optional[Tensor] = None, column_weight: Optional[Tensor] = None,
                  num_rows: int = 0, sample_weight: Optional[Tensor] = None) -> Optional[Tensor]:
    """The quantity a reduction divides by, before its floor: a 0-dim float64 tensor (``None`` for
    ``"sum"`` and ``"none"``). Additive over disjoint parts of a batch, so ranks can all-reduce it.

    Class-index targets: pass ``valid`` (bool (M,), the non-ignored rows) and ``row_weight`` (the weight
    each row is applied, s_i w_{y_i} -- or w_{y_i}, or s_i -- or ``None``): ``"mean"`` counts the valid
    rows, ``"weighted_mean"`` sums their weights (counts them without a weight). Multi-hot targets: pass
    ``multi_hot_target`` (M, C), ``column_weight``, ``num_rows`` and ``sample_weight`` (M,) or ``None``:
    ``"mean"`` sums the targets (the positives), ``"weighted_mean"`` gives each row its sample weight times
    the mean column weight (1 without them).
    """
    if reduction in ("sum", "none"):
        return None
    f64 = torch.float64
    if multi_hot_target is not None:
        if reduction == "mean":
            return multi_hot_target.sum(dtype=f64)
        if sample_weight is not None:
            rows_weight = sample_weight.to(f64).sum()
        else:  # a fill, not a host-to-device copy: stays CUDA-graph capturable
            rows_weight = torch.full((), float(num_rows), dtype=f64, device=multi_hot_target.device)
        return rows_weight if column_weight is None else column_weight.to(f64).mean() * rows_weight
    if reduction == "mean" or row_weight is None:
        return valid.sum(dtype=f64)
    return torch.where(valid, row_weight, 0.0).sum(dtype=f64)


def finish_divisor(reduction: str, divisor: Optional[Tensor]) -> Optional[Tensor]:
    """The floor of a (summed) :func:`local_divisor`: ``"mean"`` divides by at least 1 (nothing to
    average gives a loss of 0, not NaN); ``"weighted_mean"`` replaces a sum of exactly 0 by 1 and keeps
    a negative one, as PyTorch does."""
    if divisor is None:
        return None
    if reduction == "mean":
        return divisor.clamp_min(1.0)
    return torch.where(divisor != 0, divisor, 1.0)

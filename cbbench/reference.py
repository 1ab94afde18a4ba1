"""The oracle: every cbbench loss in plain, readable PyTorch.

Each function takes already-validated arguments (see :mod:`cbbench.functional`), computes in at least
float32 (float64 stays float64, where it is exact to rounding) and gets its gradient from autograd.
Every fused kernel is tested against this file, and this file against ``torch.nn.functional`` and the
paper's formulas.

Conventions (docs/design.md, "Math" and "Conventions"):

* ``logits`` is (N, C) or (N, C, d1, ...); integer ``target`` is (N,) or (N, d1, ...).
* softmax: ``loss_i = w_{y_i} * [(1 - eps) * (lse(z') - z'_{y_i}) + eps * mean_j (lse(z') - z'_j)]`` with
  ``z'_j = scale * (z_j + logit_offset_j - [j == y_i] * target_margin_{y_i})``; softmax focal:
  ``loss_i = -w_{y_i} alpha_{y_i} (1 - p_{y_i})^gamma log p_{y_i}`` with ``p = softmax(z')``.
* sigmoid: ``loss_i = w_{y_i} * sum_j BCE(z_ij, t_ij)``; focal multiplies each term by
  ``(1 - p_t)^gamma = exp(-gamma * (t z + softplus(-z)))`` and optionally by RetinaNet's ``alpha_t``.
  With multi-hot float targets (same shape as logits) ``weight`` is per column instead.
* ``sample_weight`` (N,) (or the sample shape) multiplies each sample's loss after its class weight.
* reductions: ``"mean"`` (softmax: / non-ignored samples; sigmoid/focal: / positives, at least 1 -- not
  weighted by the sample weights), ``"weighted_mean"`` (/ sum of the applied weights ``s_i w_{y_i}``, as
  ``nn.CrossEntropyLoss(weight=...)``), ``"sum"``, ``"none"`` (per-sample loss with the class terms summed).
* masked logits: a logit of ``-inf`` is a class with probability 0, not a NaN -- terms whose
  coefficient is exactly 0 are dropped, not multiplied by an infinity.
"""
from __future__ import annotations

from typing import Optional

import torch

from .shapes import REDUCTIONS, finish_divisor, local_divisor, rows, unflatten

Tensor = torch.Tensor

__all__ = [
    "softplus",
    "binary_cross_entropy",
    "focal_modulator",
    "reduction_denominator",
    "softmax_cross_entropy",
    "softmax_focal_loss",
    "softmax_focal_modulator",
    "sigmoid_cross_entropy",
    "sigmoid_focal_loss",
    "reduce_rows",
    "REDUCTIONS",
]


# ----------------------------------------------------------------------------------------------
# scalar math (the float64-exact definitions the C header mirrors)
# ----------------------------------------------------------------------------------------------
def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` as ``logaddexp(x, 0)``: stable, no threshold cut-off, and its autograd
    derivative is ``sigmoid(x)`` everywhere (a ``max(x, 0) + log1p(exp(-|x|))`` graph would give a
    one-sided derivative at exactly 0)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _times(coefficient: Tensor, value: Tensor) -> Tensor:
    """``coefficient * value``, 0 where the coefficient is exactly 0 (even where ``value`` is inf)."""
    return torch.where(coefficient != 0, coefficient * value, 0.0)


def binary_cross_entropy(z: Tensor, t: Tensor) -> Tensor:
    """``softplus(z) - t z`` written as ``t softplus(-z) + (1 - t) softplus(z)``: no cancellation for
    t in {0, 1} at any z, the derivative ``sigmoid(z) - t``, and 0 (not NaN) for a masked logit
    ``z = -inf`` with ``t = 0`` (or ``z = +inf`` with ``t = 1``)."""
    return _times(t, softplus(-z)) + _times(1.0 - t, softplus(z))


def focal_modulator(z: Tensor, t: Tensor, gamma: float) -> Tensor:
    """``(1 - p_t)^gamma`` in log space: ``-log(1 - p_t) = t z + softplus(-z)`` is the binary
    cross-entropy against the flipped target, so ``exp(-gamma * BCE(z, 1 - t))``; never overflows."""
    return torch.exp(-gamma * binary_cross_entropy(z, 1.0 - t))


# ----------------------------------------------------------------------------------------------
# reductions
# ----------------------------------------------------------------------------------------------
def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def reduction_denominator(reduction: str, **local) -> Optional[Tensor]:
    """The divisor of a reduction (see :func:`cbbench.shapes.local_divisor` for the arguments)."""
    return finish_divisor(reduction, local_divisor(reduction, **local))


def reduce_rows(per_row: Tensor, logits: Tensor, reduction: str, denominator: Optional[Tensor]) -> Tensor:
    """Apply ``reduction`` to per-row losses: their sum divided by ``denominator`` (from
    :func:`reduction_denominator`, cast to the loss dtype), or the rows in the sample shape for "none"."""
    if reduction == "none":
        return unflatten(per_row, logits)
    total = per_row.sum()
    if denominator is None:
        return total
    return total / denominator.to(total.dtype)


def _row_weights(target: Tensor, weight: Optional[Tensor], valid: Tensor, dtype: torch.dtype) -> Tensor:
    safe = torch.where(valid, target, torch.zeros_like(target))
    w = torch.ones(target.shape, dtype=dtype, device=target.device) if weight is None else weight.to(dtype)[safe]
    return torch.where(valid, w, torch.zeros_like(w))


def _per_sample(sample_weight: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """Sample weights as a flat (M,) tensor of ``dtype`` (``None`` stays ``None``)."""
    return None if sample_weight is None else sample_weight.reshape(-1).to(dtype)


def softmax_focal_modulator(log_py: Tensor, gamma: float) -> Tensor:
    """``(1 - p_y)^gamma`` from ``log p_y`` in log space: ``exp(gamma * log(-expm1(log p_y)))``, finite for
    every gamma >= 0 as p_y -> 1 (0 at p_y = 1 for gamma > 0, with a finite gradient: no log(0) in the graph)."""
    if gamma == 0:
        return torch.ones_like(log_py)
    q = -torch.expm1(log_py)
    positive = q > 0
    safe = torch.where(positive, q, torch.ones_like(q))
    return torch.where(positive, torch.exp(gamma * torch.log(safe)), torch.zeros_like(q))


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def softmax_cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                          reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0,
                          logit_offset: Optional[Tensor] = None, target_margin: Optional[Tensor] = None,
                          scale: float = 1.0, sample_weight: Optional[Tensor] = None) -> Tensor:
    """Class-weighted softmax cross-entropy with the logit-adjustment family's options."""
    return _softmax_family(logits, target, weight, reduction=reduction, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, logit_offset=logit_offset, target_margin=target_margin,
                           scale=scale, gamma=0.0, alpha=None, sample_weight=sample_weight)


def softmax_focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *, gamma: float = 2.0,
                       alpha=None, reduction: str = "mean", ignore_index: int = -100,
                       logit_offset: Optional[Tensor] = None, target_margin: Optional[Tensor] = None,
                       scale: float = 1.0, sample_weight: Optional[Tensor] = None) -> Tensor:
    """Softmax focal loss ``-w_y alpha_y (1 - p_y)^gamma log p_y`` (Lin et al. on the softmax; ``alpha`` a
    number or a per-class vector, ``None`` for none), on the softmax family's adjusted logits."""
    return _softmax_family(logits, target, weight, reduction=reduction, ignore_index=ignore_index,
                           label_smoothing=0.0, logit_offset=logit_offset, target_margin=target_margin, scale=scale,
                           gamma=gamma, alpha=alpha, sample_weight=sample_weight)


def _softmax_family(logits: Tensor, target: Tensor, weight: Optional[Tensor], *, reduction: str, ignore_index: int,
                    label_smoothing: float, logit_offset: Optional[Tensor], target_margin: Optional[Tensor],
                    scale: float, gamma: float, alpha, sample_weight: Optional[Tensor]) -> Tensor:
    dtype = _compute_dtype(logits)
    z = rows(logits).to(dtype)
    y = target.reshape(-1)
    num_classes = z.shape[1]
    valid = y != ignore_index
    safe_y = torch.where(valid, y, torch.zeros_like(y))

    if logit_offset is not None:
        z = z + logit_offset.to(dtype)
    if target_margin is not None:
        onehot = torch.nn.functional.one_hot(safe_y, num_classes).to(dtype)
        z = z - onehot * target_margin.to(dtype)[safe_y].unsqueeze(1)
    z = z * scale

    log_prob = z - torch.logsumexp(z, dim=1, keepdim=True)
    log_py = log_prob.gather(1, safe_y.unsqueeze(1)).squeeze(1)  # not onehot * log_prob: -inf * 0 is NaN
    nll = -log_py
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * log_prob.mean(dim=1)
    if gamma > 0:
        nll = softmax_focal_modulator(log_py, gamma) * nll

    row_weight = _row_weights(y, weight, valid, dtype)
    s = _per_sample(sample_weight, dtype)
    applied = row_weight if s is None else row_weight * s  # what a row is weighted and divided by
    carried = applied
    if alpha is not None:
        a = alpha.to(dtype)[safe_y] if isinstance(alpha, Tensor) else alpha
        carried = applied * a
    per_row = torch.where(valid, carried * nll, torch.zeros_like(nll))
    denom = reduction_denominator(reduction, valid=valid,
                                  row_weight=None if weight is None and s is None else applied)
    return reduce_rows(per_row, logits, reduction, denom)


def _sigmoid_family(logits: Tensor, target: Tensor, weight: Optional[Tensor], *, gamma: Optional[float],
                    alpha: Optional[float], reduction: str, ignore_index: int,
                    sample_weight: Optional[Tensor] = None) -> Tensor:
    dtype = _compute_dtype(logits)
    z = rows(logits).to(dtype)
    num_classes = z.shape[1]
    multi_hot = target.is_floating_point()
    s = _per_sample(sample_weight, dtype)

    if multi_hot:
        t = rows(target).to(dtype)
        valid = None
        element_weight = None if weight is None else weight.to(dtype).unsqueeze(0)
    else:
        y = target.reshape(-1)
        valid = y != ignore_index
        safe_y = torch.where(valid, y, torch.zeros_like(y))
        t = torch.nn.functional.one_hot(safe_y, num_classes).to(dtype)
        element_weight = _row_weights(y, weight, valid, dtype).unsqueeze(1)

    terms = binary_cross_entropy(z, t)
    if gamma is not None and gamma != 0:
        terms = terms * focal_modulator(z, t, gamma)
    if alpha is not None:
        terms = terms * (alpha * t + (1.0 - alpha) * (1.0 - t))
    if element_weight is not None:
        terms = terms * element_weight
    per_row = terms.sum(dim=1)
    if s is not None:
        per_row = per_row * s
    if valid is not None:
        per_row = torch.where(valid, per_row, torch.zeros_like(per_row))

    if multi_hot:
        denom = reduction_denominator(reduction, multi_hot_target=t, column_weight=weight, num_rows=z.shape[0],
                                      sample_weight=s)
    else:
        applied = element_weight.squeeze(1) if s is None else element_weight.squeeze(1) * s
        denom = reduction_denominator(reduction, valid=valid,
                                      row_weight=None if weight is None and s is None else applied)
    return reduce_rows(per_row, logits, reduction, denom)


def sigmoid_cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                          reduction: str = "mean", ignore_index: int = -100,
                          sample_weight: Optional[Tensor] = None) -> Tensor:
    """Sigmoid (one-vs-all) cross-entropy: ``w_y * sum_j BCE(z_j, t_j)`` per sample."""
    return _sigmoid_family(logits, target, weight, gamma=None, alpha=None, reduction=reduction,
                           ignore_index=ignore_index, sample_weight=sample_weight)


def sigmoid_focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *, gamma: float = 2.0,
                       alpha: Optional[float] = None, reduction: str = "mean", ignore_index: int = -100,
                       sample_weight: Optional[Tensor] = None) -> Tensor:
    """Sigmoid focal loss ``w_y * sum_j alpha_t (1 - p_t)^gamma BCE(z_j, t_j)`` (modulator in log space)."""
    return _sigmoid_family(logits, target, weight, gamma=gamma, alpha=alpha, reduction=reduction,
                           ignore_index=ignore_index, sample_weight=sample_weight)

"""Loss modules. Per-class weights, offsets and margins are buffers, so ``.to(device)`` moves them."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import functional as F
from .weights import CountsLike, class_balanced_weights, ldam_margins, log_prior

Tensor = torch.Tensor

__all__ = [
    "SoftmaxCrossEntropyLoss",
    "SoftmaxFocalLoss",
    "SigmoidCrossEntropyLoss",
    "SigmoidFocalLoss",
    "ClassBalancedLoss",
    "BalancedSoftmaxLoss",
    "LogitAdjustedLoss",
    "LDAMLoss",
    "LOSS_TYPES",
]

LOSS_TYPES = ("softmax", "sigmoid", "focal", "softmax_focal")


def _optional_buffer(module: nn.Module, name: str, value) -> None:
    module.register_buffer(name, None if value is None else torch.as_tensor(value, dtype=torch.float32).clone())


def _check_num_classes(buffer_name: str, buffer: Optional[Tensor], logits: Tensor, source: str) -> None:
    if buffer is not None and logits.dim() >= 2 and logits.shape[1] != buffer.shape[0]:
        raise ValueError(f"{source} has {buffer.shape[0]} classes but logits have C = {logits.shape[1]} "
                         f"(shape {tuple(logits.shape)})")


class _NotScriptable:
    """``torch.jit.script`` of a cbbench module (or of a model holding one) fails with a clear error
    instead of TorchScript's complaint about the first Python construct it meets in ``forward``."""

    def __prepare_scriptable__(self):
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        raise RuntimeError(f"{name} cannot be compiled by torch.jit.script: its forward runs Python argument "
                           "checks and compiled kernels outside TorchScript; use torch.compile (the losses are "
                           "registered ops), or torch.jit.trace / torch.export")


class _WeightedLoss(_NotScriptable, nn.Module):
    """Holds the options every loss module shares. ``sync_normalizer=True`` (data parallel training):
    the reduction divides by the divisor all-reduced over ``process_group`` (default: the world); see
    :mod:`cbbench.distributed`."""

    def __init__(self, weight=None, reduction: str = "mean", ignore_index: int = -100, backend: str = "auto",
                 sync_normalizer: bool = False, process_group=None):
        super().__init__()
        _optional_buffer(self, "weight", weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.backend = backend
        self.sync_normalizer = bool(sync_normalizer)
        self.process_group = process_group

    def _options(self) -> dict:
        return dict(reduction=self.reduction, ignore_index=self.ignore_index, backend=self.backend,
                    sync_normalizer=self.sync_normalizer, process_group=self.process_group)

    def extra_repr(self) -> str:
        sync = ", sync_normalizer=True" if self.sync_normalizer else ""
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, backend={self.backend!r}{sync}"


class SoftmaxCrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`cbbench.functional.softmax_cross_entropy`."""

    def __init__(self, weight=None, *, reduction: str = "mean", ignore_index: int = -100,
                 label_smoothing: float = 0.0, logit_offset=None, target_margin=None, scale: float = 1.0,
                 backend: str = "auto", sync_normalizer: bool = False, process_group=None):
        super().__init__(weight, reduction, ignore_index, backend, sync_normalizer, process_group)
        _optional_buffer(self, "logit_offset", logit_offset)
        _optional_buffer(self, "target_margin", target_margin)
        self.label_smoothing = label_smoothing
        self.scale = scale

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return F.softmax_cross_entropy(logits, target, self.weight, label_smoothing=self.label_smoothing,
                                       logit_offset=self.logit_offset, target_margin=self.target_margin,
                                       scale=self.scale, sample_weight=sample_weight, **self._options())


class SoftmaxFocalLoss(_WeightedLoss):
    """Module form of :func:`cbbench.functional.softmax_focal_loss` (``alpha``: a number or one value per
    class, held as a buffer)."""

    def __init__(self, weight=None, *, gamma: float = 2.0, alpha=None, reduction: str = "mean",
                 ignore_index: int = -100, backend: str = "auto", sync_normalizer: bool = False, process_group=None):
        super().__init__(weight, reduction, ignore_index, backend, sync_normalizer, process_group)
        self.gamma = gamma
        _optional_buffer(self, "alpha", alpha)

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return F.softmax_focal_loss(logits, target, self.weight, gamma=self.gamma, alpha=self.alpha,
                                    sample_weight=sample_weight, **self._options())

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, " + super().extra_repr()


class SigmoidCrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`cbbench.functional.sigmoid_cross_entropy`."""

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return F.sigmoid_cross_entropy(logits, target, self.weight, sample_weight=sample_weight, **self._options())


class SigmoidFocalLoss(_WeightedLoss):
    """Module form of :func:`cbbench.functional.sigmoid_focal_loss`."""

    def __init__(self, weight=None, *, gamma: float = 2.0, alpha: Optional[float] = None, reduction: str = "mean",
                 ignore_index: int = -100, backend: str = "auto", sync_normalizer: bool = False, process_group=None):
        super().__init__(weight, reduction, ignore_index, backend, sync_normalizer, process_group)
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return F.sigmoid_focal_loss(logits, target, self.weight, gamma=self.gamma, alpha=self.alpha,
                                    sample_weight=sample_weight, **self._options())

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, " + super().extra_repr()


class ClassBalancedLoss(_NotScriptable, nn.Module):
    """Class-balanced loss (Cui et al., CVPR 2019) from whole-training-set class counts.

    ``loss_type`` is ``"softmax"``, ``"sigmoid"``, ``"focal"`` (sigmoid focal with ``gamma``) or
    ``"softmax_focal"`` (softmax focal with ``gamma``). The per-class weights ``(1 - beta) / (1 - beta^n_c)``,
    normalised to sum to C, are the buffer ``weight``. ``forward(logits, target, sample_weight=None)``.
    """

    def __init__(self, samples_per_class: CountsLike, beta: float = 0.9999, loss_type: str = "softmax",
                 gamma: float = 2.0, reduction: str = "mean", empty: str = "raise", backend: str = "auto",
                 ignore_index: int = -100, sync_normalizer: bool = False, process_group=None):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        gamma = F._check_real(gamma, "gamma", "ClassBalancedLoss", low=0.0)
        self.register_buffer("weight", class_balanced_weights(samples_per_class, beta, empty=empty))
        self.beta = float(beta)
        self.loss_type = loss_type
        self.gamma = gamma
        self.reduction = reduction
        self.backend = backend
        self.ignore_index = ignore_index
        self.sync_normalizer = bool(sync_normalizer)
        self.process_group = process_group

    def set_weight(self, weight: Tensor) -> None:
        """Replace the class weights in place (e.g. deferred re-weighting switches them on mid-training):
        a (C,) vector, or a scalar for the same weight on every class."""
        try:
            new = torch.as_tensor(weight, dtype=self.weight.dtype, device=self.weight.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"set_weight: weight must be a (C,) vector of numbers, got "
                            f"{type(weight).__name__}") from exc
        if new.dim() != 0 and tuple(new.shape) != tuple(self.weight.shape):
            raise ValueError(f"set_weight: weight must have shape ({self.weight.numel()},) (one value per class) "
                             f"or be a scalar, got {tuple(new.shape)}")
        self.weight.copy_(new)

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        _check_num_classes("weight", self.weight, logits, "samples_per_class")
        options = dict(reduction=self.reduction, ignore_index=self.ignore_index, backend=self.backend,
                       sync_normalizer=self.sync_normalizer, process_group=self.process_group,
                       sample_weight=sample_weight)
        if self.loss_type == "softmax":
            return F.softmax_cross_entropy(logits, target, self.weight, **options)
        if self.loss_type == "sigmoid":
            return F.sigmoid_cross_entropy(logits, target, self.weight, **options)
        if self.loss_type == "softmax_focal":
            return F.softmax_focal_loss(logits, target, self.weight, gamma=self.gamma, **options)
        return F.sigmoid_focal_loss(logits, target, self.weight, gamma=self.gamma, **options)

    def extra_repr(self) -> str:
        return (f"num_classes={self.weight.numel()}, beta={self.beta}, loss_type={self.loss_type!r}, "
                f"gamma={self.gamma}, reduction={self.reduction!r}, ignore_index={self.ignore_index}")


class _CountsSoftmaxLoss(SoftmaxCrossEntropyLoss):
    """A softmax loss whose adjustments come from class counts; checks C against them."""

    def forward(self, logits: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        vec = self.logit_offset if self.logit_offset is not None else self.target_margin
        _check_num_classes("counts", vec, logits, "samples_per_class")
        return super().forward(logits, target, sample_weight)


class BalancedSoftmaxLoss(_CountsSoftmaxLoss):
    """Balanced Softmax (Ren et al. 2020): ``CE(z + log n, y)``, held as ``log pi`` (the same softmax)."""

    def __init__(self, samples_per_class: CountsLike, weight=None, *, reduction: str = "mean",
                 ignore_index: int = -100, backend: str = "auto",
                 sync_normalizer: bool = False, process_group=None):
        super().__init__(weight, reduction=reduction, ignore_index=ignore_index,
                         logit_offset=log_prior(samples_per_class), backend=backend,
                         sync_normalizer=sync_normalizer, process_group=process_group)


class LogitAdjustedLoss(_CountsSoftmaxLoss):
    """Logit-adjusted loss (Menon et al. 2021): ``CE(z + tau * log pi, y)``."""

    def __init__(self, samples_per_class: CountsLike, tau: float = 1.0, weight=None, *, reduction: str = "mean",
                 ignore_index: int = -100, backend: str = "auto",
                 sync_normalizer: bool = False, process_group=None):
        tau = F._check_real(tau, "tau", "LogitAdjustedLoss")
        super().__init__(weight, reduction=reduction, ignore_index=ignore_index,
                         logit_offset=tau * log_prior(samples_per_class), backend=backend,
                         sync_normalizer=sync_normalizer, process_group=process_group)
        self.tau = tau


class LDAMLoss(_CountsSoftmaxLoss):
    """LDAM (Cao et al. 2019): ``CE(s * (z - Delta_y e_y), y)``, ``Delta_c ~ n_c^(-1/4)``, largest ``max_margin``."""

    def __init__(self, samples_per_class: CountsLike, max_margin: float = 0.5, scale: float = 30.0, weight=None, *,
                 reduction: str = "mean", ignore_index: int = -100, backend: str = "auto",
                 sync_normalizer: bool = False, process_group=None):
        super().__init__(weight, reduction=reduction, ignore_index=ignore_index,
                         target_margin=ldam_margins(samples_per_class, max_margin), scale=scale, backend=backend,
                         sync_normalizer=sync_normalizer, process_group=process_group)


class ClassBalancedLinearLoss(_NotScriptable, nn.Module):
    """A classifier head (``in_features`` -> C) trained with a class-balanced loss, fused so that the
    (N, C) logits never exist: ``forward(hidden, target)`` is the loss of ``self.linear(hidden)``,
    computed by :func:`cbbench.functional.linear_softmax_cross_entropy` (``loss_type="softmax"``),
    :func:`~cbbench.functional.linear_softmax_focal_loss` (``"softmax_focal"``),
    :func:`~cbbench.functional.linear_sigmoid_cross_entropy` (``"sigmoid"``) or
    :func:`~cbbench.functional.linear_sigmoid_focal_loss` (``"focal"``) in row chunks.

    ``self.linear`` is an ordinary ``nn.Linear`` (use it for predictions: ``module.linear(hidden)``);
    the class-balanced weights are the buffer ``weight``, as in :class:`ClassBalancedLoss`. For the
    sigmoid and focal losses the bias starts at ``-log(C - 1)`` (Cui et al.: every class starts at
    prior 1/C instead of 1/2). ``chunk_size`` / ``memory_budget``: see
    :func:`~cbbench.functional.linear_softmax_cross_entropy`.
    """

    def __init__(self, in_features: int, samples_per_class: CountsLike, beta: float = 0.9999,
                 loss_type: str = "softmax", gamma: float = 2.0, *, bias: bool = True, reduction: str = "mean",
                 empty: str = "raise", ignore_index: int = -100, chunk_size: Optional[int] = None,
                 memory_budget: Optional[int] = None, backend: str = "auto", sync_normalizer: bool = False,
                 process_group=None, device=None, dtype=None):
        super().__init__()
        self.loss = ClassBalancedLoss(samples_per_class, beta, loss_type, gamma, reduction=reduction, empty=empty,
                                      backend=backend, ignore_index=ignore_index, sync_normalizer=sync_normalizer,
                                      process_group=process_group)
        num_classes = self.loss.weight.numel()
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        if bias and loss_type in ("sigmoid", "focal") and num_classes > 1:
            with torch.no_grad():
                self.linear.bias.fill_(-math.log(num_classes - 1))
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget

    @property
    def weight(self) -> Tensor:
        """The class-balanced weights (C,) (the buffer of ``self.loss``)."""
        return self.loss.weight

    def set_weight(self, weight: Tensor) -> None:
        """Replace the class weights in place (see :meth:`ClassBalancedLoss.set_weight`)."""
        self.loss.set_weight(weight)

    def forward(self, hidden: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        loss = self.loss
        options = dict(linear_bias=self.linear.bias, reduction=loss.reduction, ignore_index=loss.ignore_index,
                       sample_weight=sample_weight, chunk_size=self.chunk_size, memory_budget=self.memory_budget,
                       backend=loss.backend, sync_normalizer=loss.sync_normalizer, process_group=loss.process_group)
        if loss.loss_type == "softmax":
            return F.linear_softmax_cross_entropy(hidden, self.linear.weight, target, loss.weight, **options)
        if loss.loss_type == "softmax_focal":
            return F.linear_softmax_focal_loss(hidden, self.linear.weight, target, loss.weight, gamma=loss.gamma,
                                               **options)
        if loss.loss_type == "sigmoid":
            return F.linear_sigmoid_cross_entropy(hidden, self.linear.weight, target, loss.weight, **options)
        return F.linear_sigmoid_focal_loss(hidden, self.linear.weight, target, loss.weight, gamma=loss.gamma, **options)

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}, memory_budget={self.memory_budget}"


__all__.append("ClassBalancedLinearLoss")

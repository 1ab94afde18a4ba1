"""Long-tail methods by name: a loss from :mod:`cbbench.nn` (so the fused kernels train), a sampling
schedule, optional deferred re-weighting, and an optional post-hoc logit adjustment.

All per-class quantities come from the whole training set's class counts. Deferred re-weighting (DRW,
Cao et al. 2019) and deferred re-sampling (DRS) switch at ``switch_epoch``, the epoch of the last big
learning-rate decay (160 of 200 in the paper recipe); DRW switches to class-balanced weights with
``beta`` (0.9999 by default, as in the LDAM code).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import nn as cbnn
from ..weights import class_balanced_weights, class_weights, log_prior

__all__ = ["MethodSpec", "METHOD_SPECS", "METHODS", "BETA_FAMILIES", "Method", "get_spec"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    loss: str = "softmax"  # softmax | sigmoid | focal | softmax_focal | balanced_softmax | logit_adjustment | ldam
    # class_weights scheme applied from the start: none | inverse | sqrt_inverse | cb | measured (1/E_c, E_c
    # measured from features before training or at the switch epoch: cbbench/harness/measured.py)
    weighting: str = "none"
    deferred_weighting: bool = False  # DRW: no weights until switch_epoch, then CB weights
    sampling: str = "instance"  # see cbbench.harness.samplers.SAMPLINGS
    posthoc_adjustment: bool = False  # predict argmax(z - tau * log pi)

    @property
    def normed_classifier(self) -> bool:
        return self.loss == "ldam"

    @property
    def sigmoid_family(self) -> bool:
        return self.loss in ("sigmoid", "focal")

    @property
    def switches(self) -> bool:
        return self.deferred_weighting or self.sampling == "deferred"

    @property
    def uses_beta(self) -> bool:
        """Whether the class-balanced beta changes what the method does (CB weights or CB sampling)."""
        return self.weighting == "cb" or self.deferred_weighting or self.sampling == "cb"

    @property
    def uses_gamma(self) -> bool:
        """Whether the focal gamma changes what the method does (the focal losses)."""
        return self.loss in ("focal", "softmax_focal")

    @property
    def uses_tau(self) -> bool:
        """Whether the logit-adjustment tau changes what the method does (in the loss or post hoc)."""
        return self.loss == "logit_adjustment" or self.posthoc_adjustment


METHOD_SPECS = {s.name: s for s in (
    MethodSpec("softmax", "softmax cross-entropy"),
    MethodSpec("sigmoid", "sigmoid cross-entropy", loss="sigmoid"),
    MethodSpec("focal", "sigmoid focal loss", loss="focal"),
    MethodSpec("cb_softmax", "class-balanced softmax CE (Cui et al.)", weighting="cb"),
    MethodSpec("cb_sigmoid", "class-balanced sigmoid CE (Cui et al.)", loss="sigmoid", weighting="cb"),
    MethodSpec("cb_focal", "class-balanced focal loss (Cui et al.)", loss="focal", weighting="cb"),
    MethodSpec("softmax_focal", "softmax focal loss (LDAM-DRW's FocalLoss)", loss="softmax_focal"),
    MethodSpec("cb_softmax_focal", "class-balanced softmax focal loss", loss="softmax_focal", weighting="cb"),
    MethodSpec("inverse_freq", "softmax CE weighted by 1/n", weighting="inverse"),
    MethodSpec("inverse_freq_sigmoid", "sigmoid CE weighted by 1/n", loss="sigmoid", weighting="inverse"),
    MethodSpec("inverse_freq_focal", "sigmoid focal loss weighted by 1/n", loss="focal", weighting="inverse"),
    MethodSpec("sqrt_inverse", "softmax CE weighted by 1/sqrt(n)", weighting="sqrt_inverse"),
    MethodSpec("measured_softmax", "softmax CE weighted by 1/E, E measured from features", weighting="measured"),
    MethodSpec("measured_sigmoid", "sigmoid CE weighted by 1/E, E measured from features", loss="sigmoid",
               weighting="measured"),
    MethodSpec("measured_focal", "sigmoid focal loss weighted by 1/E, E measured from features", loss="focal",
               weighting="measured"),
    MethodSpec("class_balanced_sampling", "softmax CE, class-balanced sampling (q=0)", sampling="class_balanced"),
    MethodSpec("sqrt_sampling", "softmax CE, square-root sampling (q=1/2)", sampling="sqrt"),
    MethodSpec("progressive_sampling", "softmax CE, progressively balanced sampling", sampling="progressive"),
    MethodSpec("cb_sampling", "softmax CE, sampling by class-balanced weight", sampling="cb"),
    MethodSpec("balanced_softmax", "Balanced Softmax, CE(z + log n)", loss="balanced_softmax"),
    MethodSpec("logit_adjustment", "logit-adjusted loss, CE(z + tau log pi)", loss="logit_adjustment"),
    MethodSpec("logit_adjustment_posthoc", "softmax CE, predict argmax(z - tau log pi)", posthoc_adjustment=True),
    MethodSpec("ldam", "LDAM margin loss, cosine classifier, s=30", loss="ldam"),
    MethodSpec("ldam_drw", "LDAM + deferred CB re-weighting", loss="ldam", deferred_weighting=True),
    MethodSpec("cb_drw", "softmax CE + deferred CB re-weighting", deferred_weighting=True),
    MethodSpec("drs", "softmax CE + deferred class-balanced re-sampling", sampling="deferred"),
)}

METHODS = tuple(METHOD_SPECS)

# The beta experiment of Cui et al. per loss: (no weighting, class-balanced weighting, inverse frequency).
# Class-balanced weights run from beta = 0 (all weights 1: the unweighted loss) to beta -> 1 (1/n).
BETA_FAMILIES = {
    "softmax": ("softmax", "cb_softmax", "inverse_freq"),
    "sigmoid": ("sigmoid", "cb_sigmoid", "inverse_freq_sigmoid"),
    "focal": ("focal", "cb_focal", "inverse_freq_focal"),
}


def get_spec(name: str) -> MethodSpec:
    try:
        return METHOD_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


class Method:
    """A method bound to a training set's class counts: its loss module and per-epoch switches.
    ``sync_normalizer=True`` under data parallelism (see :mod:`cbbench.distributed`)."""

    def __init__(self, name: str, counts, *, beta: float = 0.9999, gamma: float = 1.0, tau: float = 1.0,
                 ldam_max_margin: float = 0.5, ldam_scale: float = 30.0, switch_epoch: Optional[int] = None,
                 backend: str = "auto", sync_normalizer: bool = False, measured_deferred: bool = False):
        self.spec = get_spec(name)
        self.counts = torch.as_tensor(counts, dtype=torch.float64)
        if (self.counts <= 0).any():
            empty = torch.nonzero(self.counts <= 0).flatten().tolist()
            raise ValueError(f"method {name!r}: class(es) {empty} have no training example; every class needs "
                             "at least one (lower the imbalance)")
        if self.spec.switches and switch_epoch is None:
            raise ValueError(f"method {name!r} needs switch_epoch")
        self.beta, self.gamma, self.tau = beta, gamma, tau
        self.switch_epoch = switch_epoch
        num_classes = self.counts.numel()
        spec = self.spec
        weight = None
        if spec.deferred_weighting or spec.weighting == "measured":  # measured: set by cbbench/harness/measured.py
            weight = torch.ones(num_classes)
        elif spec.weighting != "none":
            weight = class_weights(self.counts, spec.weighting, beta=beta)
        # DRW divides by the sum of the applied weights, as the LDAM-DRW code's
        # F.cross_entropy(weight=w) does: with the paper's "mean" (sum / N) the switch to weights that
        # sum to C would also shrink the step by the batch's mean weight (~0.2 on CIFAR-10-LT IF 100).
        # Measured weights from the run's own checkpoint switch in the same way (measured_deferred).
        deferred = spec.deferred_weighting or (measured_deferred and spec.weighting == "measured")
        self.reduction = "weighted_mean" if deferred else "mean"
        # sync_normalizer (data parallel training): the reduction's divisor is all-reduced over the ranks,
        # so DDP's averaged gradient is that of the global batch (cbbench/distributed.py)
        opts = dict(reduction=self.reduction, backend=backend, sync_normalizer=sync_normalizer)
        if spec.loss == "softmax":
            self.loss: nn.Module = cbnn.SoftmaxCrossEntropyLoss(weight, **opts)
        elif spec.loss == "sigmoid":
            self.loss = cbnn.SigmoidCrossEntropyLoss(weight, **opts)
        elif spec.loss == "focal":
            self.loss = cbnn.SigmoidFocalLoss(weight, gamma=gamma, **opts)
        elif spec.loss == "softmax_focal":
            self.loss = cbnn.SoftmaxFocalLoss(weight, gamma=gamma, **opts)
        elif spec.loss == "balanced_softmax":
            self.loss = cbnn.BalancedSoftmaxLoss(self.counts, weight, **opts)
        elif spec.loss == "logit_adjustment":
            self.loss = cbnn.LogitAdjustedLoss(self.counts, tau, weight, **opts)
        else:
            self.loss = cbnn.LDAMLoss(self.counts, ldam_max_margin, ldam_scale, weight, **opts)
        self._drw_weight = class_balanced_weights(self.counts, beta) if spec.deferred_weighting else None
        self.prediction_offset = -tau * log_prior(self.counts) if spec.posthoc_adjustment else None

    def start_epoch(self, epoch: int) -> None:
        """Apply the epoch's loss switches in place (the loss buffers keep their storage, so a captured
        CUDA graph sees the new weights)."""
        if self._drw_weight is not None:
            new = self._drw_weight if epoch >= self.switch_epoch else torch.ones_like(self._drw_weight)
            self.loss.weight.copy_(new)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted classes (post-hoc logit adjustment where the method asks for it)."""
        if self.prediction_offset is not None:
            logits = logits + self.prediction_offset.to(logits.device, logits.dtype)
        return logits.argmax(dim=1)

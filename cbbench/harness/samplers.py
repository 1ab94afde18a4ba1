"""Re-sampling baselines (Kang et al., ICLR 2020) on torch's samplers.

Class j is drawn with probability ``p_j = n_j^q / sum_k n_k^q``: q = 1 instance-balanced (plain
shuffling), q = 0 class-balanced, q = 1/2 square-root. Progressively balanced sampling moves from the
instance-balanced to the class-balanced distribution over training,
``p(t) = (1 - t/T) p^IB + (t/T) p^CB`` for epoch ``t`` of ``T``. Class-balanced-weighted sampling
draws each example with probability proportional to the class-balanced weight of its class (Cui et
al.), so class j gets ``p_j ~ n_j w_j``. A class distribution becomes per-example weights ``p_j / n_j``
for :class:`torch.utils.data.WeightedRandomSampler` (with replacement, N draws per epoch).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from ..weights import class_balanced_weights

__all__ = ["SAMPLINGS", "power_class_probs", "progressive_class_probs", "cb_class_probs", "example_weights",
           "SamplingSchedule"]

# "instance": shuffling without replacement (q = 1); the others draw with replacement
SAMPLINGS = ("instance", "class_balanced", "sqrt", "progressive", "cb", "deferred")


def _counts(counts) -> np.ndarray:
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or (n < 0).any() or not np.isfinite(n).all():
        raise ValueError(f"counts must be a non-empty 1-D array of non-negative numbers, got {counts!r}")
    if n.sum() == 0:
        raise ValueError("counts: every class is empty")
    return n


def power_class_probs(counts, q: float) -> np.ndarray:
    """``p_j = n_j^q / sum n^q`` over the non-empty classes (empty classes get 0)."""
    n = _counts(counts)
    present = n > 0
    raw = np.zeros_like(n)
    raw[present] = n[present] ** float(q)
    return raw / raw.sum()


def progressive_class_probs(counts, epoch: int, total_epochs: int) -> np.ndarray:
    """Progressively balanced class distribution at 0-based ``epoch`` of ``total_epochs``."""
    if total_epochs < 1 or not 0 <= epoch < total_epochs:
        raise ValueError(f"epoch must be in [0, total_epochs) with total_epochs >= 1, got {epoch} of {total_epochs}")
    t = epoch / total_epochs
    return (1.0 - t) * power_class_probs(counts, 1.0) + t * power_class_probs(counts, 0.0)


def cb_class_probs(counts, beta: float) -> np.ndarray:
    """Class distribution of class-balanced-weighted sampling: ``p_j ~ n_j * w_j(beta)``."""
    n = _counts(counts)
    w = class_balanced_weights(n, beta, empty="zero").double().numpy()
    raw = n * w
    return raw / raw.sum()


def example_weights(targets: np.ndarray, class_probs: np.ndarray) -> torch.Tensor:
    """Per-example sampling weights ``p_y / n_y`` (float64) that draw class j with probability ``p_j``."""
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=len(class_probs)).astype(np.float64)
    if len(counts) != len(class_probs):
        raise ValueError(f"targets hold class {targets.max()} but class_probs has {len(class_probs)} entries")
    per_class = np.divide(class_probs, counts, out=np.zeros_like(class_probs), where=counts > 0)
    return torch.from_numpy(per_class[targets])


class SamplingSchedule:
    """The sampler of each epoch for one of :data:`SAMPLINGS`.

    ``"deferred"`` (DRS) shuffles instance-balanced until ``switch_epoch`` and samples class-balanced
    from then on.
    """

    def __init__(self, kind: str, targets, num_classes: int, total_epochs: int, *, beta: float = 0.9999,
                 switch_epoch: Optional[int] = None):
        if kind not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {kind!r}")
        if kind == "deferred" and switch_epoch is None:
            raise ValueError("deferred re-sampling needs switch_epoch")
        self.kind = kind
        self.targets = np.asarray(targets, dtype=np.int64)
        self.counts = np.bincount(self.targets, minlength=num_classes)
        self.total_epochs = int(total_epochs)
        self.beta = beta
        self.switch_epoch = switch_epoch

    def class_probs(self, epoch: int) -> np.ndarray:
        """Probability of drawing each class at ``epoch``."""
        kind = self.kind
        if kind == "deferred":
            kind = "instance" if epoch < self.switch_epoch else "class_balanced"
        if kind == "instance":
            return power_class_probs(self.counts, 1.0)
        if kind == "class_balanced":
            return power_class_probs(self.counts, 0.0)
        if kind == "sqrt":
            return power_class_probs(self.counts, 0.5)
        if kind == "progressive":
            return progressive_class_probs(self.counts, epoch, self.total_epochs)
        return cb_class_probs(self.counts, self.beta)

    def sampler(self, epoch: int, generator: torch.Generator) -> Sampler:
        """A sampler of ``len(targets)`` example indices for ``epoch``."""
        n = len(self.targets)
        if self.kind == "instance" or (self.kind == "deferred" and epoch < self.switch_epoch):
            return RandomSampler(range(n), generator=generator)
        weights = example_weights(self.targets, self.class_probs(epoch))
        return WeightedRandomSampler(weights, num_samples=n, replacement=True, generator=generator)

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """The example indices of ``epoch`` in draw order (int64 CPU tensor)."""
        return torch.as_tensor(list(self.sampler(epoch, generator)), dtype=torch.int64)

"""Re-sampling baselines (Kang et al., ICLR 2020) on torch's samplers.

Class j is drawn with probability ``p_j = n_j^q / sum_k n_k^q``: q = 1 instance-balanced (plain
shuffling), q = 0 class-balanced, q = 1/2 square-root. Progressively balanced sampling moves from the
instance-balanced to the class-balanced distribution over training,
``p(t) = (1 - t/T) p^IB + (t/T) p^CB`` for epoch ``t`` of ``T``. Class-balanced-weighted sampling
draws each example with probability proportional to the class-balanced weight of its class (Cui et
al.), so class j gets ``p_j ~ n_j w_j``. A class distribution becomes per-example weights ``p_j / n_j``
for :class:`torch.utils.data.WeightedRandomSampler` (with replacement, N draws per epoch).

Every epoch's draws come from a generator seeded by (seed, epoch) alone (:func:`epoch_seed`), so one
epoch's stream can be drawn on its own, in any order, by any process. Under data parallelism
(:class:`GlobalBatchSampler`) each of the W ranks draws the same global stream, cuts it into the same
global batches and takes its share of each (:func:`cbbench.distributed.batch_share`): 1 rank and W ranks
train on the same global batches.
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from .. import distributed
from ..weights import class_balanced_weights

__all__ = ["SAMPLINGS", "power_class_probs", "progressive_class_probs", "cb_class_probs", "example_weights",
           "epoch_seed", "SamplingSchedule", "GlobalBatchSampler"]

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


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of ``epoch`` in a run seeded ``seed``: a hash of the pair (NumPy's
    ``SeedSequence``), so neighbouring runs never share an epoch's draws (``DistributedSampler`` seeds
    epoch e with seed + e, which gives seed 1's epoch 0 the draws of seed 0's epoch 1)."""
    if isinstance(seed, bool) or isinstance(epoch, bool) or int(seed) != seed or int(epoch) != epoch \
            or seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be whole numbers >= 0, got seed {seed!r}, epoch {epoch!r}")
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    return int(state) & (2 ** 63 - 1)


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

    def epoch_indices(self, epoch: int, seed: int) -> torch.Tensor:
        """The example indices of ``epoch`` in draw order (int64 CPU tensor), drawn from a generator
        seeded by :func:`epoch_seed` ``(seed, epoch)``: the same stream in every process."""
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        return torch.as_tensor(list(self.sampler(epoch, generator)), dtype=torch.int64)


class GlobalBatchSampler(Sampler):
    """A batch sampler for data parallel training: rank r's share of each global batch of one stream.

    Epoch e's stream is ``schedule.epoch_indices(e, seed)``, the same on every rank whatever the world
    size W; it is cut into global batches of ``batch_size`` (the last one shorter unless ``drop_last``)
    and each rank takes :func:`cbbench.distributed.batch_share` of every global batch (rows r, r + W, ...;
    B / W of them when W divides B). Every rank therefore has the same number of batches, the ranks'
    batches of a step together are the global batch one process would train on, and a rank whose share
    of a short last batch is empty gets an empty batch (the harness still steps on it, so the ranks'
    collectives stay in step). As with ``DistributedSampler``, call :meth:`set_epoch` before each epoch;
    without it every epoch repeats the draws of epoch 0.

    Iterating yields lists of indices (``DataLoader(dataset, batch_sampler=...)``; a ``DataLoader``
    cannot collate an empty batch, so pass ``drop_last=True`` when the last global batch may have fewer
    rows than there are ranks); :meth:`local_batches` gives int64 tensors.
    ``num_replicas`` and ``rank`` default to those of the default process group (1 and 0 without one).
    """

    def __init__(self, schedule: SamplingSchedule, batch_size: int, *, seed: int = 0,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        self.num_replicas = distributed.world_size() if num_replicas is None else int(num_replicas)
        self.rank = distributed.rank() if rank is None else int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank {self.rank} of {self.num_replicas}")
        self.schedule, self.batch_size, self.seed = schedule, int(batch_size), int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose stream the next iteration draws (and whose class distribution it uses)."""
        self.epoch = int(epoch)

    def global_batches(self) -> List[torch.Tensor]:
        """The current epoch's global batches (int64 CPU tensors), the same on every rank."""
        stream = self.schedule.epoch_indices(self.epoch, self.seed)
        n = len(stream)
        stop = n - n % self.batch_size if self.drop_last else n
        return [stream[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
        return distributed.batch_share(batch, self.rank, self.num_replicas)

    def local_batches(self) -> List[torch.Tensor]:
        """This rank's share of each of the current epoch's global batches (int64 CPU tensors)."""
        return [self.share(batch) for batch in self.global_batches()]

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.local_batches():
            yield batch.tolist()

    def __len__(self) -> int:
        n = len(self.schedule.targets)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

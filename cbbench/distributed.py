"""Class-balanced losses under data parallelism (DDP, torchrun): the normaliser and the class counts.

DDP averages gradients over the W ranks of a group. A rank's loss ``S_r / d_r`` (its own sum over its
own divisor) then gives the single-process gradient of the global batch only if every ``d_r`` equals
``D / W``, ``D = sum_r d_r`` -- not so whenever ranks differ in batch size, ignored rows, positives or
weights. With ``sync_normalizer=True`` a loss divides its local sum by ``D / W`` instead, ``D``
all-reduced on the device (no host synchronisation; NCCL all-reduce is CUDA-graph capturable):

    rank loss = S_r * W / D        ->  after DDP's averaging: grad = sum_r grad S_r / D = grad (S / D)

``"sum"`` and ``"none"`` have no divisor and are multiplied by W (the average of W S_r's gradients is
the gradient of the global sum). The **forward value** of a synchronised loss is therefore the rank's
share times W: its mean over the ranks is the global loss (what a single process would report), and
a rank's own value is not the global loss.

Class counts are always those of the whole training set: :func:`broadcast_counts` takes them from one
rank and :func:`check_counts_agree` verifies every rank computed the same -- never weights from a
batch or a shard.

Data: a training batch is one *global* batch drawn as one process would draw it, of which each rank
takes its share (:func:`batch_share`: rows ``r, r + W, ...``); evaluation splits the test set into
contiguous, unpadded shards (:func:`even_shard`; ``DistributedSampler`` pads with repeated examples,
which biases per-class accuracy) and sums per-class tallies over the ranks (:func:`all_reduce_sum`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from .shapes import finish_divisor, local_divisor, rows
from .weights import CountsLike, as_counts

Tensor = torch.Tensor

__all__ = ["is_distributed", "world_size", "rank", "synchronised", "broadcast_counts", "check_counts_agree",
           "batch_share", "even_shard", "all_reduce_sum", "broadcast_object", "ignore_accelerate_padding"]


def is_distributed(group=None) -> bool:
    """Whether torch.distributed is initialised (and so a group to synchronise over exists)."""
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if is_distributed() else 0


def _local_divisor(logits: Tensor, target: Tensor, weight: Optional[Tensor], reduction: str,
                   ignore_index: int, sample_weight=None) -> Optional[Tensor]:
    """This rank's un-floored divisor of ``reduction``: the arguments of cbbench/shapes.py's local_divisor
    (the reference's formula) from the loss's own."""
    if reduction in ("sum", "none"):
        return None
    w = None if weight is None else torch.as_tensor(weight, device=logits.device)
    s = None if sample_weight is None else torch.as_tensor(sample_weight, device=logits.device).reshape(-1)
    if target.is_floating_point():
        t = rows(target)
        return local_divisor(reduction, multi_hot_target=t, column_weight=w, num_rows=t.shape[0], sample_weight=s)
    y = target.reshape(-1)
    valid = y != ignore_index
    row_weight = None
    if reduction == "weighted_mean":
        if w is not None:
            row_weight = w.to(torch.float64)[torch.where(valid, y, torch.zeros_like(y)).clamp(0, w.numel() - 1)]
        if s is not None:
            row_weight = s.to(torch.float64) if row_weight is None else row_weight * s.to(torch.float64)
    return local_divisor(reduction, valid=valid, row_weight=row_weight)


def _all_reduce_sum(t: Tensor, group) -> Tensor:
    if t.requires_grad:  # a learnable weight under "weighted_mean": keep the divisor differentiable
        import torch.distributed.nn.functional as dist_nn
        return dist_nn.all_reduce(t, group=group)
    t = t.detach().clone()
    dist.all_reduce(t, group=group)
    return t


def synchronised(loss_fn: Callable[..., Tensor], logits: Tensor, target: Tensor, weight, *, reduction: str,
                 ignore_index: int, process_group=None, **options) -> Tensor:
    """``loss_fn`` (a :mod:`cbbench.functional` loss) with the global normaliser: its local sum (or
    rows, for ``"none"``) times ``W / D`` -- see the module docstring. Without an initialised process
    group, W = 1 and D = the local divisor: the plain loss."""
    inner = "none" if reduction == "none" else "sum"
    loss = loss_fn(logits, target, weight, reduction=inner, ignore_index=ignore_index, **options)
    group = process_group
    size = world_size(group)
    local = _local_divisor(logits, target, weight, reduction, ignore_index, options.get("sample_weight"))
    if local is None:
        return loss * size if size != 1 else loss
    total = _all_reduce_sum(local, group) if size > 1 else local
    divisor = finish_divisor(reduction, total)
    return loss * (size / divisor).to(loss.dtype)


def broadcast_counts(counts: Optional[CountsLike], src: int = 0, group=None) -> Tensor:
    """Whole-training-set class counts as float64 (C,), computed on rank ``src`` and sent to all.

    Every other rank may pass ``None`` (or its own counts, which are replaced). Without an
    initialised process group, the counts themselves.
    """
    if not is_distributed():
        return as_counts(counts)
    device = _collective_device(group)
    if rank(group) == src:
        values = as_counts(counts).to(device)
        size = torch.tensor([values.numel()], dtype=torch.int64, device=device)
    else:
        values, size = None, torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src=_global_rank(src, group), group=group)
    if values is None:
        values = torch.empty(int(size.item()), dtype=torch.float64, device=device)
    dist.broadcast(values, src=_global_rank(src, group), group=group)
    return values.cpu()


def check_counts_agree(counts: CountsLike, group=None) -> Tensor:
    """Raise ``ValueError`` unless every rank holds the same class counts (they must come from the
    whole training set, not a shard); returns them as float64 (C,)."""
    values = as_counts(counts)
    if not is_distributed():
        return values
    device = _collective_device(group)
    mine = values.to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size(group))]
    dist.all_gather(sizes, torch.tensor([mine.numel()], dtype=torch.int64, device=device), group=group)
    if len({int(s.item()) for s in sizes}) != 1:
        raise ValueError(f"class counts differ across ranks: numbers of classes {[int(s.item()) for s in sizes]}")
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(low, high):
        bad = torch.nonzero(low != high).flatten().tolist()
        raise ValueError(f"class counts differ across ranks at class index {bad[:20]}: compute them from the "
                         "whole training set on every rank (or use broadcast_counts), never from a shard")
    return values


def _collective_device(group) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank(group_rank: int, group) -> int:
    if group is None:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def batch_share(batch: Tensor, rank_: int, world: int) -> Tensor:
    """Rank ``rank_``'s rows of a global batch of ``world`` ranks: rows ``rank_, rank_ + world, ...``.

    Shares differ in size by at most one (a rank gets none when the batch has fewer rows than ranks), and
    the ranks' shares together are the batch. With a batch size divisible by W, rank r's share of every
    global batch is what ``DistributedSampler(shuffle=False)`` over the whole stream would give a
    ``DataLoader`` of batch size B / W on that rank."""
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank {rank_} of {world}")
    return batch[rank_::world]


def even_shard(n: int, group=None) -> range:
    """This rank's contiguous share of ``n`` items, unpadded: ``[n r / W, n (r + 1) / W)``. Every item is
    on exactly one rank (shares differ in size by at most one)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size, r = world_size(group), rank(group)
    return range(n * r // size, n * (r + 1) // size)


def all_reduce_sum(values, group=None) -> Tensor:
    """The sum over the ranks of ``values`` (a tensor or array of numbers; a new tensor, on the CPU). Without an
    initialised process group, a copy of ``values``."""
    values = torch.as_tensor(values)
    if not is_distributed() or world_size(group) == 1:
        return values.clone()
    total = values.to(_collective_device(group), copy=True)
    dist.all_reduce(total, group=group)
    return total.cpu()


def broadcast_object(obj, src: int = 0, group=None):
    """``obj`` of rank ``src`` (any picklable object) on every rank; without a process group, ``obj``."""
    if not is_distributed() or world_size(group) == 1:
        return obj
    holder = [obj if rank(group) == src else None]
    dist.broadcast_object_list(holder, src=_global_rank(src, group), group=group,
                               device=_collective_device(group))
    return holder[0]


def ignore_accelerate_padding(target: Tensor, accelerator, ignore_index: int = -100) -> Tensor:
    """Class-index targets of a batch from a DataLoader prepared by Hugging Face Accelerate, with the rows
    Accelerate added to complete the last global batch set to ``ignore_index`` (they then count in no loss
    and, with ``sync_normalizer=True``, in no divisor: the run equals one process on the unpadded batches).

    With ``even_batches=True`` (Accelerate's default) the last global batch is completed with rows from the
    start of the data set; ``accelerator.gradient_state.remainder`` real rows come first in process order, so
    process p keeps the first ``remainder - p * len(target)`` of its rows. Every other batch is returned as
    it is. Data sets without ``len()`` (remainder -1) cannot be corrected. Checked against one process by
    ``tests/test_framework_recipes.py``; the recipe is in ``docs/frameworks.md``."""
    state = accelerator.gradient_state
    if not (state.end_of_dataloader and state.remainder > 0):
        return target
    n = target.shape[0]
    real = min(max(state.remainder - accelerator.process_index * n, 0), n)
    if real == n:
        return target
    target = target.clone()
    target[real:] = ignore_index
    return target

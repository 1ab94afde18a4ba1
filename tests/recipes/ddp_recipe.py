"""Plain DDP recipe for a cbbench loss (docs/frameworks.md, "Plain DDP with torchrun"), checked by
tests/test_framework_recipes.py. Start it with 2 processes:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/recipes/ddp_recipe.py OUT VARIANT...

Each VARIANT trains a fresh model (same initial weights) for EPOCHS epochs on ``common.dataset()`` (gloo, CPU)
and rank 0 appends its final parameters, the global loss and the global batch (data set rows) of every step to
the JSON-lines file OUT:

* ``default``       ``DistributedSampler`` (its defaults: shuffle, pad to a multiple of the world size): not
                    equal to one process
* ``recipe``        ``GlobalBatchSampler`` shares of each global batch (uneven shares, no padding)
* ``recipe-nosync`` ``recipe`` with ``sync_normalizer=False``: not equal (the check can fail)

Lines marked "bookkeeping" only record what the test compares; the rest is the recipe as the docs show it.
"""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import common  # tests/recipes/common.py: data, model, loss
import cbbench
from cbbench.distributed import broadcast_counts
from cbbench.harness.samplers import GlobalBatchSampler, SamplingSchedule


# the user's data and settings (train_set yields (x, y) pairs)
train_set, train_targets = common.dataset(), common.data()[1]
num_classes, global_batch_size, epochs, lr, seed = common.CLASSES, common.GLOBAL_BATCH, common.EPOCHS, common.LR, \
    common.SEED


# --- the recipe (docs/frameworks.md) ---------------------------------------------------------------------
def train(net, sync_normalizer=True):
    counts = broadcast_counts(torch.bincount(train_targets, minlength=num_classes) if dist.get_rank() == 0 else None)
    criterion = cbbench.ClassBalancedLoss(counts, beta=0.99, loss_type="focal", gamma=1.0,
                                          sync_normalizer=sync_normalizer)
    model = DistributedDataParallel(net)                               # + device_ids=[local_rank] on GPUs
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sampler = GlobalBatchSampler(SamplingSchedule("instance", train_targets, num_classes, epochs),
                                 global_batch_size, seed=seed)         # this rank's share of each global batch
    loader = DataLoader(train_set, batch_sampler=sampler)
    losses, batches = [], []                                           # bookkeeping
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()                                            # DDP: the global batch's gradient
            optimizer.step()
            global_loss = loss.detach().clone()
            dist.all_reduce(global_loss)
            global_loss /= dist.get_world_size()                       # the global batch's loss
            losses.append(global_loss.item())                          # bookkeeping
            batches.append(common.global_rows(x, y))                   # bookkeeping
    return model.module, losses, batches
# ----------------------------------------------------------------------------------------------------------


def train_distributed_sampler():
    """The usual DDP loader: DistributedSampler (shuffle=True, seed 0, padding) and PER_RANK rows per rank."""
    criterion = common.make_loss()
    model = DistributedDataParallel(common.make_net())
    optimizer = torch.optim.SGD(model.parameters(), lr=common.LR)
    sampler = DistributedSampler(common.dataset())
    loader = DataLoader(common.dataset(), batch_size=common.PER_RANK, sampler=sampler)
    losses, batches = [], []
    for epoch in range(common.EPOCHS):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.detach().clone()
            dist.all_reduce(value)
            losses.append(value.item() / dist.get_world_size())
            batches.append(common.global_rows(x, y))
    return model.module, losses, batches


def main(out, variants):
    dist.init_process_group("gloo")                                    # "nccl" on GPUs
    for name in variants:
        if name == "default":
            result = train_distributed_sampler()
        elif name in ("recipe", "recipe-nosync"):
            result = train(common.make_net(), sync_normalizer=name == "recipe")
        else:
            raise SystemExit(f"unknown variant {name!r}")
        if dist.get_rank() == 0:
            common.write_result(out, name, *result, world_size=dist.get_world_size(),
                                backend=dist.get_backend())
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

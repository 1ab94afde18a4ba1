"""Accelerate recipe for a cbbench loss (docs/frameworks.md, "Accelerate"), checked by
tests/test_framework_recipes.py. Start it with 2 processes (torchrun; see the docs for ``accelerate launch``):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/recipes/accelerate_recipe.py OUT VARIANT...

Each VARIANT trains a fresh model (same initial weights) for EPOCHS epochs on ``common.dataset()`` and rank 0
appends its final parameters, the global loss and the global batch (data set rows) of every step to the
JSON-lines file OUT:

* ``default``       a prepared DataLoader (shuffle=False) as Accelerate pads it: not equal to one process
* ``recipe``        the same, Accelerate's padded rows marked ignored (``ignore_padding``)
* ``recipe-nosync`` ``recipe`` with ``sync_normalizer=False``: not equal (the check can fail)
* ``recipe-shuffle`` ``recipe`` with ``shuffle=True``
* ``recipe-split``  ``recipe`` with ``split_batches=True`` (the loader's batch is the global batch)
* ``sampler``       no prepared DataLoader: ``GlobalBatchSampler`` shares of each global batch

Lines marked "bookkeeping" only record what the test compares; the rest is the recipe as the docs show it.
"""
import sys

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

import cbbench
import common  # tests/recipes/common.py: data, model, loss
from cbbench.harness.samplers import GlobalBatchSampler, SamplingSchedule


# the user's data and settings (train_set yields (x, y) pairs)
train_set, train_targets = common.dataset(), common.data()[1]
num_classes, global_batch_size, epochs, lr, seed = common.CLASSES, common.GLOBAL_BATCH, common.EPOCHS, common.LR, \
    common.SEED


# --- the recipe (docs/frameworks.md) ---------------------------------------------------------------------
from cbbench.distributed import ignore_accelerate_padding as ignore_padding  # noqa: E402


def train(accelerator, net, loader, sync_normalizer=True, fix_padding=True):
    criterion = cbbench.ClassBalancedLoss(torch.bincount(train_targets, minlength=num_classes), beta=0.99,
                                          loss_type="focal", gamma=1.0, sync_normalizer=sync_normalizer)
    criterion = criterion.to(accelerator.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    model, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    losses, batches = [], []                                           # bookkeeping
    for epoch in range(epochs):
        for x, y in loader:
            if fix_padding:                                            # (off: the test's "default" variant)
                y = ignore_padding(y, accelerator)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            global_loss = accelerator.reduce(loss.detach(), reduction="mean")  # the global batch's loss
            losses.append(global_loss.item())                          # bookkeeping
            batches.append(common.global_rows(x, y))                   # bookkeeping
    return accelerator.unwrap_model(model), losses, batches


def train_unprepared_loader(accelerator, net):
    """The other recipe: do not prepare the DataLoader; every process loads its share of each global batch."""
    criterion = cbbench.ClassBalancedLoss(torch.bincount(train_targets, minlength=num_classes), beta=0.99,
                                          loss_type="focal", gamma=1.0, sync_normalizer=True)
    criterion = criterion.to(accelerator.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    model, optimizer = accelerator.prepare(net, optimizer)            # not the DataLoader
    sampler = GlobalBatchSampler(SamplingSchedule("instance", train_targets, num_classes, epochs),
                                 global_batch_size, seed=seed,
                                 num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    loader = DataLoader(train_set, batch_sampler=sampler)
    losses, batches = [], []                                           # bookkeeping
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            global_loss = accelerator.reduce(loss.detach(), reduction="mean")
            losses.append(global_loss.item())                          # bookkeeping
            batches.append(common.global_rows(x, y))                   # bookkeeping
    return accelerator.unwrap_model(model), losses, batches
# ----------------------------------------------------------------------------------------------------------


def main(out, variants):
    set_seed(seed)
    accelerator = Accelerator(cpu=True)
    per_process_batch_size = global_batch_size // accelerator.num_processes
    for name in variants:
        net = common.make_net()
        if name in ("default", "recipe", "recipe-nosync", "recipe-shuffle"):
            loader = DataLoader(train_set, batch_size=per_process_batch_size, shuffle=name == "recipe-shuffle")
            result = train(accelerator, net, loader, sync_normalizer=name != "recipe-nosync",
                           fix_padding=name != "default")
        elif name == "recipe-split":  # the loader's batch is the global batch, split across the processes
            split = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
            result = train(split, net, DataLoader(train_set, batch_size=global_batch_size, shuffle=False))
        elif name == "sampler":
            result = train_unprepared_loader(accelerator, net)
        else:
            raise SystemExit(f"unknown variant {name!r}")
        if accelerator.is_main_process:
            common.write_result(out, name, *result, world_size=accelerator.num_processes,
                                distributed_type=str(accelerator.distributed_type))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

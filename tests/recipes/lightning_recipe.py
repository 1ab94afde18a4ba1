"""Lightning recipe for a cbbench loss (docs/frameworks.md, "Lightning"), checked by
tests/test_framework_recipes.py. Start it with 2 processes:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/recipes/lightning_recipe.py OUT VARIANT...

(what the test does) or let Lightning start the second process itself (``python tests/recipes/lightning_recipe.py
OUT VARIANT...``: the same results, slower). Each VARIANT fits a fresh model (same initial weights) for EPOCHS
epochs on ``common.dataset()`` with ``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` (gloo) and rank 0
appends its final parameters, the logged global loss and the global batch (data set rows) of every step to the
JSON-lines file OUT:

* ``default``       a plain DataLoader (shuffle=False), which Lightning gives a DistributedSampler -- shuffling,
                    and padding the data set to a multiple of the world size: not equal to one process
* ``recipe``        ``use_distributed_sampler=False`` and a ``GlobalBatchSampler`` (uneven shares, no padding)
* ``recipe-nosync`` ``recipe`` with ``sync_normalizer=False``: not equal (the check can fail)

The callback ``Record`` only records what the test compares; ``LitModel`` and ``recipe_trainer`` are the
recipe as the docs show it.
"""
import sys

import lightning
import torch
from torch.utils.data import DataLoader

import common  # tests/recipes/common.py: data, model, loss
import cbbench
from cbbench.harness.samplers import GlobalBatchSampler, SamplingSchedule


# the user's data and settings (train_set yields (x, y) pairs)
train_set, train_targets = common.dataset(), common.data()[1]
num_classes, global_batch_size, epochs, lr, seed = common.CLASSES, common.GLOBAL_BATCH, common.EPOCHS, common.LR, \
    common.SEED


# --- the recipe (docs/frameworks.md) ---------------------------------------------------------------------
class LitModel(lightning.LightningModule):
    def __init__(self, net, sync_normalizer=True):
        super().__init__()
        self.net = net
        self.criterion = cbbench.ClassBalancedLoss(torch.bincount(train_targets, minlength=num_classes), beta=0.99,
                                                   loss_type="focal", gamma=1.0, sync_normalizer=sync_normalizer)

    def train_dataloader(self):  # this rank's share of each global batch: the same global batches on any W
        self.sampler = GlobalBatchSampler(SamplingSchedule("instance", train_targets, num_classes, epochs),
                                          global_batch_size, seed=seed)
        return DataLoader(train_set, batch_sampler=self.sampler)

    def on_train_epoch_start(self):
        self.sampler.set_epoch(self.current_epoch)  # Lightning calls set_epoch on samplers, not batch samplers

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)  # the mean over the ranks: the global batch's loss
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=lr)


def recipe_trainer(**kwargs):
    return lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", use_distributed_sampler=False,
                             max_epochs=epochs, **kwargs)
# ----------------------------------------------------------------------------------------------------------


class PlainLoader(LitModel):
    """The loader as a user writes it without the recipe: Lightning shards it with a DistributedSampler."""

    def train_dataloader(self):
        return DataLoader(common.dataset(), batch_size=common.PER_RANK, shuffle=False)

    def on_train_epoch_start(self):
        pass


class Record(lightning.Callback):
    """Bookkeeping: the global batch (data set rows) and the logged (synchronised) train_loss of every step."""

    def __init__(self):
        self.losses, self.batches = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(common.global_rows(*batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train_loss"]))


QUIET = dict(precision="64-true", logger=False, enable_checkpointing=False,
             enable_progress_bar=False, enable_model_summary=False)


def main(out, variants):
    for name in variants:
        steps = Record()
        if name == "default":
            model = PlainLoader(common.make_net())
            trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs,
                                        callbacks=[steps], **QUIET)
        elif name in ("recipe", "recipe-nosync"):
            model = LitModel(common.make_net(), sync_normalizer=name == "recipe")
            trainer = recipe_trainer(callbacks=[steps], **QUIET)
        else:
            raise SystemExit(f"unknown variant {name!r}")
        trainer.fit(model)
        if trainer.is_global_zero:
            common.write_result(out, name, model.net, steps.losses, steps.batches, world_size=trainer.world_size,
                                strategy=type(trainer.strategy).__name__,
                                backend=torch.distributed.get_backend())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

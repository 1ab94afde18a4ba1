"""Training and test batches on the training device, for each kind of dataset.

* tabular data and small images (kinds ``"tabular"`` and ``"image"``) live on the device as tensors:
  a batch is gathered by index, and images get the CIFAR pad-4 crop + flip batched on the device;
* image files (kind ``"image_files"``) stream through a DataLoader whose workers decode and augment
  (:mod:`cbbench.harness.images`), with a progress bar over the epoch's batches.

Either way the epoch's example indices come from the sampler schedule (one global stream per seed and
epoch), and images are normalised on the device with the dataset's channel statistics. Under data
parallelism a rank's training batch is its share (``rank::world``) of a global batch, and every random
draw of the augmentation is made for the whole global batch, of which the rank keeps its rows: W ranks
augment every example exactly as one process does. The test split is evaluated in contiguous, unpadded
shards.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .datasets import LongTailedData
from .images import ImageFiles, default_workers, image_loader

__all__ = ["random_crop_flip", "MemoryInputs", "StreamInputs", "make_inputs"]


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4, *,
                     share: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """Batched pad-``padding`` random crop and horizontal flip of (B, C, H, W) images, on their device,
    with one gather; padding is zeros (black), as ``transforms.RandomCrop(32, padding=4)``.

    ``share=(rank, world, global_rows)``: the images are rows ``rank::world`` of a global batch of
    ``global_rows`` (:func:`cbbench.distributed.batch_share`); the offsets and flips are drawn for the whole
    global batch and this share's rows kept, so every rank's generator stays in step and each example is
    augmented as one process would."""
    b, _, h, w = images.shape
    dev = images.device
    rank, world, drawn = (0, 1, b) if share is None else share
    oy = torch.randint(0, 2 * padding + 1, (drawn, 1), device=dev, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (drawn, 1), device=dev, generator=generator)
    flip = torch.rand((drawn, 1), device=dev, generator=generator) < 0.5
    if share is not None:
        oy, ox, flip = oy[rank::world], ox[rank::world], flip[rank::world]
        if oy.shape[0] != b:
            raise ValueError(f"rank {rank} of {world} holds {b} rows of a {drawn}-row batch; its share is {oy.shape[0]}")
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = oy + torch.arange(h, device=dev)
    cols = ox + torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class _Normaliser:
    """uint8 images -> float, normalised with the dataset's channel statistics (channels-last on CUDA)."""

    def __init__(self, data: LongTailedData, device: torch.device):
        self.image = data.kind != "tabular"
        self.channels_last = self.image and device.type == "cuda"
        if self.image:
            self.mean = torch.tensor(data.meta["mean"], device=device).view(1, -1, 1, 1) * 255.0
            self.std = torch.tensor(data.meta["std"], device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image:
            return x
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class MemoryInputs:
    """Training and test tensors on the device, and the batch transform (normalise, augment)."""

    def __init__(self, data: LongTailedData, augment: bool, device: torch.device):
        self.prepare = _Normaliser(data, device)
        self.channels_last = self.prepare.channels_last
        self.x_train = torch.as_tensor(data.x_train).to(device)
        self.y_train = torch.as_tensor(data.y_train, dtype=torch.int64).to(device)
        self.x_test = torch.as_tensor(data.x_test).to(device)
        self.augment = bool(augment) and self.prepare.image

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator, share=None):
        """The batch of examples ``idx``; ``share=(rank, world, global_rows)`` under data parallelism
        (see :func:`random_crop_flip`)."""
        x = self.x_train[idx]
        if self.augment:
            # crop before normalising, so the padding is black as in torchvision
            x = random_crop_flip(x, generator, share=share)
        return self.prepare(x), self.y_train[idx]

    def epoch_batches(self, batches: Sequence[torch.Tensor], epoch: int, generator: torch.Generator,
                      progress: bool = False, shares: Optional[Sequence[tuple]] = None) -> Iterator:
        """The epoch's training batches; ``shares``: each batch's ``(rank, world, global_rows)`` when the
        batches are this rank's shares of global batches."""
        for i, idx in enumerate(batches):
            yield self.train_batch(idx, generator, None if shares is None else shares[i])

    def test_batches(self, batch_size: int, rows: Optional[range] = None) -> Iterator[torch.Tensor]:
        """The test examples in ``rows`` (default: all), in batches of at most ``batch_size``."""
        rows = range(len(self.x_test)) if rows is None else rows
        for start in range(rows.start, rows.stop, batch_size):
            yield self.prepare(self.x_test[start:min(start + batch_size, rows.stop)])


class StreamInputs:
    """Image files decoded by DataLoader workers each epoch; augmentation by (seed, epoch, index)."""

    def __init__(self, data: LongTailedData, augment: bool, seed: int, workers, device: torch.device):
        meta = data.meta
        self.prepare = _Normaliser(data, device)
        self.channels_last = self.prepare.channels_last
        self.device = device
        self.workers = default_workers() if workers is None else int(workers)
        self.pin = device.type == "cuda"
        crop, resize = meta["crop"], meta["resize"]
        self.train_set = ImageFiles(data.x_train, data.y_train, train=bool(augment), crop=crop, resize=resize,
                                    color_jitter=meta.get("color_jitter", 0.0) if augment else 0.0, seed=seed)
        self.test_set = ImageFiles(data.x_test, data.y_test, train=False, crop=crop, resize=resize)
        self.augment = bool(augment)

    def _to_device(self, x, y):
        return (self.prepare(x.to(self.device, non_blocking=self.pin)),
                y.to(self.device, non_blocking=self.pin))

    def epoch_batches(self, batches: Sequence[torch.Tensor], epoch: int, generator: torch.Generator,
                      progress: bool = False, shares: Optional[Sequence[tuple]] = None) -> Iterator:
        """The epoch's training batches (augmentation by (seed, epoch, index): ``shares`` change nothing);
        an empty batch (a rank's empty share of a short last batch) is yielded as one of 0 images."""
        if self.augment:
            keys = [[(int(i), epoch) for i in idx.tolist()] for idx in batches]
        else:  # no augmentation: the test-time resize + centre crop
            keys = [idx.tolist() for idx in batches]
            self.train_set.train = False
        bar = tqdm(total=len(keys), desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        loaded = image_loader(self.train_set, [k for k in keys if k], workers=self.workers, pin_memory=self.pin)
        try:
            for k in keys:
                x, y = next(loaded) if k else self._empty()
                bar.update()
                yield self._to_device(x, y)
        finally:
            loaded.close()
            bar.close()

    def _empty(self):
        crop = self.train_set.crop
        return torch.empty((0, 3, crop, crop), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)

    def test_batches(self, batch_size: int, rows: Optional[range] = None) -> Iterator[torch.Tensor]:
        """The test images in ``rows`` (default: all), in batches of at most ``batch_size``."""
        rows = range(len(self.test_set)) if rows is None else rows
        keys = [list(range(s, min(rows.stop, s + batch_size))) for s in range(rows.start, rows.stop, batch_size)]
        for x, _ in image_loader(self.test_set, keys, workers=self.workers, pin_memory=self.pin):
            yield self.prepare(x.to(self.device, non_blocking=self.pin))


def make_inputs(data: LongTailedData, config, device: torch.device):
    """The inputs object for ``data`` (its kind decides) under a resolved ``config``."""
    if data.kind == "image_files":
        return StreamInputs(data, config.augment, config.seed, config.workers, device)
    return MemoryInputs(data, config.augment, device)

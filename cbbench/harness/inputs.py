"""Training and test batches on the training device, for each kind of dataset.

* tabular data and small images (kinds ``"tabular"`` and ``"image"``) live on the device as tensors:
  a batch is gathered by index, and images get the CIFAR pad-4 crop + flip batched on the device;
* image files (kind ``"image_files"``) stream through a DataLoader whose workers decode and augment
  (:mod:`cbbench.harness.images`), with a progress bar over the epoch's batches.

Either way the epoch's example indices come from the sampler schedule (one global stream per seed and
epoch), and images are normalised on the device with the dataset's channel statistics.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .datasets import LongTailedData
from .images import ImageFiles, default_workers, image_loader

__all__ = ["random_crop_flip", "MemoryInputs", "StreamInputs", "make_inputs"]


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Batched pad-``padding`` random crop and horizontal flip of (B, C, H, W) images, on their device,
    with one gather; padding is zeros (black), as ``transforms.RandomCrop(32, padding=4)``."""
    b, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b, 1), device=dev, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), device=dev, generator=generator)
    rows = oy + torch.arange(h, device=dev)
    cols = ox + torch.arange(w, device=dev)
    flip = torch.rand((b, 1), device=dev, generator=generator) < 0.5
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

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator):
        x = self.x_train[idx]
        if self.augment:
            # crop before normalising, so the padding is black as in torchvision
            x = random_crop_flip(x, generator)
        return self.prepare(x), self.y_train[idx]

    def epoch_batches(self, batches: Sequence[torch.Tensor], epoch: int, generator: torch.Generator,
                      progress: bool = False) -> Iterator:
        for idx in batches:
            yield self.train_batch(idx, generator)

    def test_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.x_test), batch_size):
            yield self.prepare(self.x_test[start:start + batch_size])


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
                      progress: bool = False) -> Iterator:
        if self.augment:
            keys = [[(int(i), epoch) for i in idx.tolist()] for idx in batches]
        else:  # no augmentation: the test-time resize + centre crop
            keys = [idx.tolist() for idx in batches]
            self.train_set.train = False
        bar = tqdm(total=len(keys), desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        try:
            for x, y in image_loader(self.train_set, keys, workers=self.workers, pin_memory=self.pin):
                bar.update()
                yield self._to_device(x, y)
        finally:
            bar.close()

    def test_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        n = len(self.test_set)
        keys = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
        for x, _ in image_loader(self.test_set, keys, workers=self.workers, pin_memory=self.pin):
            yield self.prepare(x.to(self.device, non_blocking=self.pin))


def make_inputs(data: LongTailedData, config, device: torch.device):
    """The inputs object for ``data`` (its kind decides) under a resolved ``config``."""
    if data.kind == "image_files":
        return StreamInputs(data, config.augment, config.seed, config.workers, device)
    return MemoryInputs(data, config.augment, device)

"""Image files for the harness: decoding with Pillow, the ImageNet augmentation, a streaming dataset.

Large images stream from disk through a :class:`torch.utils.data.DataLoader` whose workers decode with
Pillow and augment as the long-tail codebases do with torchvision (OLTR / Kang et al. ``dataloader.py``):
training images get a random resized crop (area 8-100 %, aspect ratio 3/4-4/3, ``crop`` pixels), a
horizontal flip and, where the recipe has it, colour jitter (brightness, contrast and saturation by up
to 40 %, in random order, Pillow's ``ImageEnhance``); test images are resized so that the shorter side is
``resize`` pixels and centre-cropped to ``crop``. Workers return uint8 CHW tensors; normalisation runs on
the training device. Small images (CIFAR size) are instead decoded once into one uint8 array
(:func:`decode_fixed`) and trained from memory like the CIFAR pickles.

Each example's augmentation draws from a generator seeded by (seed, epoch, index), so a run gives the
same batches whatever the number of workers or the order they finish in.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .ddp import is_main
from .errors import DataError, DataFileNotFound

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "image_extensions", "open_rgb", "image_size", "decode_fixed",
           "channel_stats", "random_resized_crop_box", "ImageFiles", "collate_images", "image_loader",
           "default_workers", "probe_memory_size", "first_undecodable"]

# the per-channel statistics of ImageNet (0..1 scale) used by the ImageNet-LT / Places-LT code
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_extensions() -> frozenset:
    """Lower-case file extensions Pillow can open (".jpg", ".png", ...)."""
    from PIL import Image

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _pillow_errors() -> tuple:
    """What Pillow raises for a file it cannot decode (a truncated JPEG is an OSError)."""
    from PIL import Image, UnidentifiedImageError

    return OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError


def open_rgb(path: str):
    """The image at ``path`` as an RGB Pillow image, fully decoded; DataError naming the file if it
    cannot be read or decoded (DataFileNotFound if it does not exist)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataFileNotFound(f"{path}: image file not found") from None
    except _pillow_errors() as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {str(exc)[:150]})") from None


def image_size(path: str) -> tuple:
    """(width, height) of the image at ``path`` from its header (no full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DataFileNotFound(f"{path}: image file not found") from None
    except _pillow_errors() as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {str(exc)[:150]})") from None


def _chw(img) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_fixed(paths: Sequence[str], size: tuple, *, desc: str = "decoding images", progress: bool = True):
    """Decode every image into one uint8 array (N, 3, H, W) of ``size`` = (width, height); images of
    another size are resized to it (bilinear). Returns the array and how many were resized."""
    from PIL import Image

    width, height = size
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)
    resized = 0
    for k, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=not (progress and is_main()), leave=False)):
        img = open_rgb(path)
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
            resized += 1
        out[k] = _chw(img)
    return out, resized


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple:
    """Per-channel mean and standard deviation (0..1 scale) of uint8 images (N, 3, H, W)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block ** 2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple:
    """(left, top, crop width, crop height) as torchvision's ``RandomResizedCrop.get_params``: ten tries
    at a random area fraction and log-uniform aspect ratio, then the central crop of the clamped ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _jitter(img, rng: np.random.Generator, strength: float):
    from PIL import ImageEnhance

    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    for k in rng.permutation(len(enhancers)):
        img = enhancers[k](img).enhance(float(rng.uniform(max(0.0, 1 - strength), 1 + strength)))
    return img


class ImageFiles(Dataset):
    """Image files and their labels. Training items are keyed ``(index, epoch)`` (the augmentation
    depends on both); test items by ``index``. An item is ``(uint8 CHW tensor, label, None)``, or
    ``(None, label, message)`` when the file cannot be decoded, so the main process raises one clear
    error (:func:`collate_images`) instead of a worker traceback."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], *, train: bool, crop: int = 224,
                 resize: int = 256, color_jitter: float = 0.0, seed: int = 0):
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.train, self.crop, self.resize = train, int(crop), int(resize)
        self.color_jitter, self.seed = float(color_jitter), int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        from PIL import Image

        index, epoch = key if self.train else (key, 0)
        label = int(self.labels[index])
        try:
            img = open_rgb(self.paths[index])
        except (ValueError, FileNotFoundError) as exc:
            return None, label, str(exc)
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
            img = img.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.color_jitter:
                img = _jitter(img, rng, self.color_jitter)
        else:
            scale = self.resize / min(img.width, img.height)
            img = img.resize((max(self.crop, round(img.width * scale)), max(self.crop, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
            left, top = (img.width - self.crop) // 2, (img.height - self.crop) // 2
            img = img.crop((left, top, left + self.crop, top + self.crop))
        return torch.from_numpy(np.ascontiguousarray(_chw(img))), label, None


def collate_images(items):
    """Stack a batch of :class:`ImageFiles` items into (images, labels); a batch holding an unreadable
    file becomes ``{"error": message}``."""
    errors = [err for _, _, err in items if err is not None]
    if errors:
        return {"error": errors[0]}
    return torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items], dtype=torch.int64)


def image_loader(dataset: ImageFiles, batches, *, workers: int, pin_memory: bool = False):
    """Yield (uint8 images, labels) for each batch of keys, decoded by ``workers`` processes (0: in this
    process); raises DataError naming the first unreadable file."""
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_images,
                        pin_memory=pin_memory, prefetch_factor=4 if workers else None)
    for item in loader:
        if isinstance(item, dict):
            raise DataError(item["error"])
        yield item


class _Decodes(Dataset):
    """Item i: None when ``paths[i]`` decodes, else ``(i, message)``."""

    def __init__(self, paths: Sequence[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            open_rgb(self.paths[index])
        except (DataError, FileNotFoundError) as exc:
            return index, str(exc)
        return None


def first_undecodable(paths: Sequence[str], *, workers: int, progress: bool = True, desc: str = "checking images",
                      batch: int = 64) -> Optional[tuple]:
    """Decode every image of ``paths`` in full (``workers`` DataLoader processes, 0: this one), with a
    progress bar; ``(index, message)`` of the first that cannot be read or decoded, or None."""
    loader = DataLoader(_Decodes(list(paths)), batch_size=batch, num_workers=workers, collate_fn=list)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not (progress and is_main()), leave=False)
    try:
        for items in loader:
            failed = [item for item in items if item is not None]
            if failed:
                return failed[0]
            bar.update(len(items))
    finally:
        bar.close()
    return None


def default_workers() -> int:
    """DataLoader workers by default: the CPUs this process may use, shared among the processes a launcher
    started on this machine (``LOCAL_WORLD_SIZE``, set by torchrun), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cpus // local_ranks))


def probe_memory_size(path: str, max_side: int = 64) -> Optional[tuple]:
    """The (width, height) of the first image when it is small enough (both sides <= ``max_side``) to
    train from memory like CIFAR, else None."""
    size = image_size(path)
    return size if max(size) <= max_side else None

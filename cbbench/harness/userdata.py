"""Your own long-tailed data, and the large-scale long-tail benchmarks by name.

Sources (each a dataset name of :data:`cbbench.harness.datasets.DATASETS`):

* ``folder``: an image folder ``DATA_DIR/train/<class>/<image>`` and ``DATA_DIR/test/<class>/...`` (or
  ``val/``; ``eval_split`` chooses when both exist). Classes are the sorted names of the training
  sub-folders; an evaluation folder may lack classes, but not add any.
* ``list``: list files of ``relative/path label`` lines, the format of the OLTR and decoupling codebases
  (``ImageNet_LT_train.txt``, ``Places_LT_test.txt``, ``iNaturalist18_val.txt``, ...), paths relative to
  ``DATA_DIR``; or an iNaturalist ``train2018.json`` / ``val2018.json`` (COCO style: ``images`` with
  ``id`` / ``file_name``, ``annotations`` with ``image_id`` / ``category_id``, ``categories``).
* ``features``: precomputed embeddings for training a head on frozen features: a ``.npz`` with
  ``x_train``, ``y_train`` and ``x_test``, ``y_test`` (or ``x_val``, ``y_val``), or a ``.npy`` holding a
  dict with those keys (read with pickle: only open files you trust).
* presets ``imagenet-lt``, ``places-lt``, ``inat2018``: the list files of :data:`PRESETS` under
  ``lists_dir`` (default: ``DATA_DIR``), images under ``DATA_DIR``; class and image counts checked.

The data are used as they are, or cut to a long tail with the CB/LDAM rule when ``imbalance`` is given
(:func:`cbbench.harness.datasets.long_tailed_counts`, with n_max the smallest class's count, seed 0).
Images whose first file is at most 64 pixels a side (CIFAR size) are decoded once into memory
(``images="memory"``); larger ones stream from disk (``"stream"``); ``"auto"`` (default) chooses.
List files and annotation files are UTF-8 (a byte-order mark is skipped). Every problem is one error
naming the file (and line, and value) and what was expected: a :class:`~cbbench.harness.errors.DataError`
for the data, a :class:`~cbbench.harness.errors.UsageError` for an option. Streamed image files are
decoded once before the first epoch (:func:`check_files`), so a broken one fails a run in seconds, not
after training; feature values are checked against the dtype they are cast to (:func:`check_values`).
"""
from __future__ import annotations

import codecs
import functools
import json
import os
import pickle
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from .ddp import is_main
from .errors import DataError, DataFileNotFound, MissingOption, UsageError
from .fingerprint import files_digest
from .images import (IMAGENET_MEAN, IMAGENET_STD, channel_stats, decode_fixed, first_undecodable, image_extensions,
                     probe_memory_size)

__all__ = ["Preset", "PRESETS", "IMAGE_MODES", "load_folder", "load_list", "load_features", "load_preset",
           "read_list_file", "read_inat_json", "image_mode", "first_training_file", "check_values", "check_files"]

IMAGE_MODES = ("auto", "memory", "stream")


@dataclass(frozen=True)
class Preset:
    """A published long-tail benchmark: its list files per split, class count and image counts."""

    name: str
    num_classes: int
    lists: dict  # split -> list file name ("train", "val", "test")
    counts: dict  # split -> number of images in that list
    default_eval: str
    json_lists: dict = field(default_factory=dict)  # split -> the iNaturalist json alternative
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    color_jitter: float = 0.4
    source: str = ""  # where the list files come from


PRESETS = {p.name: p for p in (
    # counts: the list files of the decoupling code (facebookresearch/classifier-balancing, data/), counted
    # line by line; the ImageNet-LT and iNaturalist training lists are not in that repository (their sizes
    # are those of the OLTR paper and the CB code's run_inat2018.sh)
    Preset("imagenet-lt", 1000, {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt",
                                 "test": "ImageNet_LT_test.txt"},
           {"train": 115846, "val": 20000, "test": 50000}, "test",
           source="OLTR (zhmiao/OpenLongTailRecognition-OLTR) / decoupling (facebookresearch/classifier-balancing)"),
    Preset("places-lt", 365, {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"},
           {"train": 62500, "val": 7300, "test": 36500}, "test",
           source="OLTR / decoupling (facebookresearch/classifier-balancing, data/Places_LT)"),
    # iNaturalist's statistics and no colour jitter, as the CB and decoupling code for iNaturalist
    Preset("inat2018", 8142, {"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt"},
           {"train": 437513, "val": 24426}, "val", json_lists={"train": "train2018.json", "val": "val2018.json"},
           mean=(0.466, 0.471, 0.380), std=(0.195, 0.194, 0.192), color_jitter=0.0,
           source="decoupling (data/iNaturalist18, made from the competition's train2018.json / val2018.json)"),
)}


# -- readers --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    """Where a split's entries come from, for errors that point at one entry: the file (or folder), and
    each entry's line in it (list files) or the array that holds it (features, annotations)."""

    file: str
    lines: Optional[np.ndarray] = None
    key: Optional[str] = None

    def __str__(self) -> str:
        return self.file if self.key is None else f"{self.file} ({self.key})"

    def at(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.file}:{int(self.lines[index])}"
        return self.file if self.key is None else f"{self.file} ({self.key}[{index}])"


def _not_utf8(path: str, lineno: int, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    shown = raw.decode("utf-8", "replace").strip()[:120]
    return DataError(f"{path}:{lineno}: byte {raw[exc.start:exc.start + 1]!r} at column {exc.start + 1} is not "
                     f"UTF-8 (line {shown!r}); save the file as UTF-8, e.g. iconv -f LATIN1 -t UTF-8 (if it is "
                     "Latin-1)")


def _text_lines(path: str, what: str, expected: str = "") -> Iterator[tuple]:
    """(line number, text) of each line of a UTF-8 text file; a byte-order mark is skipped. DataError
    naming the file and line for bytes that are not UTF-8; DataFileNotFound when the file is missing."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise DataFileNotFound(f"{path}: {what} not found{f' ({expected})' if expected else ''}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, lineno, raw, exc) from None


def _read_list(path: str, root: str) -> tuple:
    """(absolute paths, labels, line numbers) of a ``relative/path label`` list file."""
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder, not a list file (expected lines 'relative/path label')")
    paths, labels, lines = [], [], []
    for lineno, line in _text_lines(path, "list file", "expected lines 'relative/path label'"):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line[:120]!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{path}:{lineno}: the label {parts[1]!r} is not a whole number") from None
        if label < 0:
            raise DataError(f"{path}:{lineno}: negative label {label}")
        paths.append(os.path.join(root, parts[0]))
        labels.append(label)
        lines.append(lineno)
    if not paths:
        raise DataError(f"{path}: no 'relative/path label' line")
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def read_list_file(path: str, root: str) -> tuple:
    """(absolute paths, labels) of a ``relative/path label`` list file (UTF-8, with or without a
    byte-order mark); paths are joined to ``root``. Blank lines are skipped; a path may contain spaces
    (the label is the last field)."""
    paths, labels, _ = _read_list(path, root)
    return paths, labels


def _read_json(path: str):
    raw = b"".join(line.encode("utf-8") for _, line in _text_lines(path, "annotation file"))
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # json.JSONDecodeError names the line and column
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def read_inat_json(path: str, root: str) -> tuple:
    """(absolute paths, labels, number of categories) of an iNaturalist / COCO-style annotation file;
    the label of an image is its annotation's ``category_id`` (0 .. C-1 in iNaturalist 2018)."""
    doc = _read_json(path)
    try:
        images = {img["id"]: img["file_name"] for img in doc["images"]}
        annotations = [(a["image_id"], int(a["category_id"])) for a in doc["annotations"]]
        categories = {int(c["id"]) for c in doc.get("categories", [])}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: expected COCO-style 'images' [{{id, file_name}}], 'annotations' "
                        f"[{{image_id, category_id}}] and 'categories' [{{id}}] (problem: {exc!r})") from None
    num_classes = len(categories) if categories else (max(c for _, c in annotations) + 1 if annotations else 0)
    paths, labels = [], []
    for k, (image_id, category) in enumerate(annotations):
        if image_id not in images:
            raise DataError(f"{path} (annotations[{k}]): image id {image_id!r}, which 'images' does not list")
        if not 0 <= category < num_classes or (categories and category not in categories):
            raise DataError(f"{path} (annotations[{k}]): category_id {category} of image {images[image_id]!r} is "
                            f"outside the {num_classes} categories 0..{num_classes - 1}")
        paths.append(os.path.join(root, images[image_id]))
        labels.append(category)
    if not paths:
        raise DataError(f"{path}: no annotated image")
    return paths, np.asarray(labels, dtype=np.int64), num_classes


def _read_labels(path: str, root: str) -> tuple:
    """A list file or an iNaturalist json: (paths, labels, categories the file declares or None, source)."""
    if path.endswith(".json"):
        paths, labels, declared = read_inat_json(path, root)
        return paths, labels, declared, _Source(path, key="annotations")
    paths, labels, lines = _read_list(path, root)
    return paths, labels, None, _Source(path, lines)


def _folder_classes(split_dir: str) -> list:
    return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))


def _folder_files(split_dir: str, classes: Sequence[str], extensions) -> tuple:
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        if not os.path.isdir(folder):
            continue
        files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in extensions)
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


# -- checks shared by every source ---------------------------------------------------------------------

def _check_labels(labels: np.ndarray, num_classes: int, where: _Source, classes_from: str = "") -> None:
    """DataError naming the entry (file:line, or array[index]) of the first label outside 0..C-1."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        first = int(bad[0])
        more = f"; {bad.size} labels are, this is the first" if bad.size > 1 else ""
        raise DataError(f"{where.at(first)}: label {int(labels[first])} is outside the {num_classes} classes "
                        f"0..{num_classes - 1}{classes_from}{more}; fix the label")


def _check_train_classes(labels: np.ndarray, num_classes: int, where: _Source, names=None,
                         inferred: bool = False) -> None:
    """DataError for classes without a training example. ``inferred``: the class count is the largest
    label + 1, so a label typo (999 in a 3-class list) shows as hundreds of empty classes: when the
    empty classes lie between the largest label and the next largest, that label's entry is named."""
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if not empty.size:
        return
    shown = [names[c] if names else int(c) for c in empty[:10]]
    message = (f"{empty.size} class(es) have no training example, e.g. {shown}; every class needs one "
               "(class-balanced weights of an empty class are infinite)")
    largest = int(labels.max())
    below = labels[labels < largest]
    next_largest = int(below.max()) if below.size else -1
    if inferred and empty[-1] > next_largest:
        entry = int(np.flatnonzero(labels == largest)[0])
        raise DataError(f"{where.at(entry)}: label {largest} makes {num_classes} classes (the largest label + 1), "
                        f"but the next largest label is {next_largest}: a typo? {message}")
    raise DataError(f"{where}: {message}")


def check_values(array, dtype, where: str) -> np.ndarray:
    """``array`` cast to ``dtype``, after checking that every value survives the cast unchanged: real
    numbers, finite, inside ``dtype``'s range, whole for an integer ``dtype`` (float64 features beyond
    float32's +-3.4e38 would become inf; 256 would wrap to 0 in uint8; 1.5 would become label 1).
    DataError naming ``where``, the first offending index and its value."""
    target = np.dtype(dtype)
    values = np.asarray(array)
    if values.dtype == bool or not (np.issubdtype(values.dtype, np.integer) or
                                    np.issubdtype(values.dtype, np.floating)):
        raise DataError(f"{where}: holds {values.dtype} values; expected real numbers ({target} after loading)")
    floating = np.issubdtype(values.dtype, np.floating)
    if np.issubdtype(target, np.floating):
        low, high = -float(np.finfo(target).max), float(np.finfo(target).max)
    else:
        low, high = int(np.iinfo(target).min), int(np.iinfo(target).max)
    checks = []
    if floating:
        checks.append((lambda v: ~np.isfinite(v), "is not a finite number"))
    source = np.finfo(values.dtype) if floating else np.iinfo(values.dtype)
    if source.min < low:  # compared only where the source type reaches beyond the target's range
        checks.append((lambda v: v < low, f"is below {target}'s range (the type it is loaded as: >= {low:g})"))
    if source.max > high:
        checks.append((lambda v: v > high, f"is beyond {target}'s range (the type it is loaded as: <= {high:g})"))
    if floating and not np.issubdtype(target, np.floating):
        checks.append((lambda v: v != np.floor(v), f"is not a whole number ({target} is loaded)"))
    with np.errstate(invalid="ignore"):
        for bad, what in checks:
            mask = bad(values)
            if mask.any():
                index = tuple(int(i) for i in np.argwhere(mask)[0])
                shown = index[0] if len(index) == 1 else list(index)
                raise DataError(f"{where}: the value {values[index].item()!r} at index {shown} {what}; fix or "
                                "rescale the data")
    return values.astype(target, copy=False)


def _imbalance_of(labels: np.ndarray, num_classes: int) -> float:
    """The imbalance factor the training labels have: largest class count / smallest."""
    counts = np.bincount(labels, minlength=num_classes)
    return float(counts.max() / counts.min())


def _lt_cut(labels: np.ndarray, num_classes: int, imbalance) -> Optional[np.ndarray]:
    """Indices of the CB/LDAM long-tailed subset, or None to keep the data as they are."""
    if imbalance is None:
        return None
    from .datasets import long_tailed_counts, long_tailed_indices

    n_max = int(np.bincount(labels, minlength=num_classes).min())
    return long_tailed_indices(labels, long_tailed_counts(n_max, num_classes, imbalance), seed=0)


def first_training_file(name: str, data_dir, options: dict) -> Optional[str]:
    """The first training image of a folder or list dataset (what ``images="auto"`` probes), or None
    when it cannot be found (the loader then reports what is missing)."""
    if data_dir is None:
        return None
    train_list = options.get("train_list")
    return _first_training_file(name, os.fspath(data_dir), None if train_list is None else os.fspath(train_list))


@functools.lru_cache(maxsize=64)
def _first_training_file(name: str, data_dir: str, train_list: Optional[str]) -> Optional[str]:
    try:
        if name == "folder":
            train_dir = os.path.join(data_dir, "train")
            extensions = image_extensions()
            for cls in _folder_classes(train_dir):
                files = sorted(f for f in os.listdir(os.path.join(train_dir, cls))
                               if os.path.splitext(f)[1].lower() in extensions)
                if files:
                    return os.path.join(train_dir, cls, files[0])
            return None
        if name == "list" and train_list is not None:
            if train_list.endswith(".json"):
                return read_inat_json(train_list, data_dir)[0][0]
            for _, line in _text_lines(train_list, "list file"):  # the first entry only, not a 400k-line list
                if line.strip():
                    return os.path.join(data_dir, line.strip().rsplit(None, 1)[0])
    except (OSError, ValueError):  # the loader reads the same file and says what is wrong with it
        return None
    return None


def image_mode(images: str, first_path: str) -> str:
    """``"memory"`` or ``"stream"`` for ``images`` (one of :data:`IMAGE_MODES`), probing the first image
    for ``"auto"``."""
    if images not in IMAGE_MODES:
        raise UsageError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    if images != "auto":
        return images
    return "memory" if _probe(first_path) else "stream"


@functools.lru_cache(maxsize=64)
def _probe(first_path: str):
    return probe_memory_size(first_path)


def _file_stats(paths: Sequence[str], where: _Source, progress: bool) -> tuple:
    """(sizes, modification times in ns) of every file, for the data's fingerprint; DataFileNotFound for
    a missing one, naming where it is listed (file:line for list files)."""
    sizes = np.empty(len(paths), dtype=np.int64)
    mtimes = np.empty(len(paths), dtype=np.int64)
    bar = tqdm(paths, desc="checking image files", unit="file", leave=False,
               disable=not (progress and is_main()) or len(paths) < 20000)
    for k, path in enumerate(bar):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise DataFileNotFound(f"{path}: image file not found (listed in {where.at(k)})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read it ({exc.strerror or exc}; listed in {where.at(k)})") from None
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a file (listed in {where.at(k)})")
        sizes[k], mtimes[k] = info.st_size, info.st_mtime_ns
    return sizes, mtimes


def _listed_at(source: str, root: Optional[str], path: str) -> str:
    """Where ``path`` is listed: ``list:line`` when ``source`` is a list file naming it, else ``source``."""
    if root is not None and os.path.isfile(source) and not source.endswith(".json"):
        try:
            paths, _, lines = _read_list(source, root)
            return f"{source}:{int(lines[paths.index(path)])}"
        except (DataError, ValueError):
            pass
    return source


def check_files(data, *, workers: int, progress: bool = True) -> None:
    """Decode every training and evaluation image of streamed image data (kind ``"image_files"``) once,
    in full, with ``workers`` DataLoader processes and a progress bar: a truncated or corrupted image
    fails the run before its first epoch (training would meet a broken test image only after the last).
    DataError naming the file and where it is listed. The other kinds are read whole when loaded."""
    if data.kind != "image_files":
        return
    paths = [*data.x_train, *data.x_test]
    failed = first_undecodable(paths, workers=workers, progress=progress,
                               desc=f"{data.name}: checking {len(data.x_train)} training + {len(data.x_test)} "
                                    "evaluation images")
    if failed is not None:
        index, message = failed
        source = data.meta["train_source"] if index < len(data.x_train) else data.meta["eval_source"]
        listed = _listed_at(source, data.meta.get("data_dir"), paths[index])
        raise DataError(f"{message}; listed in {listed}: replace or remove that image (checked before training)")


def _image_data(name: str, train: tuple, evaluation: tuple, num_classes: int, *, imbalance, images: str,
                crop: int, resize: int, color_jitter: float, mean, std, meta: dict, class_names=None,
                progress: bool = True, inferred: bool = False):
    """``train`` and ``evaluation``: (paths, labels, :class:`_Source`); ``inferred``: ``num_classes`` is the
    largest training label + 1."""
    from .datasets import LongTailedData, _check_imbalance

    (train_paths, train_labels, train_where), (eval_paths, eval_labels, eval_where) = train, evaluation
    _check_labels(train_labels, num_classes, train_where)
    _check_train_classes(train_labels, num_classes, train_where, class_names, inferred=inferred)
    _check_labels(eval_labels, num_classes, eval_where,
                  f" of the training data ({train_where.file})" if inferred else "")
    if imbalance is not None:
        imbalance = _check_imbalance(imbalance)
    keep = _lt_cut(train_labels, num_classes, imbalance)
    if keep is not None:
        train_paths = [train_paths[i] for i in keep]
        train_labels = train_labels[keep]
        if train_where.lines is not None:
            train_where = _Source(train_where.file, train_where.lines[keep])
    imbalance = _imbalance_of(train_labels, num_classes)
    mode = image_mode(images, train_paths[0])
    meta = dict(meta, images=mode, train_source=train_where.file, eval_source=eval_where.file,
                class_names=class_names)
    if mode == "memory":
        size = _probe(train_paths[0]) or (crop, crop)
        x_train, resized_train = decode_fixed(train_paths, size, desc=f"{name}: decoding training images",
                                              progress=progress)
        x_test, resized_test = decode_fixed(eval_paths, size, desc=f"{name}: decoding test images", progress=progress)
        mean, std = channel_stats(x_train)
        meta.update(image_size=list(size), resized=resized_train + resized_test, mean=mean, std=std)
        return LongTailedData(name, x_train, train_labels, x_test, eval_labels, num_classes, "image", imbalance, meta)
    train_stats = _file_stats(train_paths, train_where, progress)
    eval_stats = _file_stats(eval_paths, eval_where, progress)
    meta.update(crop=int(crop), resize=int(resize), color_jitter=float(color_jitter), mean=tuple(mean),
                std=tuple(std))
    fingerprint = files_digest([("train", train_paths, train_labels, *train_stats),
                                ("eval", eval_paths, eval_labels, *eval_stats)], meta.get("data_dir"))
    return LongTailedData(name, np.asarray(train_paths, dtype=object), train_labels,
                          np.asarray(eval_paths, dtype=object), eval_labels, num_classes, "image_files",
                          imbalance, meta, fingerprint=fingerprint)


def _check_crop(crop, resize) -> tuple:
    """(crop, resize): test images are resized to ``resize`` (default 256/224 of the crop, the ImageNet
    ratio) on the shorter side, then centre-cropped."""
    from .datasets import _whole

    crop = _whole(crop, "crop", 16)
    resize = round(crop * 256 / 224) if resize is None else _whole(resize, "resize", 16)
    if resize < crop:
        raise ValueError(f"resize ({resize}) must be at least crop ({crop})")
    return crop, resize


# -- sources --------------------------------------------------------------------------------------------

def load_folder(data_dir, *, imbalance=None, eval_split: Optional[str] = None, images: str = "auto",
                crop: int = 224, resize: Optional[int] = None, color_jitter: float = 0.4, progress: bool = True):
    """An image folder: ``DATA_DIR/train/<class>/*`` and ``DATA_DIR/{test,val}/<class>/*``."""
    crop, resize = _check_crop(crop, resize)
    layout = "DATA_DIR/train/<class>/<image> and DATA_DIR/test/<class>/<image> (or val/)"
    if data_dir is None:
        raise MissingOption(f"the folder dataset needs --data-dir: {layout}")
    data_dir = os.fspath(data_dir)
    train_dir = os.path.join(data_dir, "train")
    if not os.path.isdir(train_dir):
        raise DataFileNotFound(f"{train_dir}: no training folder; expected {layout}")
    splits = [s for s in ("test", "val") if os.path.isdir(os.path.join(data_dir, s))]
    if eval_split is None:
        if not splits:
            raise DataFileNotFound(f"{data_dir}: no test/ or val/ folder beside train/; expected {layout}")
        eval_split = splits[0]
    elif eval_split not in ("test", "val"):
        raise UsageError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    eval_dir = os.path.join(data_dir, eval_split)
    if not os.path.isdir(eval_dir):
        raise DataFileNotFound(f"{eval_dir}: evaluation folder not found; expected {layout}")
    classes = _folder_classes(train_dir)
    if not classes:
        raise DataError(f"{train_dir}: no class sub-folder; expected {layout}")
    extra = sorted(set(_folder_classes(eval_dir)) - set(classes))
    if extra:
        raise DataError(f"{eval_dir}: class folder(s) {extra[:10]} have no training folder under {train_dir}")
    extensions = image_extensions()
    train_paths, train_labels = _folder_files(train_dir, classes, extensions)
    eval_paths, eval_labels = _folder_files(eval_dir, classes, extensions)
    if not eval_paths:
        raise DataError(f"{eval_dir}: no image file")
    return _image_data("folder", (train_paths, train_labels, _Source(train_dir)),
                       (eval_paths, eval_labels, _Source(eval_dir)),
                       len(classes), imbalance=imbalance, images=images, crop=crop, resize=resize,
                       color_jitter=color_jitter, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       meta={"data_dir": data_dir, "eval_split": eval_split}, class_names=classes, progress=progress)


def load_list(data_dir, *, train_list: Optional[str] = None, eval_list: Optional[str] = None,
              num_classes: Optional[int] = None, imbalance=None, images: str = "auto", crop: int = 224,
              resize: Optional[int] = None, color_jitter: float = 0.4, progress: bool = True):
    """List files (or iNaturalist json) for training and evaluation; images under ``DATA_DIR``. The
    class count is ``num_classes``, else what the training json declares, else the largest training
    label + 1 (the evaluation list is checked against it: a label there that the training list lacks is
    an error naming its line)."""
    crop, resize = _check_crop(crop, resize)
    if train_list is None or eval_list is None:
        raise MissingOption("the list dataset needs --train-list and --eval-list (files of 'relative/path label' "
                            "lines, or iNaturalist train2018.json / val2018.json)")
    if data_dir is None:
        raise MissingOption("the list dataset needs --data-dir: the folder the list files' paths start from")
    root = os.fspath(data_dir)
    train_paths, train_labels, declared, train_where = _read_labels(os.fspath(train_list), root)
    eval_paths, eval_labels, _, eval_where = _read_labels(os.fspath(eval_list), root)
    inferred = num_classes is None and not declared
    if num_classes is None:
        num_classes = declared or int(train_labels.max()) + 1
    return _image_data("list", (train_paths, train_labels, train_where), (eval_paths, eval_labels, eval_where),
                       int(num_classes), imbalance=imbalance, images=images, crop=crop, resize=resize,
                       color_jitter=color_jitter, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       meta={"data_dir": root, "train_list": os.fspath(train_list), "eval_list": os.fspath(eval_list)},
                       progress=progress, inferred=inferred)


def load_preset(name: str, data_dir, *, lists_dir=None, eval_split: Optional[str] = None, imbalance=None,
                crop: int = 224, resize: Optional[int] = None, progress: bool = True):
    """A benchmark of :data:`PRESETS`: its list files (the ``.txt`` ones, or iNaturalist's json when the
    ``.txt`` are absent) from ``lists_dir`` (default ``data_dir``), checked against the published class and
    image counts."""
    preset = PRESETS[name]
    crop, resize = _check_crop(crop, resize)
    if data_dir is None:
        raise MissingOption(f"{name} needs --data-dir: the image root its list files' paths start from")
    lists_dir = os.fspath(lists_dir if lists_dir is not None else data_dir)
    eval_split = eval_split or preset.default_eval
    if eval_split not in preset.lists:
        raise UsageError(f"{name} has splits {sorted(preset.lists)}, not {eval_split!r}")

    def locate(split):
        txt = os.path.join(lists_dir, preset.lists[split])
        if os.path.isfile(txt) or split not in preset.json_lists:
            return txt
        alt = os.path.join(lists_dir, preset.json_lists[split])
        return alt if os.path.isfile(alt) else txt

    train_file, eval_file = locate("train"), locate(eval_split)
    for split, path in (("train", train_file), (eval_split, eval_file)):
        if not os.path.isfile(path):
            also = f" (or {preset.json_lists[split]})" if split in preset.json_lists else ""
            raise DataFileNotFound(f"{path}: the {name} {split} list{also} is missing; get the list files of "
                                   f"{preset.source} and pass their folder as --lists-dir")
    root = os.fspath(data_dir)
    parts = []
    for split, path in (("train", train_file), (eval_split, eval_file)):
        paths, labels, _, where = _read_labels(path, root)
        if len(paths) != preset.counts[split]:
            raise DataError(f"{path}: {len(paths)} images, but the {name} {split} split has {preset.counts[split]}")
        classes = len(np.unique(labels))
        if classes != preset.num_classes or labels.max() >= preset.num_classes:
            beyond = np.flatnonzero(labels >= preset.num_classes)
            first = f"; the first label beyond: {int(labels[beyond[0]])} at {where.at(int(beyond[0]))}" \
                if beyond.size else ""
            raise DataError(f"{path}: labels cover {classes} classes (largest {int(labels.max())}), but {name} has "
                            f"{preset.num_classes} (0..{preset.num_classes - 1}){first}")
        parts.append((paths, labels, where))
    return _image_data(name, parts[0], parts[1], preset.num_classes, imbalance=imbalance, images="stream", crop=crop,
                       resize=resize, color_jitter=preset.color_jitter, mean=preset.mean, std=preset.std,
                       meta={"data_dir": root, "lists_dir": lists_dir, "eval_split": eval_split}, progress=progress)


def _npz_arrays(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataFileNotFound(f"{path}: features file not found")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if path.endswith(".npy"):
            obj = np.load(path, allow_pickle=True)
            if obj.dtype == object and obj.shape == ():
                obj = obj.item()
            if not isinstance(obj, dict):
                raise ValueError("the .npy does not hold a dict")
            return obj
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: unreadable features file ({str(exc)[:150]}); expected a .npz (or a .npy "
                        "holding a dict) with x_train, y_train, x_test, y_test") from None
    raise DataError(f"{path}: features must be a .npz or a .npy file")


def load_features(path, *, imbalance=None):
    """Precomputed embeddings: x_train (N, D) float, y_train (N,) int, and x_test / y_test (or x_val /
    y_val). Used as they are (no standardisation: a head on frozen features sees what the backbone
    gives), in float32: every value must be finite and within float32's range (:func:`check_values`)."""
    from .datasets import LongTailedData, _check_imbalance

    if path is None:
        raise MissingOption("the features dataset needs --features FILE (.npz with x_train, y_train, "
                            "x_test, y_test)")
    path = os.fspath(path)
    arrays = _npz_arrays(path)
    split = "val" if "x_val" in arrays and "x_test" not in arrays else "test"
    keys = ("x_train", "y_train", f"x_{split}", f"y_{split}")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; expected x_train, y_train and x_test, y_test "
                        f"(or x_val, y_val), found {sorted(arrays)}")
    x_train, y_train, x_test, y_test = (np.asarray(arrays[k]) for k in keys)
    for key, x, y in (("train", x_train, y_train), (split, x_test, y_test)):
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not len(x):
            raise DataError(f"{path}: x_{key} must be (N, D) and y_{key} (N,) with N >= 1, got {x.shape} and "
                            f"{y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{key} must hold whole-number labels, got dtype {y.dtype}")
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"{path}: x_train has {x_train.shape[1]} features, x_{split} {x_test.shape[1]}")
    # the training and the evaluation arrays alike: the model sees both in float32
    x_train, x_test = (check_values(x, np.float32, f"{path} (x_{key})") for key, x in (("train", x_train),
                                                                                         (split, x_test)))
    y_train, y_test = (check_values(y, np.int64, f"{path} (y_{key})") for key, y in (("train", y_train),
                                                                                       (split, y_test)))
    if y_train.min() < 0:
        first = int(np.flatnonzero(y_train < 0)[0])
        raise DataError(f"{path} (y_train[{first}]): negative label {int(y_train[first])}; labels are 0..C-1")
    num_classes = int(y_train.max()) + 1
    train_where = _Source(path, key="y_train")
    _check_train_classes(y_train, num_classes, train_where, inferred=True)
    _check_labels(y_test, num_classes, _Source(path, key=f"y_{split}"), " of y_train")
    if imbalance is not None:
        imbalance = _check_imbalance(imbalance)
    keep = _lt_cut(y_train, num_classes, imbalance)
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    return LongTailedData("features", x_train, y_train, x_test, y_test,
                          num_classes, "tabular", _imbalance_of(y_train, num_classes),
                          {"features": path, "eval_split": split, "dim": int(x_train.shape[1])})

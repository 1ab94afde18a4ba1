"""Long-tailed datasets: digits-LT, synthetic-LT, prototypes-LT, CIFAR-10-LT and CIFAR-100-LT built in;
the user's own data (``folder``, ``list``, ``features``) and the large-scale benchmarks (``imagenet-lt``,
``places-lt``, ``inat2018``) through :mod:`cbbench.harness.userdata`.

Every dataset has a long-tailed training split and a balanced (or untouched) test split. The training
subset follows the rule of the class-balanced (Cui et al. 2019) and LDAM (Cao et al. 2019) code: class
``i`` keeps ``n_i = int(n_max * (1/IF)^(i/(C-1)))`` examples, chosen by shuffling that class's indices
with numpy's legacy RNG seeded once with 0 and keeping the first ``n_i`` (classes in label order, one
RNG stream, exactly as ``IMBALANCECIFAR10.gen_imbalanced_data``). CIFAR-10-LT at IF 100 has 12,406
training images.

Images in memory are uint8 ``(N, 3, H, W)`` (kind ``"image"``); large images stay files read while
training (kind ``"image_files"``: arrays of paths); tabular features are float32 ``(N, D)`` (kind
``"tabular"``), standardised with the training split's statistics for the built-in ones.
"""
from __future__ import annotations

import inspect
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import DataError, DataFileNotFound, MissingOption, UsageError

__all__ = ["DATASETS", "BUILTIN_DATASETS", "USER_DATASETS", "PRESET_DATASETS", "DATASET_KINDS", "dataset_kind",
           "DEFAULT_IMBALANCE", "LongTailedData", "long_tailed_counts", "long_tailed_indices",
           "load_dataset", "load_digits_lt", "make_synthetic_lt", "make_prototypes_lt", "varied_prototypes",
           "load_cifar_lt", "write_fake_cifar", "CIFAR_MEAN", "CIFAR_STD", "DATA_DIR_DATASETS", "CLI_DATASET_OPTIONS",
           "dataset_options", "check_dataset_options", "option_flag"]

BUILTIN_DATASETS = ("digits-lt", "synthetic-lt", "prototypes-lt", "cifar10-lt", "cifar100-lt")
USER_DATASETS = ("folder", "list", "features")
PRESET_DATASETS = ("imagenet-lt", "places-lt", "inat2018")
DATASETS = BUILTIN_DATASETS + USER_DATASETS + PRESET_DATASETS
# the datasets read from a data folder (--data-dir); the others are generated, or read from --features
DATA_DIR_DATASETS = ("cifar10-lt", "cifar100-lt", "folder", "list") + PRESET_DATASETS
# loader options that are command-line options of `cbbench train` / `compare` (--train-list, ...)
CLI_DATASET_OPTIONS = ("train_list", "eval_list", "lists_dir", "features", "eval_split", "images", "crop",
                       "views")
# what each dataset's examples are: "tabular" (float32 feature vectors), "image" (uint8 in memory) or
# "image_files" (files decoded while training); folder and list data are "image" or "image_files"
# depending on their image size (see dataset_kind)
DATASET_KINDS = {"digits-lt": "tabular", "synthetic-lt": "tabular", "prototypes-lt": "tabular", "cifar10-lt": "image",
                 "cifar100-lt": "image", "features": "tabular", "imagenet-lt": "image_files",
                 "places-lt": "image_files", "inat2018": "image_files"}
PROFILES = ("exp", "step")

# digits: 50 test images per class leave >= 124 per class for training; n_max = 120 with IF 50 keeps
# 120, 77, 50, 32, 21, 13, 8, 5, 3, 2 images (331), so every class survives (IF 100 would leave 1,
# IF > 120 would leave 0 and make class-balanced weights infinite).
DEFAULT_IMBALANCE = {"digits-lt": 50.0, "synthetic-lt": 100.0, "prototypes-lt": 100.0, "cifar10-lt": 100.0,
                     "cifar100-lt": 100.0}
DIGITS_TEST_PER_CLASS = 50
DIGITS_N_MAX = 120

# per-channel statistics of the CIFAR training sets (0..1 scale), as in the LDAM / CB PyTorch code
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2023, 0.1994, 0.2010), 100: (0.2673, 0.2564, 0.2762)}

CIFAR_LAYOUT = {
    10: ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
         "test_batch", b"labels"),
    100: ("cifar-100-python", ["train"], "test", b"fine_labels"),
}


@dataclass
class LongTailedData:
    """A long-tailed training split and its test split, as numpy arrays."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    kind: str  # "tabular" or "image"
    imbalance: float
    meta: dict = field(default_factory=dict)
    # the data's identity (cbbench.harness.fingerprint): set by the loader of streamed image files,
    # computed from the arrays on first use otherwise
    fingerprint: Optional[str] = field(default=None, repr=False)
    # streamed image files: every file decoded once before training (cbbench.harness.userdata.check_files)
    files_checked: bool = field(default=False, repr=False)
    # a second view of every training example (another augmentation / noise draw of the same sample), where a
    # dataset provides one: the measured effective number (cbbench/effective.py) takes its radius from it
    x_train_aug: Optional[np.ndarray] = None

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.y_train, minlength=self.num_classes)

    @property
    def test_counts(self) -> np.ndarray:
        return np.bincount(self.y_test, minlength=self.num_classes)


def _check_imbalance(imbalance) -> float:
    try:
        value = float(imbalance)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"imbalance must be a number >= 1, got {imbalance!r}") from exc
    if not math.isfinite(value) or value < 1.0:
        raise UsageError(f"imbalance (n_max / n_min) must be a finite number >= 1, got {imbalance!r}")
    return value


def long_tailed_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list:
    """Images kept per class for an imbalance factor IF = n_max / n_min (the LDAM/CB rule).

    ``"exp"``: ``int(n_max * (1/IF)^(i/(C-1)))`` for class i; ``"step"``: the first ``C // 2`` classes
    keep ``n_max``, the rest ``int(n_max / IF)``. Raises if a class would end up with no example.
    """
    if isinstance(n_max, bool) or int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be a whole number >= 1, got {n_max!r}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    n_max, num_classes = int(n_max), int(num_classes)
    imb_factor = 1.0 / _check_imbalance(imbalance)
    if num_classes == 1:
        counts = [n_max]
    elif profile == "exp":
        counts = [int(n_max * (imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    else:
        half = num_classes // 2
        counts = [n_max] * half + [int(n_max * imb_factor)] * (num_classes - half)
    if min(counts) < 1:
        raise UsageError(f"imbalance {imbalance} with n_max {n_max} leaves class(es) with no example "
                         f"(counts {counts}); choose a smaller imbalance, so that the rarest class keeps at least one")
    return counts


def long_tailed_indices(labels: np.ndarray, counts, seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset: per class (label order), shuffle that class's indices with one
    ``np.random.RandomState(seed)`` stream and keep the first ``counts[c]``; returned in class order."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    keep = []
    for cls, n in enumerate(counts):
        idx = np.where(labels == cls)[0]
        if len(idx) < n:
            raise ValueError(f"class {cls} has {len(idx)} examples, fewer than the {n} requested")
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)


def _standardise(x_train: np.ndarray, x_test: np.ndarray):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train).astype(np.float32), scaler.transform(x_test).astype(np.float32)


def load_digits_lt(imbalance: Optional[float] = None, *, n_max: int = DIGITS_N_MAX,
                   test_per_class: int = DIGITS_TEST_PER_CLASS, profile: str = "exp",
                   views: bool = False) -> LongTailedData:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), made long-tailed.

    Per class (seed 0) ``test_per_class`` images form a balanced test split; the training split keeps
    ``long_tailed_counts(n_max, 10, imbalance)`` of the rest. The default imbalance 50 keeps at least 2
    images in every class (IF above ``n_max`` would empty the rarest class). ``views=True`` adds a second
    view of every training image, ``x_train_aug``: the image shifted by one pixel in one of the 8 directions
    (seeded, zero fill), standardised like the training split (the measured effective number takes its
    radius from it).
    """
    from sklearn.datasets import load_digits

    imbalance = DEFAULT_IMBALANCE["digits-lt"] if imbalance is None else _check_imbalance(imbalance)
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.RandomState(0)
    test_idx, pool_idx = [], []
    for cls in range(10):
        idx = np.where(y == cls)[0]
        rng.shuffle(idx)
        if len(idx) < test_per_class + n_max:
            raise ValueError(f"digits class {cls} has {len(idx)} images; test_per_class + n_max = "
                             f"{test_per_class + n_max} is too many")
        test_idx.append(idx[:test_per_class])
        pool_idx.append(idx[test_per_class:])
    pool_idx = np.concatenate(pool_idx)
    counts = long_tailed_counts(n_max, 10, imbalance, profile)
    train_idx = pool_idx[long_tailed_indices(y[pool_idx], counts, seed=0)]
    test_idx = np.concatenate(test_idx)
    x_aug = _shifted_digits(x[train_idx]) if views else None
    x_train, x_test, x_aug = _standardise_views(x[train_idx], x[test_idx], x_aug)
    meta = {"n_max": n_max, "test_per_class": test_per_class, "profile": profile}
    if views:
        meta["views"] = True
    return LongTailedData("digits-lt", x_train, y[train_idx], x_test, y[test_idx], 10, "tabular", imbalance, meta,
                          x_train_aug=x_aug)


def _shifted_digits(x: np.ndarray) -> np.ndarray:
    """Each flattened 8x8 image moved by one pixel in a random direction of the 8 (own seeded stream)."""
    rng = np.random.RandomState(1)
    moves = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    out = np.zeros_like(x).reshape(-1, 8, 8)
    images = x.reshape(-1, 8, 8)
    for i, k in enumerate(rng.randint(0, len(moves), size=len(x))):
        dy, dx = moves[k]
        out[i, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
            images[i, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
    return out.reshape(len(x), 64)


def make_synthetic_lt(imbalance: Optional[float] = None, *, num_classes: int = 10, dim: int = 16,
                      n_max: int = 500, test_per_class: int = 200, separation: float = 2.5,
                      profile: str = "exp", data_seed: int = 0) -> LongTailedData:
    """Overlapping isotropic Gaussian classes: unit covariance, means at distance ``separation`` from the
    origin in random directions (``data_seed``). Smaller ``separation`` means more overlap: the tail
    classes' few samples then cover little new ground, the regime where effective numbers matter.
    Training counts follow ``long_tailed_counts``; the test split has ``test_per_class`` per class.
    """
    imbalance = DEFAULT_IMBALANCE["synthetic-lt"] if imbalance is None else _check_imbalance(imbalance)
    separation = _non_negative(separation, "separation")
    dim, test_per_class = _whole(dim, "dim"), _whole(test_per_class, "test_per_class")
    counts = long_tailed_counts(n_max, num_classes, imbalance, profile)
    rng = np.random.RandomState(data_seed)
    means = _class_means(rng, num_classes, dim, separation)

    def draw(per_class):
        xs = [rng.normal(size=(n, int(dim))) + means[c] for c, n in enumerate(per_class)]
        ys = [np.full(n, c, dtype=np.int64) for c, n in enumerate(per_class)]
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys)

    x_train, y_train = draw(counts)
    x_test, y_test = draw([int(test_per_class)] * num_classes)
    return LongTailedData("synthetic-lt", x_train, y_train, x_test, y_test, int(num_classes), "tabular", imbalance,
                          {"n_max": n_max, "dim": int(dim), "separation": separation, "profile": profile,
                           "test_per_class": int(test_per_class), "data_seed": data_seed})


def _whole(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _non_negative(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _class_means(rng: np.random.RandomState, num_classes: int, dim: int, separation: float) -> np.ndarray:
    """Class centres at distance ``separation`` from the origin, in random directions."""
    directions = rng.normal(size=(num_classes, dim))
    return separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)


def make_prototypes_lt(imbalance: Optional[float] = None, *, num_classes: int = 10, n_max: int = 2000,
                       prototypes=100, dim: int = 16, separation: float = 2.0, prototype_spread: float = 1.5,
                       noise: float = 0.3, test_per_class: int = 300, profile: str = "exp",
                       data_seed: int = 0, views: bool = False, feature_map: Optional[str] = None,
                       feature_dim: Optional[int] = None) -> LongTailedData:
    """Long-tailed classes made of a limited number of prototypes: the premise of Cui et al. by construction.

    Class ``c`` has ``prototypes`` = P fixed points around its centre (centres at distance ``separation``
    in random directions, prototypes at ``prototype_spread`` standard deviations around them, in ``dim``
    dimensions); every example, training or test, is a prototype of its class drawn uniformly at random
    plus Gaussian ``noise``. Examples of one prototype are near-duplicates, so a class of n examples
    covers on average ``P (1 - (1 - 1/P)^n)`` distinct prototypes -- exactly the paper's effective number
    ``E_n = (1 - beta^n) / (1 - beta)`` with ``beta = (P - 1) / P`` (0.99 for the default P = 100). With
    the default head of 2,000 examples the head class covers all its prototypes (E ~ 100) while the
    tail of 20 covers about 18: inverse frequency weights them 1 : 100, the effective numbers 1 : 5.5.

    Training counts follow :func:`long_tailed_counts` (default IF 100: 2000 ... 20), the test split has
    ``test_per_class`` examples per class drawn the same way. Features are standardised with the
    training split's statistics. ``meta`` records ``premise_beta`` = (P - 1) / P, the distinct
    prototypes each class's training split covers, and the effective number at ``premise_beta``.

    The variant of the measured effective number (:mod:`cbbench.effective`): ``prototypes`` may be one
    count per class (e.g. :func:`varied_prototypes`, independent of the class counts; ``premise_beta``
    is then per class); ``views=True`` also draws a second view of every training example (the same
    prototype, fresh noise: an "augmented copy") into ``x_train_aug``; ``feature_map="mlp"`` passes every
    example through one fixed random nonlinear map (``tanh`` layer, ``feature_dim`` outputs, default
    ``dim``) before standardisation. The defaults give exactly the data of earlier versions.
    """
    from ..weights import effective_number

    imbalance = DEFAULT_IMBALANCE["prototypes-lt"] if imbalance is None else _check_imbalance(imbalance)
    per_class_prototypes = not isinstance(prototypes, (int, np.integer, float))
    if per_class_prototypes:
        p_list = [_whole(p, "prototypes") for p in prototypes]
        if len(p_list) != num_classes:
            raise ValueError(f"prototypes must be one whole number, or one per class ({num_classes}), got "
                             f"{len(p_list)} values")
    else:
        p_list = [_whole(prototypes, "prototypes")] * int(num_classes)
    dim, test_per_class = _whole(dim, "dim"), _whole(test_per_class, "test_per_class")
    separation = _non_negative(separation, "separation")
    prototype_spread = _non_negative(prototype_spread, "prototype_spread")
    noise = _non_negative(noise, "noise")
    if feature_map not in (None, "mlp"):
        raise ValueError(f"feature_map must be None or 'mlp', got {feature_map!r}")
    if feature_dim is not None and feature_map is None:
        raise ValueError("feature_dim sets the output of feature_map; pass feature_map='mlp' too")
    counts = long_tailed_counts(n_max, num_classes, imbalance, profile)
    rng = np.random.RandomState(data_seed)
    means = _class_means(rng, num_classes, dim, separation)
    # one (P_c, dim) block per class, drawn in class order: for a single P the same stream as one (C, P, dim) draw
    centres = [means[c] + prototype_spread * rng.normal(size=(p, dim)) for c, p in enumerate(p_list)]

    def draw(per_class):
        which = [rng.randint(0, p_list[c], size=n) for c, n in enumerate(per_class)]
        xs = [centres[c][k] + noise * rng.normal(size=(len(k), dim)) for c, k in enumerate(which)]
        ys = [np.full(n, c, dtype=np.int64) for c, n in enumerate(per_class)]
        return np.concatenate(xs), np.concatenate(ys), which

    x_train, y_train, which = draw(counts)
    x_test, y_test, _ = draw([test_per_class] * num_classes)
    x_aug = None
    if views:  # drawn after everything else, so the other arrays stay those of views=False
        x_aug = np.concatenate([centres[c][k] + noise * rng.normal(size=(len(k), dim)) for c, k in enumerate(which)])
    meta_map = {}
    if feature_map is not None:
        feature_dim = dim if feature_dim is None else _whole(feature_dim, "feature_dim")
        apply = _random_feature_map(dim, feature_dim, data_seed)
        x_train, x_test = apply(x_train), apply(x_test)
        x_aug = None if x_aug is None else apply(x_aug)
        meta_map = {"feature_map": feature_map, "feature_dim": feature_dim}
    x_train, x_test, x_aug = _standardise_views(x_train, x_test, x_aug)
    premise = [(p - 1) / p for p in p_list]
    effective = [effective_number([n], b)[0].item() for n, b in zip(counts, premise)]
    meta = {"n_max": n_max, "prototypes": p_list if per_class_prototypes else p_list[0], "dim": dim,
            "separation": separation, "prototype_spread": prototype_spread, "noise": noise, "profile": profile,
            "test_per_class": test_per_class, "data_seed": data_seed,
            "premise_beta": premise if per_class_prototypes else premise[0],
            "distinct_prototypes": [int(len(np.unique(k))) for k in which],
            "effective_number": [round(float(e), 2) for e in effective], **meta_map}
    if views:
        meta["views"] = True
    if per_class_prototypes or views or feature_map is not None:
        # the scale the measured effective number must resolve: within a class, the median distance from a
        # prototype to its nearest other prototype (median over classes; input space, before any feature map)
        meta["prototype_spacing"] = _prototype_spacing(centres)
    return LongTailedData("prototypes-lt", x_train, y_train, x_test, y_test, int(num_classes), "tabular", imbalance,
                          meta, x_train_aug=x_aug)


def varied_prototypes(num_classes: int, low: int = 10, high: int = 1000, seed: int = 0) -> list:
    """Prototypes per class drawn log-uniformly in [low, high] (seeded), independent of the class counts:
    the known truth of the measured effective number's validation."""
    low, high = _whole(low, "low"), _whole(high, "high")
    if high < low:
        raise ValueError(f"high must be >= low, got {low}, {high}")
    rng = np.random.RandomState(seed)
    draws = rng.uniform(math.log(low), math.log(high), size=_whole(num_classes, "num_classes"))
    return [int(round(math.exp(v))) for v in draws]


def _prototype_spacing(centres) -> Optional[float]:
    import torch

    spacing = []
    for c in centres:
        if len(c) > 1:
            d = torch.cdist(torch.from_numpy(c), torch.from_numpy(c))
            d.fill_diagonal_(math.inf)
            spacing.append(float(d.min(dim=1).values.median()))
    return float(np.median(spacing)) if spacing else None


def _random_feature_map(dim: int, out_dim: int, seed: int):
    """A fixed random nonlinear map R^dim -> R^out_dim: ``B tanh(A x / sqrt(dim) + b) / sqrt(H)``, H = 4 out_dim,
    drawn from its own stream (seeded by ``seed``), so the data's own draws do not move."""
    rng = np.random.RandomState([int(seed), 1])
    hidden = 4 * out_dim
    a = rng.normal(size=(dim, hidden)) / math.sqrt(dim)
    b = 0.5 * rng.normal(size=hidden)
    w = rng.normal(size=(hidden, out_dim)) / math.sqrt(hidden)
    return lambda x: np.tanh(x @ a + b) @ w


def _standardise_views(x_train: np.ndarray, x_test: np.ndarray, x_aug: Optional[np.ndarray]):
    """:func:`_standardise`, and the second view of the training split with the same statistics."""
    if x_aug is None:
        return (*_standardise(x_train, x_test), None)
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    return tuple(scaler.transform(v).astype(np.float32) for v in (x_train, x_test, x_aug))


def _cifar_folder(data_dir, num_classes: int) -> str:
    folder, train_files, test_file, _ = CIFAR_LAYOUT[num_classes]
    expected = (f"expected the python version of CIFAR-{num_classes} (https://www.cs.toronto.edu/~kriz/cifar.html): "
                f"DIR/{folder}/{{{', '.join(train_files + [test_file])}}}, pickles with keys b'data' "
                f"(N x 3072 uint8) and {CIFAR_LAYOUT[num_classes][3]!r}; pass --data-dir DIR (or the {folder} "
                "folder itself)")
    if data_dir is None:
        raise MissingOption(f"cifar{num_classes}-lt needs a data directory; {expected}")
    data_dir = os.fspath(data_dir)
    for candidate in (os.path.join(data_dir, folder), data_dir):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in train_files + [test_file]):
            return candidate
    raise DataFileNotFound(f"no CIFAR-{num_classes} data under {data_dir!r}; {expected}")


def _read_cifar_pickle(path: str, label_key: bytes):
    expected = f"expected a CIFAR python pickle: a dict with b'data' (N x 3072 uint8) and {label_key!r} (N labels)"
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc}); {expected}") from None
    except Exception as exc:  # a truncated or corrupted pickle raises any of a dozen exception types
        raise DataError(f"{path}: corrupted or truncated ({type(exc).__name__}: {str(exc)[:120]}); "
                        f"{expected}") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: holds a {type(entry).__name__}; {expected}")
    from .userdata import check_values

    try:
        # checked before the casts, which would wrap 256 to 0 and truncate 1.5 to 1 without a word
        data = check_values(np.asarray(entry[b"data"]), np.uint8, f"{path} (b'data')")
        labels = check_values(np.asarray(entry[label_key]), np.int64, f"{path} ({label_key!r})")
    except KeyError as exc:
        raise DataError(f"{path}: not a CIFAR python pickle (missing key {exc.args[0]!r}); {expected}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: unreadable arrays ({exc}); {expected}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: expected b'data' of shape (N, 3072) and N labels, got {data.shape} and "
                         f"{labels.shape} labels")
    return data.reshape(-1, 3, 32, 32), labels


def write_fake_cifar(root, num_classes: int = 10, per_class: int = 5000, test_per_class: int = 1000,
                     seed: int = 0) -> str:
    """Write random images in the CIFAR python-pickle layout under ``root`` and return the folder.

    For tests and for timing the CIFAR recipe where the real data cannot be fetched (the default sizes
    are CIFAR's, so CIFAR-10-LT IF 100 selects 12,406 images); accuracy on it is chance level.
    """
    if num_classes not in CIFAR_LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    folder, train_files, test_file, label_key = CIFAR_LAYOUT[num_classes]
    path = os.path.join(os.fspath(root), folder)
    os.makedirs(path, exist_ok=True)
    rng = np.random.RandomState(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    images = rng.randint(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    for name, idx in zip(train_files, np.array_split(np.arange(len(labels)), len(train_files))):
        with open(os.path.join(path, name), "wb") as fh:
            pickle.dump({b"data": images[idx], label_key: labels[idx].tolist()}, fh)
    test_labels = np.repeat(np.arange(num_classes), test_per_class)
    test_images = rng.randint(0, 256, size=(len(test_labels), 3072), dtype=np.uint8)
    with open(os.path.join(path, test_file), "wb") as fh:
        pickle.dump({b"data": test_images, label_key: test_labels.tolist()}, fh)
    return path


def load_cifar_lt(num_classes: int, data_dir, imbalance: Optional[float] = None, *,
                  profile: str = "exp") -> LongTailedData:
    """CIFAR-10-LT / CIFAR-100-LT from the python pickles: long-tailed training split (n_max = 500 * 10 / C
    per class, i.e. 5,000 or 500), untouched test split."""
    if num_classes not in CIFAR_LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    name = f"cifar{num_classes}-lt"
    imbalance = DEFAULT_IMBALANCE[name] if imbalance is None else _check_imbalance(imbalance)
    folder = _cifar_folder(data_dir, num_classes)
    _, train_files, test_file, label_key = CIFAR_LAYOUT[num_classes]
    parts = [_read_cifar_pickle(os.path.join(folder, f), label_key) for f in train_files]
    x_all = np.concatenate([p[0] for p in parts])
    y_all = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_pickle(os.path.join(folder, test_file), label_key)
    for split, y in (("training", y_all), ("test", y_test)):
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(f"{folder}: {split} labels outside 0..{num_classes - 1}")
    per_class = np.bincount(y_all, minlength=num_classes)
    n_max = int(per_class.min())
    counts = long_tailed_counts(n_max, num_classes, imbalance, profile)
    keep = long_tailed_indices(y_all, counts, seed=0)
    return LongTailedData(name, x_all[keep], y_all[keep], x_test, y_test, num_classes, "image", imbalance,
                          {"n_max": n_max, "profile": profile, "data_dir": folder,
                           "mean": CIFAR_MEAN[num_classes], "std": CIFAR_STD[num_classes]})


def dataset_kind(name: str, data_dir=None, options: Optional[dict] = None) -> str:
    """The kind of examples ``name`` gives (see :data:`DATASET_KINDS`); for folder and list data it
    depends on ``options["images"]`` and, for ``"auto"``, on the size of the first training image."""
    if name in DATASET_KINDS:
        return DATASET_KINDS[name]
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    from . import userdata

    options = options or {}
    images = options.get("images", "auto")
    if images == "auto":  # the loader reads the same first file; a missing one fails there with its message
        first = userdata.first_training_file(name, data_dir, options)
        images = userdata.image_mode("auto", first) if first else "stream"
    else:
        images = userdata.image_mode(images, "")
    return "image" if images == "memory" else "image_files"


def _loader(name: str):
    from . import userdata

    return {"digits-lt": load_digits_lt, "synthetic-lt": make_synthetic_lt, "prototypes-lt": make_prototypes_lt,
            "cifar10-lt": load_cifar_lt, "cifar100-lt": load_cifar_lt, "folder": userdata.load_folder,
            "list": userdata.load_list, "features": userdata.load_features}.get(name, userdata.load_preset)


def _keyword_parameters(name: str) -> frozenset:
    return frozenset(p.name for p in inspect.signature(_loader(name)).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)


def dataset_options(name: str) -> frozenset:
    """The ``options`` :func:`load_dataset` takes for ``name``: its loader's keyword-only parameters (the
    loader's signature is the one list of them), ``features`` for the features file, less ``imbalance``
    and ``progress`` (arguments of :func:`load_dataset` itself)."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    extra = {"features"} if name == "features" else set()
    return (_keyword_parameters(name) | extra) - {"imbalance", "progress"}


def option_flag(option: str) -> str:
    """How the user wrote a dataset option: ``--train-list`` for the command-line ones, else its name."""
    return "--" + option.replace("_", "-") if option in CLI_DATASET_OPTIONS + ("data_dir",) else option


def check_dataset_options(name: str, data_dir=None, options: Optional[dict] = None) -> None:
    """UsageError naming the first of ``data_dir`` / ``options`` that ``name`` does not read, and why: an
    option that does not apply is refused, not ignored."""
    if data_dir is not None and name not in DATA_DIR_DATASETS:
        source = "read from --features" if name == "features" else "generated in memory"
        raise UsageError(f"--data-dir does not apply to --dataset {name}: its data are {source}, no data folder is "
                         f"read (it applies to {', '.join(DATA_DIR_DATASETS)}); remove --data-dir")
    takes = dataset_options(name)
    for option in options or {}:
        if option not in takes:
            users = [d for d in DATASETS if option in dataset_options(d)]
            where = f"it applies to {', '.join(users)}" if users else "no dataset takes it"
            valid = f"; {name} takes {', '.join(sorted(option_flag(o) for o in takes))}" if takes else \
                f"; {name} takes no option"
            raise UsageError(f"{option_flag(option)} does not apply to --dataset {name} ({where}{valid}); "
                             f"remove it")


def load_dataset(name: str, *, data_dir=None, imbalance: Optional[float] = None, progress: bool = True,
                 **options) -> LongTailedData:
    """Load a dataset of :data:`DATASETS` by name; ``options`` go to its loader (e.g. ``n_max``,
    ``separation`` for synthetic-lt, ``profile``; ``train_list``, ``eval_list``, ``eval_split``,
    ``images``, ``crop`` for the image sources of :mod:`cbbench.harness.userdata`); one that the loader
    does not take, or ``data_dir`` for a dataset without a data folder, is a UsageError. ``progress``:
    the decoding and checking bars of the image sources."""
    check_dataset_options(name, data_dir, options)
    if "progress" in _keyword_parameters(name):
        options["progress"] = progress
    if name in ("digits-lt", "synthetic-lt", "prototypes-lt"):
        return _loader(name)(imbalance, **options)
    if name in ("cifar10-lt", "cifar100-lt"):
        return load_cifar_lt(10 if name == "cifar10-lt" else 100, data_dir, imbalance, **options)
    from . import userdata

    if name == "folder":
        return userdata.load_folder(data_dir, imbalance=imbalance, **options)
    if name == "list":
        return userdata.load_list(data_dir, imbalance=imbalance, **options)
    if name == "features":
        return userdata.load_features(options.pop("features", None), imbalance=imbalance, **options)
    return userdata.load_preset(name, data_dir, imbalance=imbalance, **options)

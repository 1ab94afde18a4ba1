"""Long-tail error per method, in percent, from models trained once per dataset in ``setup_cache``.

asv counts every increase as a regression, so everything here is an error (lower is better): top-1
error, balanced error (100 - mean per-class recall) and few-shot error (100 - accuracy on the classes
with fewer than 20 training images). Each value is the mean over :data:`SEEDS` seeds: training is
deterministic for a given seed on a given machine, so an unchanged commit reproduces its numbers
exactly, and a change that only perturbs the random streams (a different operation order, another
initialisation) moves the mean by about its seed spread over sqrt(3): about 7 % of the error for the
noisiest method on digits-LT, 1-3 % for most, inside the gate's factor of 1.15 (docs/design.md,
"Benchmarks and the regression gate").

digits-LT and synthetic-LT train on the CPU in about a minute for all methods and seeds; CIFAR-10-LT runs
only with a GPU and the data (``CBBENCH_CIFAR_DIR`` = a folder holding ``cifar-10-batches-py``;
``CBBENCH_ASV_CIFAR_EPOCHS`` shortens the 200-epoch recipe). ``CBBENCH_ASV_METHODS`` (comma-separated)
trains only those methods (the others are skipped), ``CBBENCH_ASV_SEEDS`` changes the seed count.
"""
import os

import torch

from cbbench.bench import accuracy as acc
from cbbench.harness import DATASETS, METHODS

SEEDS = 3


def _methods():
    chosen = os.environ.get("CBBENCH_ASV_METHODS")
    if not chosen:
        return list(METHODS)
    names = [m.strip() for m in chosen.split(",")]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not all(names):
        raise ValueError(f"CBBENCH_ASV_METHODS: unknown method(s) {unknown or names}; choose from {METHODS}")
    return names


def _seeds():
    seeds = int(os.environ.get("CBBENCH_ASV_SEEDS", SEEDS))
    if seeds < 1:
        raise ValueError(f"CBBENCH_ASV_SEEDS must be >= 1, got {seeds}")
    return list(range(seeds))


def _train(dataset, **overrides):
    """Per-method summary (mean over seeds) of the chosen methods on ``dataset``, or ``{"_skip": why}``."""
    if dataset not in DATASETS:
        return {"_skip": f"the harness has no dataset {dataset!r}"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = acc.run_accuracy(dataset, _methods(), _seeds(), None, device=device, progress=False, **overrides)
    return {row["method"]: row for row in acc.summarize(runs)}


def _error(accuracy):
    return float("nan") if accuracy is None else 100.0 - accuracy


class _Accuracy:
    params = [list(METHODS)]
    param_names = ["method"]
    timeout = 120

    def setup(self, cache, method):
        if method not in cache:
            raise NotImplementedError(cache.get("_skip", f"method {method!r} was not trained"))

    def track_top1_error(self, cache, method):
        return cache[method]["top1_error"]

    track_top1_error.unit = "%"

    def track_balanced_error(self, cache, method):
        return _error(cache[method]["balanced_accuracy"])

    track_balanced_error.unit = "%"

    def track_few_shot_error(self, cache, method):
        return _error(cache[method]["few_shot"])

    track_few_shot_error.unit = "%"


# each class defines its own setup_cache: asv keys the cache by the function's source, so an inherited
# one would be shared between datasets
class DigitsLT(_Accuracy):
    def setup_cache(self):
        return _train("digits-lt")

    setup_cache.timeout = 1800


class SyntheticLT(_Accuracy):
    def setup_cache(self):
        return _train("synthetic-lt")

    setup_cache.timeout = 1800


class Cifar10LT(_Accuracy):
    def setup_cache(self):
        if not torch.cuda.is_available():
            return {"_skip": "CIFAR-10-LT trains only on a GPU"}
        data_dir = os.environ.get("CBBENCH_CIFAR_DIR")
        if not data_dir:
            return {"_skip": "set CBBENCH_CIFAR_DIR to a folder holding cifar-10-batches-py"}
        overrides = {"data_dir": data_dir}
        if os.environ.get("CBBENCH_ASV_CIFAR_EPOCHS"):
            overrides["epochs"] = int(os.environ["CBBENCH_ASV_CIFAR_EPOCHS"])
        return _train("cifar10-lt", **overrides)

    setup_cache.timeout = 4 * 3600

"""Long-tail accuracy per method (percent), from models trained once per dataset in ``setup_cache``.

digits-LT and synthetic-LT train on the CPU in minutes; CIFAR-10-LT runs only with a GPU and the data
(``CBBENCH_CIFAR_DIR`` = a folder holding ``cifar-10-batches-py``; ``CBBENCH_ASV_CIFAR_EPOCHS`` shortens
the 200-epoch recipe).
asv counts increases as regressions: that is right for ``track_top1_error`` and wrong for the
accuracies, so the accuracy tracks are read in the HTML, not used by the regression gate.
"""
import os

import torch

from cbbench.bench import accuracy as acc
from cbbench.harness import DATASETS, METHODS


def _train(dataset, **overrides):
    """Per-method summary of one seed of every method on ``dataset``, or ``{"_skip": reason}``."""
    if dataset not in DATASETS:
        return {"_skip": f"the harness has no dataset {dataset!r}"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = acc.run_accuracy(dataset, None, [0], None, device=device, progress=False, **overrides)
    return {row["method"]: row for row in acc.summarize(runs)}


class _Accuracy:
    params = [METHODS]
    param_names = ["method"]
    timeout = 120

    def setup(self, cache, method):
        if method not in cache:
            raise NotImplementedError(cache.get("_skip", f"method {method!r} was not trained"))

    def track_top1_error(self, cache, method):
        return cache[method]["top1_error"]

    track_top1_error.unit = "%"

    def track_balanced_accuracy(self, cache, method):
        return cache[method]["balanced_accuracy"]

    track_balanced_accuracy.unit = "%"

    def track_few_shot_accuracy(self, cache, method):
        value = cache[method]["few_shot"]
        return float("nan") if value is None else value

    track_few_shot_accuracy.unit = "%"


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

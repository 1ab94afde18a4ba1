"""Accuracy metrics for long-tailed classification, all in percent.

Per-class accuracy is the recall of each class on the test split; balanced accuracy is their mean over
classes present in the test split. Many / medium / few-shot accuracy (Liu et al. 2019) is the mean
per-class accuracy over classes with more than 100, 20 to 100, and fewer than 20 *training* examples;
``None`` when no class falls in a group (and for a class absent from the test split).

Every metric is a function of two integer vectors, the correct predictions and the test examples per
class (:func:`class_tallies`), so shards of the test split evaluated on several ranks give exactly the
metrics of one process once their tallies are summed (:func:`evaluate_distributed`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["MANY_SHOT_MIN", "FEW_SHOT_MAX", "SCALAR_METRICS", "shot_group", "class_tallies", "metrics_from_tallies",
           "evaluate", "evaluate_distributed", "no_metrics"]

# the per-run scalars (percent) that summaries average over seeds
SCALAR_METRICS = ("top1_error", "balanced_accuracy", "many_shot", "medium_shot", "few_shot")

MANY_SHOT_MIN = 100  # many-shot: n > 100
FEW_SHOT_MAX = 20  # few-shot: n < 20


def shot_group(train_count: int) -> str:
    if train_count > MANY_SHOT_MIN:
        return "many"
    if train_count < FEW_SHOT_MAX:
        return "few"
    return "medium"


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def class_tallies(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(2, C) int64: per class, the correct predictions (row 0) and the test examples (row 1)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D arrays of one shape, got {y_true.shape} and {y_pred.shape}")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"y_true holds labels outside 0..{num_classes - 1}")
    correct = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    total = np.bincount(y_true, minlength=num_classes)
    return np.stack([correct, total]).astype(np.int64)


def metrics_from_tallies(tallies, train_counts) -> dict:
    """The result metrics of one run from its (2, C) tallies (:func:`class_tallies`, summed over shards):
    top1_error, balanced_accuracy, per_class_accuracy, many_shot, medium_shot, few_shot (percent) and
    train_counts."""
    correct, support = (np.asarray(t, dtype=np.int64) for t in tallies)
    train_counts = [int(c) for c in train_counts]
    num_classes = len(train_counts)
    if correct.shape != (num_classes,) or support.shape != (num_classes,) or (correct > support).any():
        raise ValueError(f"tallies must be (2, {num_classes}) with correct <= total per class")
    if support.sum() == 0:
        raise ValueError("no test examples to evaluate")
    per_class = [float(100.0 * correct[c] / support[c]) if support[c] else None for c in range(num_classes)]
    groups = {g: [acc for acc, n in zip(per_class, train_counts) if shot_group(n) == g]
              for g in ("many", "medium", "few")}
    top1 = 100.0 * float(correct.sum() / support.sum())
    return {
        "top1_error": 100.0 - top1,
        "balanced_accuracy": _mean(per_class),
        "per_class_accuracy": per_class,
        "many_shot": _mean(groups["many"]),
        "medium_shot": _mean(groups["medium"]),
        "few_shot": _mean(groups["few"]),
        "train_counts": train_counts,
    }


def evaluate(y_true, y_pred, train_counts) -> dict:
    """The result metrics of one run (see :func:`metrics_from_tallies`) from its test labels and
    predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if y_true.size == 0:
        raise ValueError("y_true and y_pred must be non-empty")
    return metrics_from_tallies(class_tallies(y_true, y_pred, len(train_counts)), train_counts)


def evaluate_distributed(y_true, y_pred, train_counts, group=None) -> dict:
    """:func:`evaluate` of the test split whose shards (labels and predictions, unpadded: every example
    on exactly one rank, :func:`cbbench.distributed.even_shard`) the ranks of ``group`` hold: their tallies
    are summed over the ranks, so every rank gets the metrics one process would compute on the whole
    split. A rank's shard may be empty. Without a process group, :func:`evaluate`."""
    from .. import distributed

    tallies = class_tallies(y_true, y_pred, len(train_counts))
    return metrics_from_tallies(distributed.all_reduce_sum(torch.from_numpy(tallies), group).numpy(), train_counts)


def no_metrics(train_counts) -> dict:
    """The result metrics of a run that produced no usable model (a diverged one): every metric None."""
    return {**{key: None for key in SCALAR_METRICS}, "per_class_accuracy": None,
            "train_counts": [int(c) for c in train_counts]}

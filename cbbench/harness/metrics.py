"""Accuracy metrics for long-tailed classification, all in percent.

Per-class accuracy is the recall of each class on the test split; balanced accuracy is their mean over
classes present in the test split. Many / medium / few-shot accuracy (Liu et al. 2019) is the mean
per-class accuracy over classes with more than 100, 20 to 100, and fewer than 20 *training* examples;
``None`` when no class falls in a group (and for a class absent from the test split).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["MANY_SHOT_MIN", "FEW_SHOT_MAX", "SCALAR_METRICS", "shot_group", "evaluate", "no_metrics"]

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


def evaluate(y_true, y_pred, train_counts) -> dict:
    """The result metrics of one run: top1_error, balanced_accuracy, per_class_accuracy, many_shot,
    medium_shot, few_shot (percent) and train_counts."""
    from sklearn.metrics import confusion_matrix  # imported here: scikit-learn takes seconds to import

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    train_counts = [int(c) for c in train_counts]
    num_classes = len(train_counts)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D arrays of one shape, got {y_true.shape} "
                         f"and {y_pred.shape}")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(f"y_true holds labels outside 0..{num_classes - 1}")
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    support = cm.sum(axis=1)
    per_class = [float(100.0 * cm[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    groups = {g: [acc for acc, n in zip(per_class, train_counts) if shot_group(n) == g]
              for g in ("many", "medium", "few")}
    top1 = 100.0 * float(np.mean(y_true == y_pred))
    return {
        "top1_error": 100.0 - top1,
        "balanced_accuracy": _mean(per_class),
        "per_class_accuracy": per_class,
        "many_shot": _mean(groups["many"]),
        "medium_shot": _mean(groups["medium"]),
        "few_shot": _mean(groups["few"]),
        "train_counts": train_counts,
    }



def no_metrics(train_counts) -> dict:
    """The result metrics of a run that produced no usable model (a diverged one): every metric None."""
    return {**{key: None for key in SCALAR_METRICS}, "per_class_accuracy": None,
            "train_counts": [int(c) for c in train_counts]}

"""PNG plots of a comparison, drawn from the run results (matplotlib, Agg backend)."""
from __future__ import annotations

import numpy as np

__all__ = ["plot_accuracy_per_method", "plot_per_class_accuracy"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_method(runs):
    groups = {}
    for run in runs:
        groups.setdefault(run["method"], []).append(run)
    return groups


def _values(group, key):
    return np.array([r[key] for r in group if r[key] is not None], dtype=float)


def plot_accuracy_per_method(runs: list, path: str) -> None:
    """Top-1 accuracy and few-shot accuracy per method: bars at the mean, error bars one sample std,
    dots for the individual seeds."""
    plt = _pyplot()
    groups = _by_method(runs)
    names = list(groups)
    panels = [("top-1 accuracy (%)", lambda g: 100.0 - _values(g, "top1_error")),
              ("few-shot accuracy (%)", lambda g: _values(g, "few_shot"))]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.6), sharey=True)
    y = np.arange(len(names))
    for ax, (label, get) in zip(axes, panels):
        lows, highs = [], []
        for i, name in enumerate(names):
            vals = get(groups[name])
            if vals.size == 0:
                continue
            std = vals.std(ddof=1) if vals.size > 1 else 0.0
            ax.barh(i, vals.mean(), xerr=std, color="C0", alpha=0.6, capsize=3)
            ax.plot(vals, np.full(vals.size, i), "k.", markersize=4)
            ax.annotate(f"{vals.mean():.1f}", (vals.max() + std, i), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7)
            lows.append(vals.min() - std)
            highs.append(vals.max() + std)
        if lows:  # zoom on the spread between methods, not on 0..100
            span = max(highs) - min(lows)
            ax.set_xlim(max(0.0, min(lows) - 0.3 * span - 1), min(100.0, max(highs) + 0.15 * span + 1))
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    first = runs[0]
    fig.suptitle(f"{first['dataset']} (imbalance {first['config']['imbalance']:g}), "
                 f"{len({r['seed'] for r in runs})} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_class_accuracy(runs: list, path: str) -> None:
    """Per-class test accuracy (mean over seeds) against the class's training count, one line per method."""
    plt = _pyplot()
    groups = _by_method(runs)
    counts = np.asarray(runs[0]["train_counts"], dtype=float)
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(11, 5.5))
    cmap = plt.get_cmap("tab20")
    for k, (name, group) in enumerate(groups.items()):
        acc = np.array([[np.nan if a is None else a for a in r["per_class_accuracy"]] for r in group], dtype=float)
        mean = np.nanmean(acc, axis=0)
        ax.plot(counts[order], mean[order], marker="o", markersize=3, linewidth=1.2, color=cmap(k % 20), label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(counts.tolist())), [f"{c:g}" for c in sorted(set(counts.tolist()))], fontsize=7)
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("training examples of the class (log scale, head to tail)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{runs[0]['dataset']}: per-class accuracy against class count")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

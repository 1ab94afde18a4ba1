"""PNG plots of a comparison, drawn from the run results (matplotlib, Agg backend), written whole with the
umask's permissions (:func:`cbbench.harness.output.save_figure`)."""
from __future__ import annotations

import numpy as np

from .compare import run_label
from .output import save_figure

__all__ = ["plot_accuracy_per_method", "plot_per_class_accuracy", "plot_beta_experiment"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_method(runs):
    groups = {}
    for run in runs:
        groups.setdefault(run_label(run), []).append(run)
    return groups


def _diverged_note(group) -> str:
    n = sum(r.get("status") == "diverged" for r in group)
    return f" ({n} of {len(group)} diverged)" if n else ""


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
                ax.annotate("no finished run" + _diverged_note(groups[name]), (0, i), xycoords=("axes fraction", "data"),
                            xytext=(4, 0), textcoords="offset points", va="center", fontsize=7, color="C3")
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
    axes[0].set_yticks(y, [name + _diverged_note(groups[name]) for name in names])
    axes[0].invert_yaxis()
    first = runs[0]
    fig.suptitle(f"{first['dataset']} (imbalance {first['config']['imbalance']:g}), "
                 f"{len({r['seed'] for r in runs})} seed(s)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
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
        finished = [r["per_class_accuracy"] for r in group if r.get("per_class_accuracy") is not None]
        if not finished:  # every seed diverged: nothing to draw, say so in the legend
            ax.plot([], [], color=cmap(k % 20), label=name + _diverged_note(group))
            continue
        acc = np.array([[np.nan if a is None else a for a in pc] for pc in finished], dtype=float)
        mean = np.nanmean(acc, axis=0)
        ax.plot(counts[order], mean[order], marker="o", markersize=3, linewidth=1.2, color=cmap(k % 20),
                label=name + _diverged_note(group))
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
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_beta_experiment(runs: list, path: str) -> None:
    """Balanced error against beta, one panel per loss of the beta experiment: the class-balanced method
    at each beta (mean ± sample std over seeds, dots for the seeds), the unweighted and inverse-frequency
    methods of the same loss as horizontal reference lines (band: ± std). Betas sit at even spacing."""
    from .beta import beta_table

    plt = _pyplot()
    table = beta_table(runs)
    if not table:
        raise ValueError("no class-balanced method ran at two betas or more: nothing to plot")
    fig, axes = plt.subplots(1, len(table), figsize=(4.6 * len(table), 4.0), squeeze=False, sharey=True)
    premise = runs[0].get("config", {}).get("data", {}).get("premise_beta")
    for ax, row in zip(axes[0], table):
        plain, cb, inverse = row["names"]
        betas = [b for b, _ in row["betas"]]
        x = np.arange(len(betas))
        means = np.array([np.nan if s[0] is None else s[0] for _, s in row["betas"]])
        stds = np.array([0.0 if s[1] is None else s[1] for _, s in row["betas"]])
        ax.errorbar(x, means, yerr=stds, color="C1", marker="o", capsize=3, lw=1.5, label=f"{cb} (beta on x)")
        for xi, beta in zip(x, betas):
            vals = [100.0 - r["balanced_accuracy"] for r in runs if r["method"] == cb and r.get("beta") == beta
                    and r.get("balanced_accuracy") is not None]
            ax.plot([xi] * len(vals), vals, "k.", markersize=3)
            if any(r.get("status") == "diverged" for r in runs if r["method"] == cb and r.get("beta") == beta):
                ax.annotate("diverged", (xi, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=7,
                            color="C3")
        for name, stats, style, color in ((f"{plain} (no weighting)", row["unweighted"], "--", "C0"),
                                          (f"{inverse} (1/n)", row["inverse"], ":", "C2")):
            if stats is None or stats[0] is None:
                continue
            mean, std = stats[0], stats[1] or 0.0
            ax.axhline(mean, color=color, ls=style, lw=1.3, label=f"{name}: {mean:.1f}")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.12, lw=0)
        if premise is not None and premise in betas:
            ax.axvline(betas.index(premise), color="0.5", lw=0.8, ls="-.", label=f"data built with beta {premise:g}")
        ax.set_xticks(x, [f"{b:g}" for b in betas])
        ax.set_xlabel("class-balanced beta (0: no weighting; -> 1: inverse frequency)", fontsize=8)
        ax.set_title(f"{row['loss']} loss", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("balanced error (%)")
    seeds = sorted({r["seed"] for r in runs})
    fig.suptitle(f"{runs[0]['dataset']}: balanced error against beta, mean ± std over seeds {seeds}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)

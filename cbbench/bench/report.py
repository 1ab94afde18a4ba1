"""The benchmark report: ``summary.md`` and matplotlib PNGs, drawn by code from recorded results.

* ``speed_<device>.png`` — fwd+bwd speed as a fraction of the bandwidth floor, per loss, case and
  implementation (1.0 = moving only the unavoidable bytes at the measured copy bandwidth);
* ``accuracy_<dataset>.png`` — balanced, few-shot accuracy and top-1 error per method;
* ``per_class_<dataset>.png`` — per-class test accuracy against the class's training count;
* effective number / class weight curves from :func:`cbbench.commands.weights.write_weights_report`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import accuracy as acc
from . import conformance
from .cases import DTYPE_SHORT, LOSS_TITLES, LOSSES
from .providers import IMPLEMENTATIONS
from .speed import format_table, header_text, load_caution

IMPL_COLORS = {"reference": "#9e9e9e", "cpu": "#1b9e77", "cuda": "#d95f02", "cuda_graph": "#e6ab02",
               "eager": "#7570b3", "compile": "#e7298a", "liger": "#66a61e", "balanced_loss": "#a6761d"}
HIGHLIGHT = ("softmax", "cb_softmax", "cb_sigmoid", "cb_focal", "balanced_softmax", "ldam_drw")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speed(result: dict, path) -> Optional[Path]:
    """Grouped bars of ``frac_copy_fwd_bwd`` (log scale) per loss; ``None`` when nothing was timed."""
    rows = [r for r in result["rows"] if r.get("frac_copy_fwd_bwd") is not None]
    if not rows:
        return None
    plt = _pyplot()
    losses = [l for l in LOSSES if any(r["loss"] == l for r in rows)]
    impls = [i for i in IMPLEMENTATIONS if any(r["impl"] == i for r in rows)]
    cases_of = {loss: list(dict.fromkeys((r["shape"], r["dtype"]) for r in rows if r["loss"] == loss))
                for loss in losses}
    # each panel as wide as its cases need (0.95 inch a case, so the shape labels never overlap)
    widths = [max(len(cases_of[loss]), 3) for loss in losses]
    fig, axes = plt.subplots(1, len(losses), figsize=(0.95 * sum(widths) + 2.5, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, loss in zip(axes[0], losses):
        cases = cases_of[loss]
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for j, key in enumerate(cases):
                for r in rows:
                    if r["loss"] == loss and (r["shape"], r["dtype"]) == key and r["impl"] == impl:
                        xs.append(j - 0.4 + width * (k + 0.5))
                        ys.append(r["frac_copy_fwd_bwd"])
            if xs:
                ax.bar(xs, ys, width, label=impl, color=IMPL_COLORS.get(impl))
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{s}\n{DTYPE_SHORT[d]}" for s, d in cases], fontsize=8)
        ax.set_title(LOSS_TITLES[loss])
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of bandwidth floor (fwd+bwd)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    env = result["env"]
    fig.suptitle(f"{env['device_name']} — copy {result['copy_gbps']:.0f} GB/s — torch {env['torch']} — "
                 f"{env['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# Methods whose loss applies class-balanced weights (Cui et al.), from the start or deferred (DRW), for when
# the harness is not importable; cb_sampling samples by the CB weight but its loss is unweighted.
CB_WEIGHTED_METHODS = frozenset({"cb_softmax", "cb_sigmoid", "cb_focal", "cb_softmax_focal", "cb_drw", "ldam_drw"})


def uses_cb_weights(method: str) -> bool:
    """Whether ``method``'s loss uses class-balanced weights, read from the harness's method spec
    (``weighting="cb"``, or deferred re-weighting, which switches to CB weights)."""
    try:
        from ..harness.methods import get_spec
        spec = get_spec(method)
    except (ImportError, ValueError):
        return method in CB_WEIGHTED_METHODS
    return spec.weighting == "cb" or spec.deferred_weighting


def plot_accuracy(summary: Sequence[dict], path) -> Optional[Path]:
    """Per method: balanced accuracy, few-shot accuracy and top-1 error (± std over seeds)."""
    if not summary:
        return None
    plt = _pyplot()
    metrics = ("balanced_accuracy", "few_shot", "top1_error")
    methods = [r["method"] for r in summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 0.32 * len(methods) + 1.6), sharey=True)
    for ax, metric in zip(axes, metrics):
        vals = [r.get(metric) if r.get(metric) is not None else float("nan") for r in summary]
        errs = [r.get(f"{metric}_std") or 0.0 for r in summary]
        colors = ["#d95f02" if uses_cb_weights(m) else "#7570b3" if m == "softmax" else "#9e9e9e" for m in methods]
        ax.barh(range(len(methods)), vals, xerr=errs, color=colors)
        ax.set_title(acc.METRIC_TITLES[metric], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(methods)))
    axes[0].set_yticklabels(methods, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{summary[0]['dataset']}: {summary[0]['runs']} seed(s) per method "
                 "(orange: loss uses class-balanced weights, from the start or deferred; blue: plain softmax)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_per_class(summary: Sequence[dict], path) -> Optional[Path]:
    """Per-class accuracy against training count (log x): every method in grey, a few in colour."""
    rows = [r for r in summary if r.get("per_class_accuracy") and r.get("train_counts")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        pairs = sorted((n, a) for n, a in zip(r["train_counts"], r["per_class_accuracy"]) if a is not None)
        if not pairs:
            continue
        xs, ys = zip(*pairs)
        if r["method"] in HIGHLIGHT:
            ax.plot(xs, ys, marker="o", ms=3, lw=1.5, label=r["method"])
        else:
            ax.plot(xs, ys, color="#bdbdbd", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title(f"{rows[0]['dataset']}: per-class accuracy (grey: other methods)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _rel(path, out_dir) -> str:
    return os.path.relpath(path, out_dir)


def write_report(out_dir, *, speed: Sequence[dict] = (), accuracy_runs: Sequence[dict] = (),
                 weights_pngs: Sequence = (), notes: Sequence[str] = (), phases: Optional[Dict[str, float]] = None,
                 command: str = "make bench", beta_runs: Sequence[dict] = (),
                 held_vectors: Sequence = (), heads: Sequence[dict] = (),
                 measured_lines: Sequence[str] = ()) -> Path:
    """Write PNGs and ``summary.md`` into ``out_dir`` from speed results (as returned by
    :func:`cbbench.bench.speed.run_speed`, one per device), the fused heads' results (``cbbench bench``'s
    heads phase, one per device: ``{"env", "threads", "clock", "rows"}`` of :mod:`cbbench.bench.linear`),
    harness runs, the weights figures and the implementations on the held test vectors
    (:func:`cbbench.bench.conformance.evaluate`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md: List[str] = ["# cbbench benchmark report", "",
                     f"Produced by `{command}`; every number and plot below is generated from the recorded "
                     "results in this folder (`speed/*.json`, `accuracy/`).", ""]
    if phases:
        md += ["Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()), ""]

    md += ["## Speed", ""]
    if not speed:
        md += ["Not run.", ""]
    for result in speed:
        device = result["env"]["device"]
        md += [f"### {device}", "", "```", header_text(result), "```", "",
               "Median ms of forward+backward (loss and d loss/d logits) and forward only, with the 20th-80th "
               "percentile range of the fwd+bwd samples (the minimum is in `speed/<device>/speed.{csv,json}`). "
               "*x floor* = time / (floor bytes / copy bandwidth), floor bytes = 2·N·C·s + targets + weights; "
               "*ops f/b* = operators one call dispatches in forward / backward (TorchDispatchMode count; the "
               "JSON lists them; not counted for torch.compile); *vs eager / vs compile / vs b-loss* = that "
               "peer's fwd+bwd time / this one's, measured in the same run (b-loss: the balanced-loss package).",
               ""]
        caution = load_caution(result)
        if caution:
            md += [f"**Caution:** {caution}", ""]
        md += [format_table(result, markdown=True), ""]
        png = plot_speed(result, out / f"speed_{device.replace(':', '')}.png")
        if png:
            md += [f"![speed vs bandwidth floor on {device}]({_rel(png, out)})", ""]

    for result in heads:
        from .linear import table as heads_table

        env = result["env"]
        memory = any(r.get("extra_mib") is not None for r in result["rows"])
        md += [f"### Fused classifier heads on {env['device']}", "",
               f"One forward+backward of linear + loss (loss and the gradients of hidden, weight and bias), each "
               f"implementation first checked against `F.linear` + the reference loss; median of "
               f"{result['repeats']} rounds, implementations in turn, {result['threads']} torch thread(s), "
               f"{result['clock']} clock; *fused is x faster* = the median over rounds of that implementation's "
               f"time / the fused head's (`cbbench/bench/linear.py`). 1-min load average before/after: "
               f"{env.get('load_average_1min_before')}/{env.get('load_average_1min_after')}."
               + ("" if memory else " Memory not measured in this run (`cbbench bench --full` measures it)."), "",
               heads_table(result["rows"]), ""]

    if held_vectors:
        md += ["### Peers on the held test vectors", "",
               "What each class-balanced loss implementation gives where ports commonly go wrong (the vectors of "
               "cbbench's tests; `cbbench/bench/conformance.py`).", "",
               conformance.format_table(list(held_vectors)), ""]

    md += ["## Accuracy", ""]
    summary = acc.summarize(accuracy_runs) if accuracy_runs else []
    if not summary:
        md += ["Not run.", ""]
    by_dataset: Dict[str, List[dict]] = {}
    for row in summary:
        by_dataset.setdefault(row["dataset"], []).append(row)
    for dataset, rows in by_dataset.items():
        config = next((r.get("config") for r in accuracy_runs if r.get("dataset") == dataset), None)
        md += [f"### {dataset}", "", acc.format_table(rows, markdown=True), ""]
        if config:
            md += ["Config of the first run: `" + ", ".join(f"{k}={v}" for k, v in sorted(dict(config).items())
                                                            if not isinstance(v, (list, dict))) + "`", ""]
        for png in (plot_accuracy(rows, out / f"accuracy_{dataset}.png"),
                    plot_per_class(rows, out / f"per_class_{dataset}.png")):
            if png:
                md += [f"![{png.stem}]({_rel(png, out)})", ""]

    if beta_runs:  # the harness draws its plot and writes its table and measured reading
        from ..harness.beta import report_section
        md += report_section(beta_runs, out)

    md += ["## Class-balanced weights", ""]
    if weights_pngs:
        md += [f"![{Path(p).stem}]({_rel(p, out)})" for p in weights_pngs] + [""]
    else:
        md += ["Not drawn.", ""]
    md += list(measured_lines)  # the measured effective number (cbbench/commands/weights.py, measured_report)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path = out / "summary.md"
    path.write_text("\n".join(md))
    return path

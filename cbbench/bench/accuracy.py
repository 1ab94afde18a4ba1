"""Accuracy comparison over the long-tail harness (:mod:`cbbench.harness`), and its per-method summary.

Runs are done by ``cbbench.harness.compare.run_comparison``; this module calls it and aggregates its
per-run dicts (metrics in percent) over seeds.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..harness import METHODS, compare
from ..harness.compare import SCALAR_METRICS as METRICS
from ..harness.compare import mean_std_count

METRIC_TITLES = {"top1_error": "top-1 error %", "balanced_accuracy": "balanced acc %", "many_shot": "many-shot %",
                 "medium_shot": "medium-shot %", "few_shot": "few-shot %"}


def run_accuracy(dataset: str = "digits-lt", methods: Optional[Sequence[str]] = None, seeds=1,
                 out_dir: Optional[str] = None, *, device: str = "cpu", progress: bool = True,
                 plots: bool = True, on_method: Optional[Callable[[str], None]] = None, **overrides) -> List[dict]:
    """Every run of ``methods`` (default: all) x ``seeds`` on ``dataset``. With ``out_dir`` the harness's files are written there; ``plots=False``
    leaves out its PNGs (``cbbench bench`` draws its own in the report) and writes only ``results.csv``,
    ``summary.md`` and ``runs.json``, with the harness's writers. ``on_method`` (with ``plots=False``) is
    called after each method's runs (``cbbench bench``'s progress bar): the methods then run one
    comparison each, in order. Other ``overrides`` go to :func:`cbbench.harness.compare.run_comparison`
    (``betas``, ``reuse``, ``epochs``, ...)."""
    methods = list(methods) if methods else list(METHODS)
    if plots or out_dir is None and on_method is None:
        return compare.run_comparison(dataset, methods, seeds, out_dir, device=device, progress=progress,
                                      **overrides)
    start = time.perf_counter()
    if on_method is None:
        runs = compare.run_comparison(dataset, methods, seeds, None, device=device, progress=progress, **overrides)
    else:
        runs = []
        for method in methods:
            runs += compare.run_comparison(dataset, [method], seeds, None, device=device, progress=progress,
                                           **overrides)
            on_method(method)
    if out_dir is None:
        return runs
    wall = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)
    compare.write_results_csv(runs, os.path.join(out_dir, "results.csv"))
    compare.write_summary_md(runs, os.path.join(out_dir, "summary.md"), wall_time_s=wall)
    with open(os.path.join(out_dir, "runs.json"), "w") as fh:
        json.dump(runs, fh, indent=1)
    return runs


def summarize(runs: Sequence[dict]) -> List[dict]:
    """One row per (dataset, method) in first-seen order: mean and sample std over seeds of each metric,
    the per-class accuracy averaged over seeds, and the training counts."""
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["method"]), []).append(run)
    rows = []
    for (dataset, method), items in groups.items():
        row = {"dataset": dataset, "method": method, "runs": len(items)}
        for metric in METRICS:
            row[metric], row[f"{metric}_std"], _ = mean_std_count([r.get(metric) for r in items])
        per_class = [list(r["per_class_accuracy"]) for r in items if r.get("per_class_accuracy") is not None]
        if per_class:
            row["per_class_accuracy"] = [mean_std_count(col)[0] for col in zip(*per_class)]
        row["train_counts"] = [int(c) for c in items[0].get("train_counts", [])]
        rows.append(row)
    return rows


def format_table(summary: Sequence[dict], markdown: bool = False) -> str:
    """Per-method table: mean (± std over seeds when there are several) of each metric."""
    head = ["dataset", "method", "seeds"] + [METRIC_TITLES[m] for m in METRICS]

    def cell(row, metric):
        mean, std = row.get(metric), row.get(f"{metric}_std")
        if mean is None:
            return "—"
        return f"{mean:.2f}" + (f" ± {std:.2f}" if row["runs"] > 1 and std is not None else "")

    lines = [[r["dataset"], r["method"], str(r["runs"])] + [cell(r, m) for m in METRICS] for r in summary]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(cells) + " |" for cells in lines])
    widths = [max(len(head[i]), *(len(row[i]) for row in lines)) if lines else len(head[i]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    return "\n".join(out)

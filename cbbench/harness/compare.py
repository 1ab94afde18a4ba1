"""Run a grid of methods x seeds on one dataset and write results.csv, summary.md and plots.

``run_comparison`` is the Python API behind ``cbbench compare`` (and the asv accuracy benchmarks):
the dataset is loaded once; every run trains from its own seed.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from typing import Iterable, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from .datasets import DATASETS, load_dataset
from .methods import get_spec
from .train import TrainConfig, resolve_config, train_run

__all__ = ["run_comparison", "parse_seeds", "summarize", "write_results_csv", "write_summary_md"]

SCALAR_METRICS = ("top1_error", "balanced_accuracy", "many_shot", "medium_shot", "few_shot")
_RESERVED = {"dataset", "method", "seed", "imbalance", "epochs", "device"}
_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in _RESERVED)


def parse_seeds(seeds: Union[int, Iterable[int]]) -> list:
    """``K`` -> seeds ``0..K-1``; a list of whole numbers is kept as given (no duplicates)."""
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds (a count) must be >= 1, got {seeds}")
        return list(range(int(seeds)))
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of whole numbers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds!r}")
    return [int(s) for s in seeds]


def run_comparison(dataset: str, methods: list, seeds: Union[int, list], out_dir: Optional[str] = None, *,
                   imbalance: Optional[float] = None, epochs: Optional[int] = None, device: str = "cpu",
                   progress: bool = True, **overrides) -> list:
    """Train every method with every seed on ``dataset``; return one result dict per run (the keys of
    ``result.json``). ``overrides`` are :class:`TrainConfig` fields (``beta``, ``gamma``, ``batch_size``,
    ``lr``, ``model``, ``data_dir``, ``dataset_options``, ...). With ``out_dir``, also write
    ``results.csv``, ``summary.md``, ``runs.json`` and the PNG plots there."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    if not methods:
        raise ValueError("methods must name at least one method")
    for m in methods:
        get_spec(m)
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat: {methods!r}")
    seeds = parse_seeds(seeds)
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {', '.join(_OVERRIDABLE)}")

    configs = [TrainConfig(dataset, m, seed=s, imbalance=imbalance, epochs=epochs, device=device, **overrides)
               for m in methods for s in seeds]
    resolve_config(configs[0])  # fail on a bad option before loading data
    first = configs[0]
    data = load_dataset(dataset, data_dir=first.data_dir, imbalance=imbalance, **first.dataset_options)
    start = time.perf_counter()
    runs = []
    for config in tqdm(configs, desc=f"{dataset} comparison", disable=not progress, unit="run"):
        runs.append(train_run(config, data, progress=progress))
    wall = time.perf_counter() - start
    if out_dir is not None:
        from .plots import plot_accuracy_per_method, plot_per_class_accuracy

        os.makedirs(out_dir, exist_ok=True)
        write_results_csv(runs, os.path.join(out_dir, "results.csv"))
        write_summary_md(runs, os.path.join(out_dir, "summary.md"), wall_time_s=wall)
        with open(os.path.join(out_dir, "runs.json"), "w") as fh:
            json.dump(runs, fh, indent=1)
        plot_accuracy_per_method(runs, os.path.join(out_dir, "accuracy_per_method.png"))
        plot_per_class_accuracy(runs, os.path.join(out_dir, "per_class_accuracy.png"))
    return runs


def mean_std_count(values) -> tuple:
    """(mean, sample std or None, count) over the values that are neither None nor NaN."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None), len(vals)


def summarize(runs: list) -> list:
    """Per method (first-seen order): mean, std and count of each scalar metric, and the mean time."""
    by_method = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    rows = []
    for method, group in by_method.items():
        row = {"method": method, "runs": len(group), "seeds": [r["seed"] for r in group]}
        for key in SCALAR_METRICS:
            row[key] = mean_std_count([r[key] for r in group])
        row["train_time_s"] = float(np.mean([r["train_time_s"] for r in group]))
        rows.append(row)
    return rows


def write_results_csv(runs: list, path: str) -> None:
    """One row per run: scalar metrics, training time and per-class accuracy (acc_class_i)."""
    num_classes = max(len(r["per_class_accuracy"]) for r in runs)
    header = ["dataset", "method", "seed", *SCALAR_METRICS, "train_time_s"] + [f"acc_class_{i}" for i in
                                                                               range(num_classes)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in runs:
            per_class = list(r["per_class_accuracy"]) + [None] * (num_classes - len(r["per_class_accuracy"]))
            writer.writerow([r["dataset"], r["method"], r["seed"], *(r[k] for k in SCALAR_METRICS),
                             f"{r['train_time_s']:.3f}", *per_class])


def _fmt(stat) -> str:
    mean, std, _ = stat
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def write_summary_md(runs: list, path: str, *, wall_time_s: Optional[float] = None) -> None:
    """A markdown table, mean ± sample std over seeds per method, and the run settings."""
    first = runs[0]
    cfg = first["config"]
    counts = first["train_counts"]
    seeds = sorted({r["seed"] for r in runs})
    decays = ", ".join(f"x{f:g} at epoch {m}" for m, f in zip(cfg["milestones"], cfg["lr_factors"]))
    lines = [
        f"# {first['dataset']}: long-tailed method comparison",
        "",
        f"- imbalance factor {cfg['imbalance']:g}; training counts per class {counts} "
        f"({sum(counts)} examples); test counts {cfg['test_counts']}",
        f"- model {cfg['model']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']:g} "
        f"(warm-up {cfg['warmup_epochs']}, {decays}), weight decay {cfg['weight_decay']:g}; beta {cfg['beta']}, "
        f"focal gamma {cfg['gamma']}",
        f"- seeds {seeds}; device {cfg['device']} ({cfg['accel']}); loss backend {cfg['loss_backend']}; "
        f"torch {cfg['torch']}, {cfg['threads_used']} CPU thread(s) per run"
        + (f"; wall time {wall_time_s:.1f} s for {len(runs)} runs" if wall_time_s is not None else ""),
        "- metrics in %, mean ± sample std over seeds; many/medium/few-shot: classes with >100 / 20-100 / "
        "<20 training examples ('–': no class in that group)",
        "",
        "| method | top-1 error | balanced acc. | many-shot | medium-shot | few-shot | runs | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summarize(runs):
        lines.append(f"| {row['method']} | " + " | ".join(_fmt(row[k]) for k in SCALAR_METRICS)
                     + f" | {row['runs']} | {row['train_time_s']:.2f} |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")

"""The beta experiment of Cui et al. (2019): balanced error against the class-balanced beta, per loss.

For each loss of :data:`~cbbench.harness.methods.BETA_FAMILIES` the class-balanced method runs at
several betas; beta = 0 gives every class weight 1 (the unweighted loss), beta -> 1 gives weights
proportional to 1/n (inverse frequency), so the unweighted and the inverse-frequency methods of the
same loss are the two reference lines. The paper's claim is that an intermediate beta beats both.

:func:`beta_reading` says whether it does in a set of runs, from the numbers: the best intermediate beta
(picked on the test split, which favours it) "beats" a baseline only when its mean balanced error is
lower by more than twice the standard error of the difference of the two means over seeds
(``sqrt(s1^2/n1 + s2^2/n2)``); within that band it is "within seed noise".
"""
from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence

from .compare import mean_std_count, run_comparison
from .methods import BETA_FAMILIES

__all__ = ["DEFAULT_BETAS", "BENCH_BETAS", "BENCH_DATASETS", "BETA_METHODS", "SCALE_METHOD", "has_beta_sweep", "beta_table", "beta_reading",
           "beta_markdown", "format_readings", "run_beta_experiments", "report_section"]

DEFAULT_BETAS = (0.0, 0.9, 0.99, 0.999, 0.9999)
# cbbench bench leaves out beta = 0: it trains exactly the unweighted loss (all weights 1; a test checks
# the results are identical), which the experiment runs anyway as its "no weighting" reference
BENCH_BETAS = (0.9, 0.99, 0.999, 0.9999)
# digits-LT: the embedded default (at most 120 examples per class, where beta 0.9999 is inverse frequency);
# prototypes-LT: built so that the paper's premise holds (effective number far below n in the head)
BENCH_DATASETS = ("digits-lt", "prototypes-lt")
BETA_METHODS = tuple(m for family in BETA_FAMILIES.values() for m in family)
# not part of the sweep: shows how much a balanced error the data allow without re-weighting
SCALE_METHOD = "balanced_softmax"


def _balanced_error(runs: Sequence[dict]) -> tuple:
    """(mean, std, count) of the balanced error in % over the runs that did not diverge."""
    return mean_std_count([None if r.get("balanced_accuracy") is None else 100.0 - r["balanced_accuracy"]
                           for r in runs])


def _select(runs, method, beta=None) -> list:
    return [r for r in runs if r["method"] == method and (beta is None or r.get("beta") == beta)]


def _betas(runs, method) -> list:
    return sorted({r["beta"] for r in runs if r["method"] == method and r.get("beta") is not None})


def has_beta_sweep(runs: Sequence[dict]) -> bool:
    """Whether a class-balanced method of :data:`BETA_FAMILIES` ran at two betas or more."""
    return any(len(_betas(runs, cb)) > 1 for _, cb, _ in BETA_FAMILIES.values())


def beta_table(runs: Sequence[dict]) -> List[dict]:
    """Per loss with a sweep: ``{"loss", "method", "betas": [(beta, stats)], "unweighted": stats,
    "inverse": stats}``; stats = (mean, std, count) of the balanced error in %, None when not run."""
    rows = []
    for loss, (plain, cb, inverse) in BETA_FAMILIES.items():
        betas = _betas(runs, cb)
        if len(betas) < 2:
            continue
        rows.append({"loss": loss, "method": cb,
                     "betas": [(b, _balanced_error(_select(runs, cb, b))) for b in betas],
                     "unweighted": _balanced_error(_select(runs, plain)) if _select(runs, plain) else None,
                     "inverse": _balanced_error(_select(runs, inverse)) if _select(runs, inverse) else None,
                     "names": (plain, cb, inverse)})
    return rows


def _versus(a: tuple, b: tuple) -> tuple:
    """(verdict, difference b - a, 2 SE) of mean a against mean b (lower error is better)."""
    (ma, sa, na), (mb, sb, nb) = a, b
    diff = mb - ma
    if sa is None or sb is None:  # a single seed: no spread to judge by
        return ("lower" if diff > 0 else "not lower") + " (one seed, no spread)", diff, None
    band = 2.0 * math.sqrt(sa ** 2 / na + sb ** 2 / nb)
    if diff > band:
        return "beats", diff, band
    if diff < -band:
        return "is worse than", diff, band
    return "is within seed noise of", diff, band


def _cell(stats) -> str:
    if stats is None:
        return "not run"
    mean, std, n = stats
    if mean is None:
        return "diverged"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def beta_reading(runs: Sequence[dict]) -> List[dict]:
    """Per loss: the best intermediate beta (0 < beta < 1) and how it compares with no weighting (the
    unweighted method, or beta = 0 when that was not run) and with inverse frequency; ``beats_both``
    is True only when it beats both by more than the seed noise."""
    out = []
    for row in beta_table(runs):
        plain, cb, inverse = row["names"]
        inter = [(b, s) for b, s in row["betas"] if b > 0 and s[0] is not None]
        unweighted = row["unweighted"] or dict(row["betas"]).get(0.0)
        reading = {"loss": row["loss"], "method": cb, "best_beta": None, "best": None, "beats_both": False,
                   "versus": {}}
        if not inter:
            reading["text"] = f"{row['loss']}: no intermediate beta finished"
            out.append(reading)
            continue
        best_beta, best = min(inter, key=lambda bs: bs[1][0])
        reading.update(best_beta=best_beta, best=best)
        parts = []
        for name, ref in (("no weighting", unweighted), ("inverse frequency", row["inverse"])):
            if ref is None or ref[0] is None:
                parts.append(f"{name}: not available")
                reading["versus"][name] = None
                continue
            verdict, diff, band = _versus(best, ref)
            reading["versus"][name] = verdict
            parts.append(f"{verdict} {name} ({_cell(ref)}; difference {diff:+.2f}"
                         + (f", 2 SE {band:.2f})" if band is not None else ")"))
        reading["beats_both"] = all(v == "beats" for v in reading["versus"].values())
        reading["text"] = (f"{row['loss']} ({cb}): the best intermediate beta, {best_beta:g}, at {_cell(best)} % "
                           f"balanced error, " + "; ".join(parts) + ". An intermediate beta beats both: "
                           + ("**yes**." if reading["beats_both"] else "**no**."))
        out.append(reading)
    return out


def beta_markdown(runs: Sequence[dict], heading: Optional[str] = "## The beta experiment",
                  png: Optional[str] = None) -> List[str]:
    """The table (balanced error in %, mean ± std over seeds), the optional plot and the reading."""
    table = beta_table(runs)
    if not table:
        return []
    dataset = runs[0]["dataset"]
    betas = sorted({b for row in table for b, _ in row["betas"]})
    seeds = sorted({r["seed"] for r in runs})
    lines = [heading, ""] if heading else []
    premise = runs[0].get("config", {}).get("data", {}).get("premise_beta")
    lines += [f"{dataset}: balanced error in % (mean ± sample std over seeds {seeds}) of each loss without "
              "weighting, with class-balanced weights at each beta (beta = 0: all weights 1; beta -> 1: "
              "1/n), and with inverse-frequency weights."
              + (f" The data are built with beta = (P - 1)/P = {premise:g} (P prototypes per class)." if premise
                 else ""), "",
              "| loss | no weighting | " + " | ".join(f"beta {b:g}" for b in betas) + " | inverse frequency |",
              "|---|---|" + "---|" * len(betas) + "---|"]
    for row in table:
        by_beta = dict(row["betas"])
        lines.append(f"| {row['loss']} | {_cell(row['unweighted'])} | "
                     + " | ".join(_cell(by_beta.get(b)) for b in betas) + f" | {_cell(row['inverse'])} |")
    lines.append("")
    if png:
        lines += [f"![balanced error against beta on {dataset}]({png})", ""]
    readings = beta_reading(runs)
    lines += [f"- {r['text']}" for r in readings]
    scale = _select(runs, SCALE_METHOD)
    if scale:
        lines.append(f"- For scale, {SCALE_METHOD} (logit adjustment by log n, no weights): "
                     f"{_cell(_balanced_error(scale))} % balanced error.")
    lines += ["", "(The best beta is picked on the test split among the swept values, which favours it; "
              "'beats' means a lower mean by more than twice the standard error of the difference over seeds.)",
              ""]
    return lines


def format_readings(runs: Sequence[dict]) -> str:
    """The reading of each dataset's beta experiment, as plain text for a terminal."""
    lines = []
    for dataset, group in _by_dataset(runs).items():
        readings = beta_reading(group)
        if readings:
            lines.append(f"beta experiment on {dataset}:")
            lines += ["  " + r["text"].replace("**", "") for r in readings]
    return "\n".join(lines)


def _by_dataset(runs: Sequence[dict]) -> dict:
    groups = {}
    for run in runs:
        groups.setdefault(run["dataset"], []).append(run)
    return groups


def run_beta_experiments(out_dir: str, datasets: Sequence[str] = BENCH_DATASETS, seeds=3, *,
                         betas: Sequence[float] = BENCH_BETAS, device: str = "cpu", quick: bool = False,
                         epochs: Optional[int] = None, reuse: Sequence[dict] = (), progress: bool = False,
                         data_dir: Optional[str] = None, losses: Sequence[str] = tuple(BETA_FAMILIES)) -> list:
    """The beta experiment (the methods of the ``losses`` families of :data:`BETA_FAMILIES`, CB methods at
    every beta, and :data:`SCALE_METHOD`) on each dataset, written to ``out_dir/<dataset>/`` as ``cbbench
    compare`` would (without PNGs). ``quick``
    halves each recipe's epochs (as ``cbbench bench --quick``), ``epochs`` sets them; runs found in
    ``reuse`` with the same configuration are not trained again. Returns the runs of all datasets."""
    from .train import RECIPES

    runs = []
    for dataset in datasets:
        overrides = {}
        if epochs is not None:
            overrides["epochs"] = epochs
        elif quick:
            overrides["epochs"] = max(1, RECIPES[dataset]["epochs"] // 2)
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        methods = [m for loss in losses for m in BETA_FAMILIES[loss]] + [SCALE_METHOD]
        runs += run_comparison(dataset, methods, seeds, os.path.join(out_dir, dataset), betas=betas,
                               reuse=[r for r in reuse if r.get("dataset") == dataset], device=device,
                               progress=progress, plots=False, **overrides)
    return runs


def report_section(runs: Sequence[dict], out_dir) -> List[str]:
    """Markdown of the beta experiment for a report in ``out_dir``: per dataset the table, the plot
    (``beta_<dataset>.png``, drawn there) and the reading."""
    from .plots import plot_beta_experiment

    lines = ["## The beta experiment (Cui et al.)", "",
             "Does an intermediate beta beat both no weighting and inverse frequency? Measured, not assumed:", ""]
    for dataset, group in _by_dataset(runs).items():
        if not has_beta_sweep(group):
            continue
        name = f"beta_{dataset}.png"
        plot_beta_experiment(group, os.path.join(os.fspath(out_dir), name))
        lines += beta_markdown(group, heading=f"### {dataset}", png=name)
    return lines if len(lines) > 4 else []

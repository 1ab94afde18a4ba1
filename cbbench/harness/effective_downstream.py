"""Downstream, honestly: do weights from the measured effective number (cbbench/effective.py) train better
long-tailed classifiers? The protocol is fixed in docs/results/effective/pass_bar.md (before the runs):

* datasets: the prototypes-LT variant (10 classes, counts 2000 ... 20, prototypes per class independent of
  the counts, views) and digits-LT (views: a one-pixel shift);
* per loss (softmax, sigmoid, focal) and seed: no weighting; 1/n; CB with beta chosen on a validation
  split carved from the training set (20 % per class, beta in 0.9 ... 0.9999, lowest balanced error there,
  ties to the smaller beta), then retrained on the whole training set; measured weights 1/E_c (from the
  training inputs and their views, no tuning); the oracle 1/E_true (prototypes-LT: the distinct prototypes
  covered); and, not pre-registered, 1/E_c measured from the run's own checkpoint at the switch epoch;
* balanced error on the test split; per-seed paired differences measured minus each other arm, mean and
  standard error; "beats" below -2 SE, "loses" above +2 SE, else "ties".

Every run is written to ``OUT/downstream_runs.json`` as it finishes; a rerun keeps the finished ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from .datasets import LongTailedData, load_dataset, varied_prototypes
from .train import TrainConfig, train_run

__all__ = ["DATASETS", "LOSSES", "TUNING_BETAS", "ARMS", "carve_validation", "run_downstream", "paired",
           "downstream_markdown", "render_downstream"]

LOSSES = {"softmax": ("softmax", "inverse_freq", "cb_softmax", "measured_softmax"),
          "sigmoid": ("sigmoid", "inverse_freq_sigmoid", "cb_sigmoid", "measured_sigmoid"),
          "focal": ("focal", "inverse_freq_focal", "cb_focal", "measured_focal")}
TUNING_BETAS = (0.9, 0.99, 0.999, 0.9999)
VALIDATION_SHARE = 0.2
# arm -> label; "measured" is compared with every other arm
ARMS = {"none": "no weighting", "inverse": "1/n", "cb_val": "CB, beta tuned on validation",
        "measured": "measured 1/E (inputs + views)", "oracle": "oracle 1/E_true",
        "measured_ckpt": "measured 1/E (own checkpoint, deferred; not pre-registered)",
        "drw": "DRW, CB beta 0.9999 deferred (softmax; control of the deferral; not pre-registered)"}
SHORT = {"none": "none", "inverse": "1/n", "cb_val": "CB\n(val beta)", "oracle": "oracle\n1/E_true",
         "measured_ckpt": "own ckpt,\ndeferred*", "drw": "DRW*"}
PROTOTYPES_OPTIONS = {"prototypes": varied_prototypes(10, 10, 1000, seed=0), "views": True}
DATASETS = {"prototypes-lt": PROTOTYPES_OPTIONS, "digits-lt": {"views": True}}


def carve_validation(data: LongTailedData, share: float, seed: int) -> LongTailedData:
    """``data`` with its training split cut in two: a validation split of ``share`` of each class (at
    least 1, leaving at least 1) as the evaluation split, the rest as the training split."""
    rng = np.random.RandomState(seed)
    train_idx, val_idx = [], []
    for c in range(data.num_classes):
        idx = np.nonzero(data.y_train == c)[0]
        rng.shuffle(idx)
        k = min(max(1, int(round(share * len(idx)))), len(idx) - 1)
        if k < 1:
            raise ValueError(f"class {c} has {len(idx)} training example(s): nothing to carve a validation split from")
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr, va = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
    aug = None if data.x_train_aug is None else data.x_train_aug[tr]
    return dataclasses.replace(data, x_train=data.x_train[tr], y_train=data.y_train[tr], x_test=data.x_train[va],
                               y_test=data.y_train[va], x_train_aug=aug,
                               meta=dict(data.meta, validation_of_training_split={"share": share, "seed": seed}))


def _key(*parts) -> str:
    return "/".join(str(p) for p in parts)


def _balanced_error(result: dict) -> Optional[float]:
    acc = result.get("balanced_accuracy")
    return None if acc is None else 100.0 - acc


def run_downstream(out: str, seeds=5, quick: bool = False, log: Optional[Callable[[str], None]] = None) -> str:
    """Every run of the protocol (see the module docstring), written to ``out``; returns the markdown."""
    from ..provenance import git_commit

    log = log or (lambda text: None)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "downstream_runs.json")
    store = {"runs": {}, "provenance": {"commit": git_commit()}}
    if os.path.isfile(path):
        with open(path) as fh:
            store = json.load(fh)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    overrides = {"epochs": 4} if quick else {}
    start = time.perf_counter()

    def run(key, config, data):
        if key in store["runs"]:
            return store["runs"][key]
        result = train_run(config, data, progress=False)
        keep = {k: result.get(k) for k in ("balanced_accuracy", "top1_error", "few_shot", "many_shot", "status",
                                           "per_class_accuracy", "train_counts", "effective")}
        keep["config"] = {k: result["config"].get(k) for k in ("method", "seed", "beta", "epochs", "effective_source",
                                                                "effective_numbers", "commit", "torch", "date")}
        store["runs"][key] = keep
        with open(path + ".tmp", "w") as fh:
            json.dump(store, fh)
        os.replace(path + ".tmp", path)
        return keep

    for dataset, options in DATASETS.items():
        data = load_dataset(dataset, **options)
        truth = data.meta.get("distinct_prototypes")
        for seed in seeds:
            tuning = carve_validation(data, VALIDATION_SHARE, 1000 + seed)
            for loss, (plain, inverse, cb, measured) in LOSSES.items():
                base = dict(seed=seed, dataset_options=options, **overrides)
                for beta in TUNING_BETAS:
                    run(_key(dataset, loss, "tune", beta, seed), TrainConfig(dataset, cb, beta=beta, **base), tuning)
                errors = [(_balanced_error(store["runs"][_key(dataset, loss, "tune", b, seed)]), b)
                          for b in TUNING_BETAS]
                best = min((e, b) for e, b in errors if e is not None)[1]
                arms = {"none": TrainConfig(dataset, plain, **base),
                        "inverse": TrainConfig(dataset, inverse, **base),
                        "cb_val": TrainConfig(dataset, cb, beta=best, **base),
                        "measured": TrainConfig(dataset, measured, effective_source="input", **base),
                        "measured_ckpt": TrainConfig(dataset, measured, **base)}
                if loss == "softmax":  # the same deferred schedule with the paper's CB weights
                    arms["drw"] = TrainConfig(dataset, "cb_drw", **base)
                if truth is not None:
                    arms["oracle"] = TrainConfig(dataset, measured, effective_numbers=tuple(float(t) for t in truth),
                                                 **base)
                for arm, config in arms.items():
                    run(_key(dataset, loss, arm, seed), config, data)
                got = {a: _balanced_error(store["runs"][_key(dataset, loss, a, seed)]) for a in arms}
                log(f"  {dataset} {loss} seed {seed}: beta* {best:g}; " + ", ".join(
                    f"{a} {'–' if e is None else f'{e:.2f}'}" for a, e in got.items()))
    store["seconds"] = store.get("seconds", 0.0) + time.perf_counter() - start
    store["quick"] = quick
    store["seeds"] = seeds
    with open(path, "w") as fh:
        json.dump(store, fh)
    return render_downstream(out)


def paired(store: dict, dataset: str, loss: str, arm: str, other: str, seeds) -> Optional[dict]:
    """Per-seed differences of balanced error, ``arm`` minus ``other``: mean, SE and the verdict."""
    diffs = []
    for seed in seeds:
        a, b = (store["runs"].get(_key(dataset, loss, x, seed)) for x in (arm, other))
        if a is None or b is None or _balanced_error(a) is None or _balanced_error(b) is None:
            return None
        diffs.append(_balanced_error(a) - _balanced_error(b))
    if len(diffs) < 2:
        return None
    mean, se = float(np.mean(diffs)), float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
    verdict = "beats" if mean < -2 * se else ("loses to" if mean > 2 * se else "ties")
    return {"mean": mean, "se": se, "verdict": verdict, "diffs": diffs}


def _arm_stats(store, dataset, loss, arm, seeds):
    values = [_balanced_error(store["runs"][k]) for k in (_key(dataset, loss, arm, s) for s in seeds)
              if k in store["runs"]]
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None), len(values)


def downstream_markdown(store: dict, png: Optional[str] = None) -> List[str]:
    seeds = store.get("seeds", [])
    lines = []
    for dataset in DATASETS:
        arms = [a for a in ARMS if any(k.startswith(f"{dataset}/") and k.split("/")[2] == a for k in store["runs"])]
        if not arms:
            continue
        lines += [f"### {dataset}", "", "Balanced error on the test split, % (mean ± sd over seeds "
                  f"{seeds}):", "", "| loss | " + " | ".join(ARMS[a] for a in arms) + " | beta* per seed |",
                  "|---|" + "---|" * (len(arms) + 1)]
        for loss in LOSSES:
            cells = []
            for arm in arms:
                st = _arm_stats(store, dataset, loss, arm, seeds)
                sd = f" ± {st[1]:.2f}" if st is not None and st[1] is not None else ""
                cells.append("–" if st is None else f"{st[0]:.2f}{sd}")
            betas = []
            for seed in seeds:
                run = store["runs"].get(_key(dataset, loss, "cb_val", seed))
                betas.append("–" if run is None else f"{run['config']['beta']:g}")
            lines.append(f"| {loss} | " + " | ".join(cells) + f" | {', '.join(betas)} |")
        lines += ["", "Measured weights against each arm, paired by seed (difference of balanced error, measured "
                  "minus the other, mean ± SE; negative: measured is better):", "",
                  "| loss | " + " | ".join(f"vs {ARMS[a]}" for a in arms if a != "measured") + " |",
                  "|---|" + "---|" * (len(arms) - 1)]
        for loss in LOSSES:
            cells = []
            for other in arms:
                if other == "measured":
                    continue
                p = paired(store, dataset, loss, "measured", other, seeds)
                cells.append("–" if p is None else f"{p['mean']:+.2f} ± {p['se']:.2f}: **{p['verdict']}**")
            lines.append(f"| {loss} | " + " | ".join(cells) + " |")
        lines.append("")
        effective = [store["runs"].get(_key(dataset, loss, "measured", seeds[0])) for loss in LOSSES][0] if seeds \
            else None
        if effective and effective.get("effective"):
            e = effective["effective"]
            lines.append(f"Measured E_c (inputs + views, radius {e['radius']:.3g}): {e['effective_number']} for counts "
                         f"{e['counts']}; fitted dataset beta {e['dataset_beta']:.6g}.")
            oracle = store["runs"].get(_key(dataset, "softmax", "oracle", seeds[0]))
            if oracle and oracle.get("config", {}).get("effective_numbers"):
                truth = [int(v) for v in oracle["config"]["effective_numbers"]]
                mal = float(np.median(np.abs(np.log(np.asarray(e["effective_number"]) / np.asarray(truth)))))
                lines.append(f"True distinct prototypes: {truth} (MAL {mal:.3f}).")
            ckpt = store["runs"].get(_key(dataset, "softmax", "measured_ckpt", seeds[0]))
            if ckpt and ckpt.get("effective"):
                c = ckpt["effective"]
                lines.append(f"From the run's own checkpoint (softmax, seed {seeds[0]}, epoch {c['epoch']}, "
                             f"{c['feature_dim']}-d features): {c['effective_number']}.")
            lines.append("")
    if png:
        lines += [f"![paired differences]({png})", ""]
    return lines


def plot_downstream(store: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = store.get("seeds", [])
    fig, axes = plt.subplots(1, len(DATASETS), figsize=(6 * len(DATASETS), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], DATASETS):
        others = [a for a in ARMS if a != "measured"]
        width = 0.8 / len(LOSSES)
        for i, loss in enumerate(LOSSES):
            xs, ys, es = [], [], []
            for j, other in enumerate(others):
                p = paired(store, dataset, loss, "measured", other, seeds)
                if p is not None:
                    xs.append(j + (i - 1) * width)
                    ys.append(p["mean"])
                    es.append(2 * p["se"])
            ax.bar(xs, ys, width=width, yerr=es, capsize=3, label=loss)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(others)))
        ax.set_xticklabels([SHORT[o] for o in others], fontsize=8)
        ax.set_xlabel("* not pre-registered", fontsize=7)
        ax.set_ylabel("balanced error: measured minus other (points)")
        ax.set_title(f"{dataset}: measured 1/E against each arm (± 2 SE)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_downstream(out: str) -> str:
    from .compare import atomic_write

    with open(os.path.join(out, "downstream_runs.json")) as fh:
        store = json.load(fh)
    png = plot_downstream(store, os.path.join(out, "downstream.png"))
    first = next(iter(store["runs"].values()), {}).get("config", {})
    commits = sorted({str(r.get("config", {}).get("commit")) for r in store["runs"].values()})
    head = ["# Measured weights downstream", "",
            f"`cbbench effective-study --part downstream`{' --quick' if store.get('quick') else ''}: commit(s) "
            f"{', '.join(commits)}, torch {first.get('torch')}, {store.get('seconds', 0):.0f} s of training; "
            f"{len(store['runs'])} runs. Protocol and decision rule fixed before the runs "
            "(docs/results/effective/pass_bar.md).", ""]
    text = "\n".join(head + downstream_markdown(store, os.path.basename(png)))
    atomic_write(os.path.join(out, "downstream.md"), text)
    return text


def _summary(store: dict) -> Dict[str, dict]:
    """{dataset/loss/other: paired result} for every comparison (for tests and the README)."""
    seeds = store.get("seeds", [])
    return {_key(d, loss, o): paired(store, d, loss, "measured", o, seeds) for d in DATASETS for loss in LOSSES
            for o in ARMS if o != "measured"}

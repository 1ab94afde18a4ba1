"""The measured effective number against known truth, and downstream (issue 23; protocol and pass bar in
docs/results/effective/pass_bar.md, fixed before the validation runs).

* :func:`run_known_truth`: the prototypes-LT variant (prototypes per class independent of the counts, so
  the distinct prototypes each class covers are known) swept over noise, dimension and a random nonlinear
  feature map; the null cases (every example its own prototype: E = n; one prototype: E = 1); per
  configuration the median absolute log error, the rank correlation and the bias of three estimators
  (the default with views, no views, a random cover order); :func:`pass_bar` says whether the bar holds.
* :func:`run_downstream`: measured weights against no weighting, 1/n, CB with beta chosen on a validation
  split carved from the training set, and the oracle 1/E_true, over seeds, as paired differences.

``cbbench effective-study`` runs them and writes JSON, markdown and PNGs; the recorded results are in
docs/results/effective/. Nothing here runs in ``cbbench bench``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..effective import effective_number_from_features
from .datasets import make_prototypes_lt, varied_prototypes

__all__ = ["VALIDATION_SEEDS", "ESTIMATORS", "known_truth_configs", "run_known_truth", "run_null_cases", "pass_bar",
           "known_truth_markdown", "plot_known_truth", "log_errors"]

VALIDATION_SEEDS = (1, 2, 3)  # the estimator was developed on data seed 100 only
NUM_CLASSES = 20
NOISES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
NOISE_DIMS = (16, 64)
DIMS = (4, 8, 32, 128, 512)
MAPS = (None, "mlp")
# the pass bar (docs/results/effective/pass_bar.md)
BAR_SEPARATION = 0.4
BAR_MAL = 0.10
BAR_RHO = 0.95
BREAK_MAL = 0.25
NULL_DISTINCT = [(noise, dim) for noise in (0.1, 0.3) for dim in (16, 64)]
NULL_ONE = [(noise, dim) for noise in (0.1, 0.3, 1.0) for dim in (16, 64)]


@dataclasses.dataclass(frozen=True)
class Estimator:
    name: str
    options: dict
    views: bool


ESTIMATORS = (
    Estimator("views (default)", {}, True),
    Estimator("no views (nearest neighbours)", {}, False),
    Estimator("views, random order", {"order": "random"}, True),
)


def known_truth_configs(quick: bool = False) -> List[dict]:
    """The sweep: noise x {16, 64} dims x {no map, map}, and dims at noise 0.3 x {no map, map}."""
    noises = (0.1, 0.3, 0.6, 1.0) if quick else NOISES
    configs = [{"noise": n, "dim": d, "feature_map": m} for d in NOISE_DIMS for m in MAPS for n in noises]
    dims = (8, 128) if quick else DIMS
    configs += [{"noise": 0.3, "dim": d, "feature_map": m} for m in MAPS for d in dims]
    return configs


def log_errors(measured, truth) -> np.ndarray:
    """``log(E / E_true)`` per class."""
    return np.log(np.asarray(measured, dtype=float) / np.asarray(truth, dtype=float))


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


def _variant(config: dict, seed: int, num_classes: int = NUM_CLASSES):
    return make_prototypes_lt(num_classes=num_classes, n_max=2000, imbalance=100.0,
                              prototypes=varied_prototypes(num_classes, 10, 1000, seed=seed),
                              dim=config["dim"], noise=config["noise"], feature_map=config["feature_map"],
                              views=True, data_seed=seed, test_per_class=1)


def run_known_truth(seeds: Sequence[int] = VALIDATION_SEEDS, quick: bool = False,
                    log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """One row per configuration, seed and estimator: MAL, rho, bias, the separation ratio, the radius."""
    rows = []
    configs = known_truth_configs(quick)
    for i, config in enumerate(configs):
        for seed in seeds:
            data = _variant(config, seed)
            truth = np.asarray(data.meta["distinct_prototypes"], dtype=float)
            separation = config["noise"] * math.sqrt(2 * config["dim"]) / data.meta["prototype_spacing"]
            for est in ESTIMATORS:
                start = time.perf_counter()
                m = effective_number_from_features(data.x_train, data.y_train, data.num_classes,
                                                   features_aug=data.x_train_aug if est.views else None, **est.options)
                e = m.effective_number.numpy()
                err = log_errors(e, truth)
                rows.append({**config, "seed": seed, "estimator": est.name, "separation": separation,
                             "mal": float(np.median(np.abs(err))), "bias": float(np.median(err)),
                             "rho": _spearman(e, truth), "radius": m.radius, "dataset_beta": m.dataset_beta,
                             "effective": e.tolist(), "truth": truth.tolist(),
                             "counts": data.train_counts.tolist(), "seconds": time.perf_counter() - start})
        if log:
            last = [r for r in rows if r["estimator"] == ESTIMATORS[0].name][-len(seeds):]
            mals = ", ".join(f"{r['mal']:.3f}" for r in last)
            log(f"  [{i + 1}/{len(configs)}] noise {config['noise']} dim {config['dim']} map {config['feature_map']}: "
                f"s {last[0]['separation']:.2f}, MAL {mals}")
    return rows


def _null_data(kind: str, noise: float, dim: int, seed: int):
    """Every example its own prototype (``"distinct"``) or one prototype per class (``"one"``), drawn with
    prototypes-LT's geometry (20 classes, counts 2000 ... 20), each view a fresh noise draw."""
    if kind == "one":
        data = make_prototypes_lt(num_classes=NUM_CLASSES, n_max=2000, imbalance=100.0, prototypes=1, dim=dim,
                                  noise=noise, views=True, data_seed=seed, test_per_class=1)
        return data.x_train, data.x_train_aug, data.y_train, data.train_counts
    from .datasets import long_tailed_counts

    rng = np.random.RandomState(seed)
    counts = np.asarray(long_tailed_counts(2000, NUM_CLASSES, 100.0))
    y = np.repeat(np.arange(NUM_CLASSES), counts)
    means = rng.normal(size=(NUM_CLASSES, dim))
    means *= 2.0 / np.linalg.norm(means, axis=1, keepdims=True)
    points = means[y] + 1.5 * rng.normal(size=(len(y), dim))
    x, aug = (points + noise * rng.normal(size=points.shape) for _ in range(2))
    return x, aug, y, counts


def run_null_cases(seeds: Sequence[int] = VALIDATION_SEEDS) -> List[dict]:
    """The null cases with the default estimator (views) and without views."""
    rows = []
    for kind, cases, want in (("distinct", NULL_DISTINCT, "n"), ("one", NULL_ONE, "1")):
        for noise, dim in cases:
            for seed in seeds:
                x, aug, y, counts = _null_data(kind, noise, dim, seed)
                truth = counts.astype(float) if kind == "distinct" else np.ones(NUM_CLASSES)
                for est in ESTIMATORS[:2]:
                    m = effective_number_from_features(x, y, NUM_CLASSES, features_aug=aug if est.views else None)
                    e = m.effective_number.numpy()
                    rows.append({"case": kind, "expected": want, "noise": noise, "dim": dim, "seed": seed,
                                 "estimator": est.name, "exact": bool(np.array_equal(e, truth)),
                                 "mal": float(np.median(np.abs(log_errors(e, truth)))),
                                 "effective": e.tolist(), "counts": counts.tolist()})
    return rows


def pass_bar(rows: Sequence[dict], nulls: Sequence[dict], speed_s: Optional[float] = None) -> List[dict]:
    """Each item of the pass bar: ``{"item", "passed" (True / False / None: not measured), "detail"}``."""
    default = ESTIMATORS[0].name
    inside = [r for r in rows if r["estimator"] == default and r["separation"] <= BAR_SEPARATION]
    failing = [r for r in inside if not (r["mal"] <= BAR_MAL and r["rho"] >= BAR_RHO)]
    items = [{"item": f"s <= {BAR_SEPARATION}: MAL <= {BAR_MAL} and rho >= {BAR_RHO} in every configuration and seed",
              "passed": bool(inside) and not failing,
              "detail": f"{len(inside) - len(failing)} of {len(inside)} (configuration, seed) pairs hold; worst MAL "
                        f"{max((r['mal'] for r in inside), default=float('nan')):.3f}, lowest rho "
                        f"{min((r['rho'] for r in inside), default=float('nan')):.3f}"
                        + ("" if not failing else "; failing: " + "; ".join(
                            f"noise {r['noise']} dim {r['dim']} map {r['feature_map']} seed {r['seed']} "
                            f"(s {r['separation']:.2f}, MAL {r['mal']:.3f}, rho {r['rho']:.3f})"
                            for r in failing[:8]))}]
    for kind, text in (("distinct", "null, every example its own prototype: E_c = n_c exactly"),
                       ("one", "null, one prototype per class: E_c = 1 exactly")):
        cases = [r for r in nulls if r["case"] == kind and r["estimator"] == default]
        exact = [r for r in cases if r["exact"]]
        items.append({"item": text, "passed": bool(cases) and len(exact) == len(cases),
                      "detail": f"{len(exact)} of {len(cases)} (noise, dim, seed) cases exact"})
    items.append({"item": "100,000 x 512 x 1,000 classes in <= 60 s on the 2-core CPU",
                  "passed": None if speed_s is None else speed_s <= 60.0,
                  "detail": "not measured here" if speed_s is None else f"{speed_s:.1f} s"})
    return items


def _breaks(rows: Sequence[dict], estimator: str) -> List[dict]:
    """Per (dim, map) of the noise sweep: the smallest separation ratio whose mean MAL over seeds exceeds
    :data:`BREAK_MAL` (None: never within the sweep)."""
    out = []
    for dim in sorted({r["dim"] for r in rows}):
        for fmap in MAPS:
            group = [r for r in rows if r["estimator"] == estimator and r["dim"] == dim and r["feature_map"] == fmap]
            by_noise = {}
            for r in group:
                by_noise.setdefault(r["noise"], []).append(r)
            if len(by_noise) < 3:
                continue
            broken = None
            for noise in sorted(by_noise):
                rs = by_noise[noise]
                if np.mean([r["mal"] for r in rs]) > BREAK_MAL:
                    broken = (noise, float(np.mean([r["separation"] for r in rs])))
                    break
            out.append({"dim": dim, "feature_map": fmap, "noise": None if broken is None else broken[0],
                        "separation": None if broken is None else broken[1]})
    return out


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def known_truth_markdown(rows: Sequence[dict], nulls: Sequence[dict], speed_s: Optional[float] = None,
                         png: Optional[str] = None) -> List[str]:
    """The pass bar's verdicts, the table per configuration (mean ± sd over seeds) and where it breaks."""
    seeds = sorted({r["seed"] for r in rows})
    lines = ["### Pass bar (fixed before the runs: docs/results/effective/pass_bar.md)", ""]
    for item in pass_bar(rows, nulls, speed_s):
        verdict = {True: "**pass**", False: "**FAIL**", None: "not measured"}[item["passed"]]
        lines.append(f"- {item['item']}: {verdict} ({item['detail']})")
    lines += ["", f"### Known truth: {NUM_CLASSES} classes, counts 2000 ... 20, prototypes per class 10 ... 1000 "
              f"independent of the counts; seeds {seeds}", "",
              "MAL: median over classes of |log(E / E_true)| (0.10 is about 10 %); rho: Spearman rank correlation "
              "across classes; bias: median log(E / E_true) (> 0: over-counts); s: noise distance over prototype "
              "spacing. Mean ± sd over seeds.", "",
              "| dim | map | noise | s | " + " | ".join(f"MAL {e.name}" for e in ESTIMATORS)
              + " | rho (default) | bias (default) | bias (no views) |",
              "|---|---|---|---|" + "---|" * len(ESTIMATORS) + "---|---|---|"]
    keys = []
    for r in rows:
        key = (r["dim"], r["feature_map"], r["noise"])
        if key not in keys:
            keys.append(key)
    for dim, fmap, noise in keys:
        group = [r for r in rows if (r["dim"], r["feature_map"], r["noise"]) == (dim, fmap, noise)]
        by_est = {e.name: [r for r in group if r["estimator"] == e.name] for e in ESTIMATORS}
        default = by_est[ESTIMATORS[0].name]
        lines.append(f"| {dim} | {fmap or '–'} | {noise:g} | {np.mean([r['separation'] for r in default]):.2f} | "
                     + " | ".join(_mean_sd([r["mal"] for r in by_est[e.name]]) for e in ESTIMATORS)
                     + f" | {_mean_sd([r['rho'] for r in default])} | {_mean_sd([r['bias'] for r in default])} | "
                     f"{_mean_sd([r['bias'] for r in by_est[ESTIMATORS[1].name]])} |")
    lines += ["", "Where it breaks (smallest noise in the sweep whose mean MAL exceeds "
              f"{BREAK_MAL}, i.e. about 28 % off):", ""]
    for est in ESTIMATORS[:2]:
        parts = [f"dim {b['dim']} {'with' if b['feature_map'] else 'without'} map: "
                 + ("never in the sweep" if b["noise"] is None else f"noise {b['noise']:g} (s {b['separation']:.2f})")
                 for b in _breaks(rows, est.name)]
        lines.append(f"- {est.name}: " + "; ".join(parts))
    lines += ["", "### Null cases", "", "| case | estimator | exact (cases) | MAL (mean) |", "|---|---|---|---|"]
    for kind, label in (("distinct", "every example its own prototype (E = n)"), ("one", "one prototype (E = 1)")):
        for est in ESTIMATORS[:2]:
            cases = [r for r in nulls if r["case"] == kind and r["estimator"] == est.name]
            if cases:
                lines.append(f"| {label} | {est.name} | {sum(r['exact'] for r in cases)} of {len(cases)} | "
                             f"{np.mean([r['mal'] for r in cases]):.3f} |")
    if png:
        lines += ["", f"![MAL against the separation ratio]({png})"]
    return lines + [""]


def plot_known_truth(rows: Sequence[dict], path: str) -> str:
    """Left: MAL against the separation ratio per estimator (dims and maps pooled, one point per
    configuration and seed). Right: measured E against the truth for one configuration per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = {None: "o", "mlp": "^"}
    for est, colour in zip(ESTIMATORS, ("tab:blue", "tab:orange", "tab:green")):
        for fmap in MAPS:
            rs = [r for r in rows if r["estimator"] == est.name and r["feature_map"] == fmap]
            ax.scatter([r["separation"] for r in rs], [max(r["mal"], 1e-3) for r in rs], s=14, alpha=0.7, color=colour,
                       marker=markers[fmap], label=f"{est.name}{', feature map' if fmap else ''}")
    ax.axhline(BAR_MAL, color="k", lw=0.8, ls="--")
    ax.axvline(BAR_SEPARATION, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("separation ratio s = noise distance / prototype spacing")
    ax.set_ylabel("median |log(E / E_true)| (floored at 1e-3)")
    ax.set_title("Measured effective number against known truth")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    pick = [r for r in rows if r["noise"] == 0.3 and r["dim"] == 16 and r["feature_map"] is None]
    seed = min((r["seed"] for r in pick), default=None)
    for est, colour in zip(ESTIMATORS, ("tab:blue", "tab:orange", "tab:green")):
        for r in pick:
            if r["estimator"] == est.name and r["seed"] == seed:
                bx.scatter(r["truth"], r["effective"], s=18, color=colour, label=est.name)
    if pick:
        lim = [1, max(max(r["effective"] + r["truth"]) for r in pick) * 1.5]
        bx.plot(lim, lim, "k--", lw=0.8)
        bx.scatter(pick[0]["truth"], pick[0]["counts"], s=10, marker="x", color="grey", label="count n (for scale)")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("true distinct prototypes covered")
    bx.set_ylabel("measured E_c")
    bx.set_title(f"one configuration: dim 16, noise 0.3, seed {seed}")
    bx.legend(fontsize=7)
    bx.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

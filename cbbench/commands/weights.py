"""``cbbench weights``: effective numbers and class-balanced weights for given class counts.

Prints a table per beta and writes two PNGs: the effective number against n for several betas (the
paper's Figure 1 style) and the per-class weights of each scheme.

With ``--from-features FILE`` (a .npz of ``features`` (N, D) and ``labels`` (N,), or ``x_train`` /
``y_train``; optionally ``features_aug`` / ``x_train_aug``, a second view of every row) the effective
numbers are measured from the features (:func:`cbbench.effective_number_from_features`): a table per class
(count, distinct vectors, measured E_c, fitted N_c and beta_c, the measured weight and the CB weight at the
fitted dataset beta), ``measured_effective_number.png`` (measured E_c against the count, with the beta
curves) and ``measured.json``.
"""
from __future__ import annotations

import math
import os
from typing import List, Sequence

import torch

from ..harness.errors import DataError, DataFileNotFound
from ..harness.output import check_writable, save_figure
from ..weights import as_counts, class_weights, effective_number
from .lists import parse_list

DEFAULT_BETAS = (0.9, 0.99, 0.999, 0.9999)
# CIFAR-10-LT, imbalance factor 100 (docs/design.md, "Math": long-tailed subsets): int(5000 * 0.01 ** (i / 9))
DEFAULT_COUNTS = "5000,2997,1796,1077,645,387,232,139,83,50"


def weights_table(counts: Sequence[float], betas: Sequence[float]) -> str:
    """A markdown table: per class, the count, then E_n and the CB weight for each beta."""
    n = as_counts(counts)
    head = "| class | n | " + " | ".join(f"E_n (beta={b}) | w (beta={b})" for b in betas) + " |"
    sep = "|" + "---|" * (2 + 2 * len(betas))
    cols = [(effective_number(n, b), class_weights(n, "cb", beta=b, empty="zero")) for b in betas]
    lines = [head, sep]
    for c in range(n.numel()):
        cells = [f"{e[c].item():.4g} | {w[c].item():.4f}" for e, w in cols]
        lines.append(f"| {c} | {int(n[c].item())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_weights_report(counts: Sequence[float], betas: Sequence[float] = DEFAULT_BETAS,
                         out_dir: str = "report") -> List[str]:
    """Write ``effective_number.png`` and ``class_weights.png`` into ``out_dir`` (each whole, permissions from
    the umask; OutputError if the folder cannot be written); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = as_counts(counts)
    check_writable(out_dir)
    paths = []

    n_max = max(float(n.max().item()), 10.0)
    # in float64 (a float32 tensor made counts above 3.4e37 an infinite grid and a "counts must be
    # finite" error about numbers the user never gave)
    grid = torch.logspace(0, math.log10(n_max) + 1, 400, dtype=torch.float64).round()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for beta in betas:
        ax.plot(grid.numpy(), effective_number(grid, beta).numpy(), label=f"beta = {beta}")
    ax.plot(grid.numpy(), grid.numpy(), "k--", lw=0.8, label="beta -> 1 (E = n)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of samples n")
    ax.set_ylabel("effective number E(n) = (1 - beta^n) / (1 - beta)")
    ax.set_title("Effective number of samples")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "effective_number.png"))
    save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    classes = torch.arange(n.numel()).numpy()
    schemes = [("inverse", {}), ("sqrt_inverse", {})] + [("cb", {"beta": b}) for b in betas]
    for scheme, opts in schemes:
        label = scheme if scheme != "cb" else f"cb (beta={opts['beta']})"
        w = class_weights(n, scheme, empty="zero", **opts)
        ax.plot(classes, w.numpy(), marker="o", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("class (count: " + ", ".join(str(int(v)) for v in n.tolist()[:12])
                  + (", ..." if n.numel() > 12 else "") + ")")
    ax.set_ylabel("weight (sums to C)")
    ax.set_title("Per-class weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "class_weights.png"))
    save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)
    return paths


FEATURE_KEYS = (("features", "labels", "features_aug"), ("x_train", "y_train", "x_train_aug"))


def load_feature_file(path: str):
    """``(features, labels, features_aug or None)`` from a .npz (either naming of :data:`FEATURE_KEYS`)."""
    import numpy as np

    if not os.path.isfile(path):
        raise DataFileNotFound(f"--from-features {path}: no such file")
    try:
        with np.load(path) as arrays:
            found = dict(arrays)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as .npz ({str(exc)[:200]})") from None
    for x_key, y_key, aug_key in FEATURE_KEYS:
        if x_key in found and y_key in found:
            labels = found[y_key]
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{path}: {y_key} must hold whole-number labels, got dtype {labels.dtype}")
            return found[x_key], labels, found.get(aug_key)
    raise DataError(f"{path}: expected arrays features + labels (or x_train + y_train), found {sorted(found)}")


def measured_table(m) -> str:
    """A markdown table of a :class:`cbbench.MeasuredEffectiveNumber`, one row per class."""
    from ..weights import class_balanced_weights

    present = m.counts > 0
    w = m.weights(empty="zero")
    beta = m.dataset_beta
    cb = class_balanced_weights(m.counts, beta, empty="zero") if beta is not None else None
    head = ("| class | n | distinct | measured E | fitted N | beta_c | w measured | "
            + (f"E at beta {beta:.6g} | w CB (beta {beta:.6g}) |" if cb is not None else ""))
    lines = [head, "|" + "---|" * (7 + (2 if cb is not None else 0))]
    e_beta = effective_number(m.counts, beta) if cb is not None else None
    for c in range(m.num_classes):
        proto, bc = m.prototypes[c].item(), m.beta[c].item()
        cells = [str(c), str(int(m.counts[c])), str(int(m.distinct[c])), str(int(m.effective_number[c])),
                 "inf" if math.isinf(proto) else ("–" if math.isnan(proto) else f"{proto:.4g}"),
                 "–" if math.isnan(bc) else f"{bc:.6g}", f"{w[c].item():.4f}" if present[c] else "0 (empty)"]
        if cb is not None:
            cells += [f"{e_beta[c].item():.4g}", f"{cb[c].item():.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_measured(m, betas: Sequence[float], path: str, title: str = "", truth=None) -> str:
    """Measured E_c against the class count, with the effective-number curves of ``betas`` and of the
    fitted dataset beta, and E = n; ``truth`` (per class), where known, as open circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    present = m.counts > 0
    n, e = m.counts[present].numpy(), m.effective_number[present].numpy()
    grid = torch.logspace(0, math.log10(max(float(n.max()), 10.0)) + 0.3, 300, dtype=torch.float64).round().unique()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for beta in betas:
        ax.plot(grid.numpy(), effective_number(grid, beta).numpy(), lw=1, alpha=0.7, label=f"beta = {beta:g}")
    if m.dataset_beta is not None:
        ax.plot(grid.numpy(), effective_number(grid, m.dataset_beta).numpy(), "k-", lw=2,
                label=f"fitted dataset beta = {m.dataset_beta:.6g}")
    ax.plot(grid.numpy(), grid.numpy(), "k--", lw=0.8, label="E = n")
    ax.scatter(n, e, s=22, color="tab:red", zorder=5, label="measured E_c per class")
    if truth is not None:
        ax.scatter(n, np.asarray(truth, dtype=float)[present.numpy()], s=70, facecolors="none", edgecolors="k",
                   zorder=6, label="true distinct prototypes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("samples in the class n_c")
    ax.set_ylabel("effective number")
    ax.set_title(title or f"Measured effective number (radius {m.radius:.3g})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def measured_report(out_dir: str, betas: Sequence[float] = DEFAULT_BETAS) -> List[str]:
    """The report section of ``cbbench bench``: the effective number measured on the prototypes-LT variant
    (prototypes per class independent of the counts, a second view of every example), against the truth,
    with its plot ``measured_effective_number.png`` in ``out_dir``. About a second."""
    import numpy as np

    from ..effective import effective_number_from_features
    from ..harness.datasets import make_prototypes_lt, varied_prototypes

    data = make_prototypes_lt(prototypes=varied_prototypes(10, 10, 1000, seed=0), views=True)
    m = effective_number_from_features(data.x_train, data.y_train, data.num_classes, features_aug=data.x_train_aug)
    truth = np.asarray(data.meta["distinct_prototypes"])
    png = plot_measured(m, betas, os.path.join(out_dir, "measured_effective_number.png"),
                        "prototypes-LT variant: measured E_c, truth, beta curves", truth=truth)
    mal = float(np.median(np.abs(np.log(m.effective_number.numpy() / truth))))
    lines = ["## The effective number measured from data", "",
             "`cbbench.effective_number_from_features` on the prototypes-LT variant of the downstream study (10 "
             "classes, counts 2000 ... 20, prototypes per class drawn independently of the counts, a second view of "
             f"every example): radius {m.radius:.3g} ({m.radius_source}), {m.seconds:.2f} s; median |log(E / "
             f"E_true)| = {mal:.3f}; fitted dataset beta {m.dataset_beta:.6g} (no single beta fits these classes: "
             "their prototype counts are independent of their counts).", "",
             "| class | n | true distinct prototypes | measured E | fitted N |", "|---|---|---|---|---|"]
    for c in range(m.num_classes):
        proto = m.prototypes[c].item()
        lines.append(f"| {c} | {int(m.counts[c])} | {int(truth[c])} | {int(m.effective_number[c])} | "
                     f"{'inf' if math.isinf(proto) else f'{proto:.4g}'} |")
    lines += ["", f"![measured effective number]({os.path.basename(png)})", "",
              "The known-truth sweep (noise, dimension, a random feature map, null cases) and the downstream "
              "comparison are `cbbench effective-study` (too slow for this report); their recorded results are in "
              "docs/results/effective/.", ""]
    return lines


def run_from_features(args, betas) -> int:
    import json

    from ..effective import effective_number_from_features

    x, y, aug = load_feature_file(args.from_features)
    num_classes = args.num_classes if args.num_classes is not None else (int(y.max()) + 1 if len(y) else 1)
    options = {"normalize": not args.no_normalize, "device": args.device}
    if args.radius is not None:
        options["radius"] = args.radius
        aug = None
    if args.quantile is not None:
        options["quantile"] = args.quantile
    m = effective_number_from_features(x, y, num_classes, features_aug=aug, **options)
    beta = "none (no class has 2 samples)" if m.dataset_beta is None else f"{m.dataset_beta:.6g}"
    print(f"{args.from_features}: {len(y)} samples, {x.shape[1]} features, {num_classes} classes; radius "
          f"{m.radius:.4g} ({m.radius_source}); fitted dataset beta {beta}; {m.seconds:.2f} s on {m.device}")
    print(measured_table(m))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        png = plot_measured(m, betas, os.path.join(args.out, "measured_effective_number.png"))
        path = os.path.join(args.out, "measured.json")
        with open(path, "w") as fh:
            json.dump(dict(m.to_dict(), source=os.path.abspath(args.from_features)), fh, indent=1)
        print(f"wrote {png}\nwrote {path}")
    return 0


def run(args) -> int:
    betas = parse_list(args.betas, float, "--betas")
    for b in betas:
        effective_number([1], b)  # validates beta with a clear message
    if args.out:
        check_writable(args.out)  # a read-only --out fails before the table, not after it
    if args.from_features is not None:
        if args.counts is not None:
            raise ValueError("pass --counts or --from-features (the counts then come from its labels), not both")
        return run_from_features(args, betas)
    for name in ("radius", "quantile", "num_classes"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} applies to --from-features only")
    counts = parse_list(args.counts if args.counts is not None else DEFAULT_COUNTS, float, "--counts")
    as_counts(counts, "--counts")
    print(weights_table(counts, betas))
    if args.out:
        for path in write_weights_report(counts, betas, args.out):
            print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="effective numbers and class-balanced weights for class counts",
                              description=__doc__)
    p.add_argument("--counts", default=None,
                   help="comma-separated training-set count per class (default: CIFAR-10-LT, IF 100: "
                        f"{DEFAULT_COUNTS})")
    p.add_argument("--betas", "--beta", dest="betas", default=",".join(str(b) for b in DEFAULT_BETAS),
                   help="comma-separated betas in [0, 1) (default: %(default)s)")
    p.add_argument("--out", default="report/weights", help="folder for the PNGs ('' to skip; default: %(default)s)")
    m = p.add_argument_group("measured from features (cbbench.effective_number_from_features)")
    m.add_argument("--from-features", default=None, metavar="FILE",
                   help=".npz with features (N, D) and labels (N,) (or x_train, y_train), optionally features_aug "
                        "(or x_train_aug): a second view of every row, which sets the unit radius")
    m.add_argument("--num-classes", type=int, default=None, help="number of classes (default: largest label + 1)")
    m.add_argument("--radius", type=float, default=None, help="the unit radius itself (normalised features)")
    m.add_argument("--quantile", type=float, default=None,
                   help="quantile of the view distances (default 0.99) or, without views, of the nearest-distinct-"
                        "neighbour distances in the largest class (default 0.99)")
    m.add_argument("--no-normalize", action="store_true", help="do not L2-normalise the features")
    m.add_argument("--device", default=None, help="where to compute the distances (default: cpu)")
    p.set_defaults(func=run)

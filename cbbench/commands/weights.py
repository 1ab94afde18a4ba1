"""``cbbench weights``: effective numbers and class-balanced weights for given class counts.

Prints a table per beta and writes two PNGs: the effective number against n for several betas (the
paper's Figure 1 style) and the per-class weights of each scheme.
"""
from __future__ import annotations

import math
import os
from typing import List, Sequence

import torch

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


def run(args) -> int:
    counts = parse_list(args.counts, float, "--counts")
    betas = parse_list(args.betas, float, "--betas")
    as_counts(counts, "--counts")
    for b in betas:
        effective_number([1], b)  # validates beta with a clear message
    if args.out:
        check_writable(args.out)  # a read-only --out fails before the table, not after it
    print(weights_table(counts, betas))
    if args.out:
        for path in write_weights_report(counts, betas, args.out):
            print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="effective numbers and class-balanced weights for class counts",
                              description=__doc__)
    p.add_argument("--counts", default=DEFAULT_COUNTS,
                   help="comma-separated training-set count per class (default: CIFAR-10-LT, IF 100)")
    p.add_argument("--betas", "--beta", dest="betas", default=",".join(str(b) for b in DEFAULT_BETAS),
                   help="comma-separated betas in [0, 1) (default: %(default)s)")
    p.add_argument("--out", default="report/weights", help="folder for the PNGs ('' to skip; default: %(default)s)")
    p.set_defaults(func=run)

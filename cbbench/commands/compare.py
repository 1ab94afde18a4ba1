"""``cbbench compare``: methods x seeds on one dataset; writes results.csv, summary.md and PNG plots."""
from __future__ import annotations

import os

from ..harness.methods import METHODS
from .train import add_training_arguments, training_overrides


def _seeds(text: str):
    """``K`` (a count: seeds 0..K-1) or a comma-separated list of seeds."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return int(text)
    except ValueError:
        raise ValueError(f"--seeds must be a count K or a list like 0,1,2, got {text!r}") from None


def run(args) -> int:
    from ..harness.compare import run_comparison

    methods = list(METHODS) if args.methods.strip() == "all" else [m.strip() for m in args.methods.split(",")
                                                                    if m.strip()]
    run_comparison(args.dataset, methods, _seeds(args.seeds), args.out, imbalance=args.imbalance,
                   epochs=args.epochs, device=args.device, progress=not args.no_progress,
                   **training_overrides(args))
    with open(os.path.join(args.out, "summary.md")) as fh:
        print(fh.read(), end="")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="compare long-tail methods over seeds, write a summary",
                                   description=__doc__)
    add_training_arguments(parser)
    parser.add_argument("--methods", default="all",
                        help="comma-separated methods or 'all' (default). Methods: " + ", ".join(METHODS))
    parser.add_argument("--seeds", default="3", help="number of seeds K (0..K-1) or a list like 0,1,2 (default 3)")
    parser.set_defaults(func=run)

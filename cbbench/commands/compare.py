"""``cbbench compare``: methods x (betas) x seeds on one dataset; writes each run as it finishes, then
results.csv, summary.md and PNG plots.

Every run's configuration, every input file and the output folder are checked before the first run; the
folder is locked against a second writer. Ctrl-C (or SIGTERM) stops within seconds and keeps the finished
runs; ``--resume`` continues from them (refusing runs of another configuration or other data).
``--betas 0,0.9,0.99,0.999,0.9999`` runs the methods that use beta (cb_*, cb_drw, ldam_drw, cb_sampling)
once per beta: the beta experiment of Cui et al. (plot: beta_experiment.png)."""
from __future__ import annotations

import os
import sys

from ..harness.errors import UsageError
from ..harness.methods import METHODS
from .lists import parse_list, parse_methods, parse_seeds
from .train import TORCHRUN_NOTE, add_training_arguments, check_method_options, training_overrides


def run(args) -> int:
    from ..harness.compare import finished_run_ids, plan_runs, run_comparison
    from ..harness.ddp import is_main

    methods = parse_methods(args.methods, METHODS)
    seeds = parse_seeds(args.seeds)
    betas = None if args.betas is None else parse_list(args.betas, float, "--betas")
    if betas is not None and args.beta is not None:
        raise UsageError("--beta and --betas: pass one beta for every method (--beta) or a sweep (--betas), not both")
    check_method_options(args, methods)
    overrides = training_overrides(args)
    if not args.resume and is_main() and os.path.isdir(args.out):
        plan = plan_runs(args.dataset, methods, seeds, betas=betas, imbalance=args.imbalance, epochs=args.epochs,
                         device=args.device, **overrides)
        kept = finished_run_ids(args.out, plan)
        if kept:
            print(f"note: {args.out} holds {len(kept)} finished run(s) of this grid; they are trained again "
                  "(pass --resume to keep them)", file=sys.stderr)
    run_comparison(args.dataset, methods, seeds, args.out, betas=betas, resume=args.resume,
                   imbalance=args.imbalance, epochs=args.epochs, device=args.device, progress=not args.no_progress,
                   **overrides)
    if not is_main():
        return 0
    with open(os.path.join(args.out, "summary.md")) as fh:
        print(fh.read(), end="")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="compare long-tail methods over seeds, write a summary",
                                   description=__doc__ + TORCHRUN_NOTE)
    add_training_arguments(parser)
    parser.add_argument("--methods", default="all",
                        help="comma-separated methods or 'all' (default). Methods: " + ", ".join(METHODS))
    parser.add_argument("--seeds", default="3", help="number of seeds K (0..K-1) or a list like 0,1,2 (default 3)")
    parser.add_argument("--betas", default=None,
                        help="comma-separated betas in [0, 1) for the methods that use beta (each runs once per "
                             "beta; replaces --beta): the beta experiment, e.g. 0,0.9,0.99,0.999,0.9999")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs already in --out (same configuration) and train the rest")
    parser.set_defaults(func=run, data_parallel=True)

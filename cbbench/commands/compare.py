"""``cbbench compare``: methods x (betas) x seeds on one dataset; writes each run as it finishes, then
results.csv, summary.md and PNG plots.

Every run's configuration, every input file and the output folder are checked before the first run; the
folder is locked against a second writer. Ctrl-C (or SIGTERM) stops within seconds and keeps the finished
runs; ``--resume`` continues from them (refusing runs of another configuration or other data).
``--betas 0,0.9,0.99,0.999,0.9999`` runs the methods that use beta (cb_*, cb_drw, ldam_drw, cb_sampling)
once per beta: the beta experiment of Cui et al. (plot: beta_experiment.png).
``--executor ray`` runs every run as a Ray task on a cluster (``--address``; default: the one ``ray start``
runs on this machine, else a Ray instance started for the comparison), with ``--cpus-per-run`` /
``--gpus-per-run`` each; the results come back here and are written as above. A run that fails there
after ``--retries`` retries is listed in the summary (exit code 7); ``--resume`` trains only those again."""
from __future__ import annotations

import contextlib
import os
import sys

from ..harness.errors import RunsFailed, UsageError
from ..harness.executors import DEFAULT_RETRIES, EXECUTORS
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
    executor = _executor(args)
    if not args.resume and is_main() and os.path.isdir(args.out):
        plan = None
        if executor.local_device:
            plan = plan_runs(args.dataset, methods, seeds, betas=betas, imbalance=args.imbalance, epochs=args.epochs,
                             device=args.device, **overrides)
        else:  # the run ids, all the note needs, do not depend on the device, which the cluster decides
            with contextlib.suppress(ValueError):  # run_comparison reports the grid's errors
                plan = plan_runs(args.dataset, methods, seeds, betas=betas, imbalance=args.imbalance,
                                 epochs=args.epochs, device="cpu", local_device=False,
                                 **dict(overrides, accel="none"))
        kept = finished_run_ids(args.out, plan) if plan else []
        if kept:
            print(f"note: {args.out} holds {len(kept)} finished run(s) of this grid; they are trained again "
                  "(pass --resume to keep them)", file=sys.stderr)
    try:
        run_comparison(args.dataset, methods, seeds, args.out, betas=betas, resume=args.resume,
                       imbalance=args.imbalance, epochs=args.epochs, device=args.device,
                       progress=not args.no_progress, executor=executor, **overrides)
    except RunsFailed:  # the summary of the finished runs (it lists the failed ones), then the error line
        _print_summary(args.out)
        raise
    if not is_main():
        return 0
    _print_summary(args.out)
    return 0


def _print_summary(out: str) -> None:
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as fh:
        print(fh.read(), end="")


_RAY_OPTIONS = {"address": "--address", "cpus_per_run": "--cpus-per-run", "gpus_per_run": "--gpus-per-run",
                "retries": "--retries"}


def _executor(args):
    """The executor of ``--executor`` with its options; a Ray option without ``--executor ray`` is refused."""
    from ..harness.executors import RayExecutor, SerialExecutor, import_ray

    given = {name: getattr(args, name) for name in _RAY_OPTIONS if getattr(args, name) is not None}
    if args.executor == "serial":
        if given:
            flags = ", ".join(_RAY_OPTIONS[name] for name in given)
            raise UsageError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} to --executor ray only; add "
                             f"--executor ray, or remove {flags}")
        return SerialExecutor()
    import_ray()  # the extra to install, before anything else is checked
    return RayExecutor(**given)


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
    cluster = parser.add_argument_group("running the grid on a cluster (Ray: pip install 'cbbench[ray]')")
    cluster.add_argument("--executor", choices=EXECUTORS, default="serial",
                         help="serial (default): every run in this process, one after another; ray: every run a "
                              "Ray task, results written here")
    cluster.add_argument("--address", default=None,
                         help="the Ray cluster: auto (a running one on this node), HOST:PORT or ray://HOST:10001 "
                              "(default: $RAY_ADDRESS, else the cluster 'ray start' runs on this machine, else a Ray "
                              "instance started on this machine for the comparison)")
    cluster.add_argument("--cpus-per-run", type=float, default=None, help="CPUs each run's task requests "
                         "(default 1; also its torch threads)")
    cluster.add_argument("--gpus-per-run", type=float, default=None,
                         help="GPUs each run's task requests; a fraction like 0.25 packs 4 runs on a GPU (default: 1 "
                              "for runs on cuda, 0 on the CPU; --device auto picks cuda when the cluster has GPUs)")
    cluster.add_argument("--retries", type=int, default=None,
                         help=f"times a failed task (an error, a dead worker or node) is retried before its run "
                              f"counts as failed (default {DEFAULT_RETRIES})")
    parser.set_defaults(func=run, data_parallel=True)

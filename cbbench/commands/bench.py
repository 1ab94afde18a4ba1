"""``cbbench bench``: the main job — speed comparison, accuracy comparison, weights figure, report.

    cbbench bench --out report [--quick] [--skip-accuracy] [--skip-speed] [--device auto|cpu|cuda]
                  [--dataset NAME] [--data-dir DIR] [--seeds K] [--epochs E] [--threads N]

Speed: every available implementation on the CPU, and on the GPU too when there is one (``auto``).
Accuracy: every method of the long-tail harness on digits-LT (3 seeds unless ``--seeds``). Weights:
effective number and class-weight curves for the digits-LT training counts. Writes ``OUT/summary.md``
and PNGs, ``OUT/speed/<device>/speed.{csv,json}`` and the harness's result files (no plots: the report
draws them) in ``OUT/accuracy/``, and prints the summary tables. The accuracy arguments are checked
before the speed phase starts, so a bad one fails at once; an option for a phase that is skipped is
refused. ``OUT`` is locked for the whole run (one writer per folder, :mod:`cbbench.harness.output`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..harness import METHODS
from ..harness.datasets import BUILTIN_DATASETS
from .weights import measured_report, write_weights_report

DEFAULT_BETAS = (0.0, 0.9, 0.99, 0.999, 0.9999)


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="speed + accuracy benchmark and report (the main job)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="report", help="report directory (default: report)")
    p.add_argument("--quick", action="store_true", help="fewer speed cases and samples, fewer training epochs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="speed on cpu, cuda, or auto = cpu plus cuda when a GPU is present (default); "
                        "accuracy trains on cuda when chosen or present")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--dataset", default="digits-lt", choices=BUILTIN_DATASETS,
                   help="dataset of the accuracy comparison (default digits-lt)")
    p.add_argument("--data-dir", default=None, help="data directory of the CIFAR datasets (the folder holding "
                   "cifar-10-batches-py / cifar-100-python, or that folder itself)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method for accuracy (default 3: mean ± std)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the dataset's recipe; "
                   "halved by --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the speed run (default: torch's own setting)")
    p.set_defaults(func=run)


def _speed_devices(choice: str):
    import torch

    gpu = bool(torch.version.cuda) and torch.cuda.is_available()
    if choice == "cuda" and not gpu:
        raise ValueError("--device cuda: no CUDA device is available to torch")
    if choice == "auto":
        return ["cpu"] + (["cuda"] if gpu else []), ("cuda" if gpu else "cpu")
    return [choice], choice


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _refuse_inapplicable(args) -> None:
    """UsageError for an option of a phase that ``--skip-speed`` / ``--skip-accuracy`` leave out."""
    from ..harness.datasets import check_dataset_options
    from ..harness.errors import UsageError

    given = {"--threads": args.threads is not None, "--seeds": args.seeds is not None,
             "--epochs": args.epochs is not None, "--quick": args.quick}
    skipped = {"--threads": ("--skip-speed", args.skip_speed, "the speed phase's CPU threads"),
               "--seeds": ("--skip-accuracy", args.skip_accuracy, "the accuracy phase's seeds"),
               "--epochs": ("--skip-accuracy", args.skip_accuracy, "the accuracy phase's training epochs"),
               "--quick": ("--skip-speed and --skip-accuracy", args.skip_speed and args.skip_accuracy,
                           "a shorter speed and accuracy phase")}
    for option, (skip, is_skipped, what) in skipped.items():
        if given[option] and is_skipped:
            raise UsageError(f"{option} does not apply with {skip}: it sets {what}, which is not run; remove "
                             f"{option}")
    check_dataset_options(args.dataset, args.data_dir)  # --data-dir: the CIFAR datasets only


def run(args) -> int:
    from ..bench import accuracy as acc
    from ..bench import conformance, report, speed
    from ..harness.output import folder_lock

    _refuse_inapplicable(args)
    devices, train_device = _speed_devices(args.device)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    # every accuracy argument is checked here, before minutes of timing
    plan = None if args.skip_accuracy else _accuracy_plan(args, train_device)
    out = Path(args.out)
    with folder_lock(str(out)):  # created, checked writable and locked before the timing starts
        return _run_phases(args, out, devices, train_device, plan, acc, conformance, report, speed)


def _run_phases(args, out, devices, train_device, plan, acc, conformance, report, speed) -> int:
    notes, phases = [], {}
    began = time.perf_counter()

    speed_results, held_vectors = [], []
    if not args.skip_speed:
        for device in devices:
            t0 = time.perf_counter()
            _log(f"== speed on {device}{' (quick)' if args.quick else ''}")
            result = speed.run_speed(device, quick=args.quick, threads=args.threads, log=_log)
            speed.write_results(result, out / "speed" / device)
            speed_results.append(result)
            phases[f"speed {device}"] = time.perf_counter() - t0
        held_vectors = conformance.evaluate()

    runs, beta_runs = [], []
    if not args.skip_accuracy:
        t0 = time.perf_counter()
        seeds, overrides = plan
        _log(f"== accuracy: {len(METHODS)} methods x {len(seeds)} seed(s) on {args.dataset} "
             f"({train_device}{', epochs=' + str(overrides['epochs']) if 'epochs' in overrides else ''})")
        runs = acc.run_accuracy(args.dataset, None, seeds, str(out / "accuracy"), device=train_device,
                                progress=sys.stderr.isatty(), plots=False, **overrides)
        phases["accuracy"] = time.perf_counter() - t0
        beta_runs = _beta_phase(args, out, seeds, train_device, runs)
        phases["beta experiment"] = time.perf_counter() - t0 - phases["accuracy"]

    t0 = time.perf_counter()
    weights_pngs = []
    counts = runs[0]["train_counts"] if runs else _dataset_counts(args.dataset, args.data_dir)
    if counts:
        weights_pngs = write_weights_report(counts, DEFAULT_BETAS, str(out / "weights"))
        notes.append(f"weights figures drawn for the {args.dataset} training counts {list(counts)}")
    else:
        notes.append(f"weights figure skipped: no training counts for {args.dataset} without its data")
    phases["weights"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    measured_lines = measured_report(str(out))
    phases["measured effective number"] = time.perf_counter() - t0
    phases["total"] = time.perf_counter() - began

    path = report.write_report(out, speed=speed_results, accuracy_runs=runs, weights_pngs=weights_pngs,
                               notes=notes, phases=phases, command="cbbench bench " + " ".join(sys.argv[2:]),
                               beta_runs=beta_runs, held_vectors=held_vectors, measured_lines=measured_lines)
    for result in speed_results:
        print(speed.header_text(result))
        print(speed.format_table(result))
        print()
    if runs:
        print(acc.format_table(acc.summarize(runs)))
        print()
    if beta_runs:
        from ..harness.beta import format_readings
        print(format_readings(beta_runs))
        print()
    for note in notes:
        print(f"note: {note}")
    print(f"report: {path} ({phases['total']:.0f} s)")
    return 0


def _beta_phase(args, out, seeds, train_device, runs):
    """The beta experiment of Cui et al. on digits-LT and prototypes-LT (cbbench.harness.beta), reusing
    the accuracy phase's runs that have the same configuration; results in OUT/beta/<dataset>/."""
    from ..harness.beta import BENCH_DATASETS, run_beta_experiments

    _log(f"== beta experiment on {', '.join(BENCH_DATASETS)} ({len(seeds)} seed(s))")
    return run_beta_experiments(str(out / "beta"), BENCH_DATASETS, seeds, device=train_device, quick=args.quick,
                                epochs=args.epochs, reuse=runs, progress=sys.stderr.isatty())


def _accuracy_plan(args, train_device):
    """``(seeds, run_comparison overrides)`` after checking ``--dataset/--seeds/--epochs/--data-dir`` with
    the harness's own functions (every method's config resolved, the dataset loaded, so a missing CIFAR
    folder fails now). Raises ValueError / FileNotFoundError."""
    from ..harness import compare
    from ..harness.datasets import load_dataset
    from ..harness.train import TrainConfig, resolve_config

    seeds = compare.parse_seeds(3 if args.seeds is None else args.seeds)
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    elif args.quick:
        recipe = _recipe_epochs(args.dataset)
        if recipe:
            overrides["epochs"] = max(1, recipe // 2)
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    for method in METHODS:
        resolve_config(TrainConfig(args.dataset, method, device=train_device, **overrides))
    load_dataset(args.dataset, data_dir=args.data_dir)
    return seeds, overrides


def _recipe_epochs(dataset: str):
    from ..harness.train import RECIPES

    return RECIPES.get(dataset, {}).get("epochs")


def _dataset_counts(dataset: str, data_dir=None):
    """Training counts of the dataset's long-tailed split, for the weights figure without training."""
    from ..harness.datasets import load_dataset

    try:
        data = load_dataset(dataset, data_dir=data_dir)
    except (ValueError, FileNotFoundError):  # a dataset that needs data on disk
        return None
    import numpy as np

    return np.bincount(np.asarray(data.y_train), minlength=data.num_classes).tolist()

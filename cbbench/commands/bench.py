"""``cbbench bench``: the main job -- speed of the losses and fused heads, accuracy, the beta experiment, report.

    cbbench bench --out report [--quick | --full] [--skip-accuracy] [--skip-speed] [--device auto|cpu|cuda]
                  [--dataset NAME] [--data-dir DIR] [--seeds K] [--epochs E] [--threads N]

By default the main job (``make bench``; about two minutes on 2 CPU cores): the losses against torch eager,
torch.compile and the bandwidth floor at the training-size shapes and one large shape per loss, the fused
heads against ``linear`` + the loss (eager and compiled), every method of the long-tail harness on
digits-LT (3 seeds), and the beta experiment of Cui et al. ``--full`` runs the complete sweep (every case,
implementation and timed mode, the heads' full set with their memory, the beta experiment for every loss
family); ``--quick`` a smoke run. What each level runs: :mod:`cbbench.bench.plan`. One progress bar over
the phases shows the time left (:mod:`cbbench.bench.progress`).

Speed: on the CPU, and on the GPU too when there is one (``auto``). Writes ``OUT/summary.md`` and PNGs,
``OUT/speed/<device>/speed.{csv,json}``, ``OUT/heads/<device>/linear.{json,md}``, the harness's result
files (no plots: the report draws them) in ``OUT/accuracy/`` and ``OUT/beta/<dataset>/``, and prints the
summary tables. The accuracy arguments are checked before the speed phase starts, so a bad one fails at
once; an option for a phase that is skipped is refused. ``OUT`` is locked for the whole run (one writer per
folder, :mod:`cbbench.harness.output`).
"""
from __future__ import annotations

import json
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
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a smoke run: fewer speed cases and samples, no heads, half the training epochs")
    size.add_argument("--full", action="store_true",
                      help="the complete sweep: every speed case, implementation and timed mode, the fused heads' "
                           "full set with memory, the beta experiment for every loss family (an hour or more "
                           "on 2 CPU cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="speed on cpu, cuda, or auto = cpu plus cuda when a GPU is present (default); "
                        "accuracy trains on cuda when chosen or present")
    p.add_argument("--skip-speed", action="store_true", help="no speed phase (losses and heads)")
    p.add_argument("--skip-accuracy", action="store_true", help="no accuracy phase and no beta experiment")
    p.add_argument("--dataset", default="digits-lt", choices=BUILTIN_DATASETS,
                   help="dataset of the accuracy comparison (default digits-lt)")
    p.add_argument("--data-dir", default=None, help="data directory of the CIFAR datasets (the folder holding "
                   "cifar-10-batches-py / cifar-100-python, or that folder itself)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method for accuracy (default 3: mean ± std)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the dataset's recipe; "
                   "halved by --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the speed run of the losses (default: torch's own setting)")
    p.set_defaults(func=run)


def _speed_devices(choice: str):
    import torch

    gpu = bool(torch.version.cuda) and torch.cuda.is_available()
    if choice == "cuda" and not gpu:
        raise ValueError("--device cuda: no CUDA device is available to torch")
    if choice == "auto":
        return ["cpu"] + (["cuda"] if gpu else []), ("cuda" if gpu else "cpu")
    return [choice], choice


def _refuse_inapplicable(args) -> None:
    """UsageError for an option of a phase that ``--skip-speed`` / ``--skip-accuracy`` leave out."""
    from ..harness.datasets import check_dataset_options
    from ..harness.errors import UsageError

    given = {"--threads": args.threads is not None, "--seeds": args.seeds is not None,
             "--epochs": args.epochs is not None, "--quick": args.quick, "--full": args.full}
    skipped = {"--threads": ("--skip-speed", args.skip_speed, "the speed phase's CPU threads"),
               "--seeds": ("--skip-accuracy", args.skip_accuracy, "the accuracy phase's seeds"),
               "--epochs": ("--skip-accuracy", args.skip_accuracy, "the accuracy phase's training epochs"),
               "--quick": ("--skip-speed and --skip-accuracy", args.skip_speed and args.skip_accuracy,
                           "a shorter speed and accuracy phase"),
               "--full": ("--skip-speed and --skip-accuracy", args.skip_speed and args.skip_accuracy,
                          "the complete speed and accuracy phases")}
    for option, (skip, is_skipped, what) in skipped.items():
        if given[option] and is_skipped:
            raise UsageError(f"{option} does not apply with {skip}: it sets {what}, which is not run; remove "
                             f"{option}")
    check_dataset_options(args.dataset, args.data_dir)  # --data-dir: the CIFAR datasets only


def level_name(args) -> str:
    return "quick" if args.quick else "full" if args.full else "main"


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


def _steps(args, lvl, devices):
    """``[(phase, estimated seconds)]`` of the whole job (cbbench.bench.plan's estimates)."""
    from ..bench import plan as P
    from ..bench.cases import head_suite, suite

    steps = []
    if not args.skip_speed:
        for device in devices:
            cases = suite(device, set_name=lvl.speed_set)
            first = [(f"speed {device}", P.FIRST_COMPILE_S)] if "compile" in lvl.impls and cases else []
            steps += first + [(f"speed {device}", P.SPEED_CASE_S[lvl.name])] * len(cases)
            if lvl.head_set:
                steps += [(f"heads {device}", P.HEAD_CASE_S[lvl.name])] * len(head_suite(device, lvl.head_set))
    if not args.skip_accuracy:
        scale = 0.5 if lvl.half_epochs else 1.0
        steps += [("accuracy", P.ACCURACY_METHOD_S * scale)] * len(METHODS)
        steps += [("beta experiment", seconds * scale * len(lvl.beta_losses))
                  for seconds in P.BETA_DATASET_S.values()]
    return steps + [("report", P.REPORT_S)]


def _run_phases(args, out, devices, train_device, plan, acc, conformance, report, speed) -> int:
    from ..bench import plan as P
    from ..bench.cases import suite
    from ..bench.progress import PhaseProgress

    lvl = P.level(level_name(args))
    notes, phases = [], {}
    began = time.perf_counter()
    progress = PhaseProgress(_steps(args, lvl, devices))
    compiles = {"first": "compile" in lvl.impls}

    def case_done(case):
        if compiles["first"]:  # torch.compile's one-time start is behind the first case
            compiles["first"] = False
            progress.done()
        progress.done()

    speed_results, head_results, held_vectors = [], [], []
    try:
        if not args.skip_speed:
            for device in devices:
                t0 = time.perf_counter()
                cases = suite(device, set_name=lvl.speed_set)
                progress.phase(f"speed {device}", f"speed on {device}: {len(cases)} cases ({lvl.name} set), "
                               f"{', '.join(lvl.impls)}")
                result = speed.run_speed(device, cases=cases, impls=lvl.impls, modes=lvl.modes, policy=lvl.policy,
                                         threads=args.threads, log=progress.log, on_case=case_done, skip=lvl.skip)
                speed.write_results(result, out / "speed" / device)
                speed_results.append(result)
                phases[f"speed {device}"] = time.perf_counter() - t0
                if lvl.head_set:
                    t0 = time.perf_counter()
                    head_results.append(_heads_phase(device, lvl, out, progress))
                    phases[f"heads {device}"] = time.perf_counter() - t0
            held_vectors = conformance.evaluate()

        runs, beta_runs = [], []
        if not args.skip_accuracy:
            t0 = time.perf_counter()
            seeds, overrides = plan
            progress.phase("accuracy", f"accuracy: {len(METHODS)} methods x {len(seeds)} seed(s) on {args.dataset} "
                           f"({train_device}{', epochs=' + str(overrides['epochs']) if 'epochs' in overrides else ''})")
            runs = acc.run_accuracy(args.dataset, None, seeds, str(out / "accuracy"), device=train_device,
                                    progress=False, plots=False, on_method=lambda method: progress.done(),
                                    **overrides)
            phases["accuracy"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            beta_runs = _beta_phase(args, out, seeds, train_device, runs, lvl, progress)
            phases["beta experiment"] = time.perf_counter() - t0

        progress.phase("report")
        t0 = time.perf_counter()
        weights_pngs = []
        counts = runs[0]["train_counts"] if runs else _dataset_counts(args.dataset, args.data_dir)
        if counts:
            weights_pngs = write_weights_report(counts, DEFAULT_BETAS, str(out / "weights"))
            notes.append(f"weights figures drawn for the {args.dataset} training counts {list(counts)}")
        else:
            notes.append(f"weights figure skipped: no training counts for {args.dataset} without its data")
        if lvl.name != "full":
            notes.append("the main job: `cbbench bench --full` runs the complete sweep (every case, implementation "
                         "and timed mode; the heads' full set with memory; the beta experiment for every loss)"
                         if lvl.name == "main" else "a smoke run (--quick): not for quoting")
        t0 = time.perf_counter()
        measured_lines = measured_report(str(out))
        phases["measured effective number"] = time.perf_counter() - t0
        phases["total before the report"] = time.perf_counter() - began
        path = report.write_report(out, speed=speed_results, accuracy_runs=runs, weights_pngs=weights_pngs,
                                   notes=notes, phases=phases, command="cbbench bench " + " ".join(sys.argv[2:]),
                                   beta_runs=beta_runs, held_vectors=held_vectors, heads=head_results,
                                   measured_lines=measured_lines)
        progress.done()
    finally:
        progress.close()
    for result in speed_results:
        print(speed.header_text(result))
        print(speed.format_table(result))
        print()
    if head_results:
        from ..bench import linear as heads

        for result in head_results:
            print(f"fused heads on {result['env']['device']} ({result['threads']} thread, {result['clock']} clock):")
            print(heads.table(result["rows"]))
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
    print(f"report: {path} ({time.perf_counter() - began:.0f} s)")
    return 0


def _heads_phase(device, lvl, out, progress) -> dict:
    """The fused heads of the level's set on ``device`` (cbbench.bench.linear, one thread and the process
    clock on the CPU, as ``python -m cbbench.bench.linear``); written to ``OUT/heads/<device>/``."""
    import torch

    from ..bench import linear as heads
    from ..bench.cases import head_suite
    from ..provenance import load_average

    cases = head_suite(device, lvl.head_set)
    progress.phase(f"heads {device}", f"fused heads on {device}: {len(cases)} cases ({lvl.name} set), "
                   f"{', '.join(lvl.head_impls)}" + (", memory in fresh processes" if lvl.head_memory else ""))
    threads, before = 1, torch.get_num_threads()
    memory = lvl.head_memory and (device != "cpu" or heads.proc_peak_unavailable() is None)
    load_before = load_average()
    torch.set_num_threads(threads)
    try:
        rows = []
        for case in cases:
            rows += heads.run_case(case, lvl.head_impls, repeats=lvl.head_repeats, cpu_clock="process",
                                   threads=threads, memory=memory)
            progress.done()
    finally:
        torch.set_num_threads(before)
    from ..provenance import environment

    env = dict(environment(device), load_average_1min_before=load_before, load_average_1min_after=load_average())
    result = {"env": env, "threads": threads, "clock": "process" if device == "cpu" else "cuda-events",
              "repeats": lvl.head_repeats, "rows": rows}
    folder = out / "heads" / device
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "linear.json").write_text(json.dumps(result, indent=1, default=str))
    (folder / "linear.md").write_text(heads.table(rows) + "\n")
    return result


def _beta_phase(args, out, seeds, train_device, runs, lvl, progress):
    """The beta experiment of Cui et al. (cbbench.harness.beta) on digits-LT and prototypes-LT for the level's
    loss families, reusing the accuracy phase's runs that have the same configuration; results in
    OUT/beta/<dataset>/."""
    from ..harness.beta import BENCH_BETAS, BENCH_DATASETS, run_beta_experiments

    beta_runs = []
    for dataset in BENCH_DATASETS:
        progress.phase("beta experiment", f"beta experiment on {dataset}: {', '.join(lvl.beta_losses)} at beta "
                       f"{', '.join(f'{b:g}' for b in BENCH_BETAS)} ({len(seeds)} seed(s))")
        beta_runs += run_beta_experiments(str(out / "beta"), [dataset], seeds, device=train_device,
                                          quick=lvl.half_epochs, epochs=args.epochs, reuse=runs, progress=False,
                                          losses=lvl.beta_losses)
        progress.done()
    return beta_runs


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

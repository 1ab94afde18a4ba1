"""Run a grid of methods x betas x seeds on one dataset; write each run as it finishes.

``run_comparison`` is the Python API behind ``cbbench compare`` (and the accuracy phases of ``cbbench
bench``). Before the first run it checks every run's configuration against the loaded data and that the
output folder can be written, so a bad grid fails in seconds, not after hours. Each finished run goes at
once to ``OUT/runs/<run id>/result.json``, and ``OUT/results.csv`` is rewritten (both atomically: a
temporary file renamed over the old one); ``resume=True`` skips the runs whose result is already there
(with the same configuration and the same data: each result records the data's fingerprint,
:mod:`cbbench.harness.fingerprint`; a result of other data or another configuration is refused, never
mixed in). ``summary.md``, ``runs.json`` and the plots follow at the end. The output folder is locked for
the whole comparison (``OUT/.cbbench.lock``, :mod:`cbbench.harness.output`): a second writer stops at
once. An interrupt (Ctrl-C / SIGINT, or SIGTERM under the command line) stops the running run, writes the
summary of the finished ones and raises :class:`ComparisonInterrupted`, which says what was kept.

The runs train in this process, one after another (``executor="serial"``, the default), or as Ray tasks on
a cluster (``executor="ray"``, :mod:`cbbench.harness.executors`); either way their results come back here
and are written by the code above, so the files are the same. A Ray run that fails after its retries is
reported (``summary.md``, ``runs/<run id>/error.txt``) and :class:`~cbbench.harness.errors.RunsFailed`
is raised once the others are written; ``resume`` then trains only the failed ones.

With ``betas``, every method whose behaviour depends on the class-balanced beta (CB weights, DRW, CB
sampling) runs once per beta: the beta experiment of Cui et al. (see :mod:`cbbench.harness.beta`).

Under data parallelism (every rank of a process group calls it with the same arguments, as ``torchrun
... -m cbbench compare`` does) the runs go one at a time, each trained by all ranks together; rank 0
checks the output folder and reads the finished runs (every rank gets its verdict), and only rank 0
writes files and shows progress bars.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import time
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from .. import distributed
from .datasets import DATASETS, load_dataset
from .ddp import is_main, on_main
from .errors import OutputError, ResumeConflict, RunsFailed, UsageError
from .executors import RunFailure, make_executor
from .fingerprint import data_fingerprint
from .methods import METHODS, get_spec
from .metrics import SCALAR_METRICS
from .output import atomic_write, check_writable, main_folder_lock
from .train import TrainConfig, check_inputs, check_run, resolve_config, train_run

__all__ = ["run_comparison", "plan_runs", "PlannedRun", "ComparisonInterrupted", "parse_seeds", "parse_betas",
           "run_label", "summarize", "mean_std_count", "write_results_csv", "write_summary_md", "finished_run_ids",
           "SCALAR_METRICS", "atomic_write", "check_writable"]  # the last two: cbbench.harness.output's, re-exported

_RESERVED = {"dataset", "method", "seed", "imbalance", "epochs", "device", "beta"}
_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in _RESERVED) + ("beta",)
# config fields that change how a run executes but not which experiment it is: a run resumed on another
# device, backend, thread count or data location is the same run. The imbalance is checked through the
# training counts it produces (a result records the dataset's resolved imbalance, the config may say None).
_EXECUTION_FIELDS = frozenset({"device", "accel", "backend", "threads", "workers", "eval_batch_size", "data_dir",
                               "imbalance"})
RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison: its id (the folder name under ``OUT/runs``) and resolved config."""

    run_id: str
    config: TrainConfig


class ComparisonInterrupted(KeyboardInterrupt):
    """A comparison stopped by an interrupt (``signum``: SIGINT, or SIGTERM); ``runs`` are the finished
    ones (written to ``out_dir``)."""

    def __init__(self, runs: list, planned: int, out_dir: Optional[str], signum: int = signal.SIGINT):
        self.runs, self.planned, self.out_dir, self.signum = runs, planned, out_dir, int(signum)
        where = (f"kept in {out_dir}: {os.path.join(RUNS_DIR, '<run>', 'result.json')} per finished run, "
                 "results.csv and summary.md; rerun the same command with --resume to continue"
                 if out_dir else "nothing written (no output folder)")
        how = "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted"
        super().__init__(f"{how} after {len(runs)} of {planned} runs; {where}")


def parse_seeds(seeds: Union[int, Iterable[int]]) -> list:
    """``K`` -> seeds ``0..K-1``; a list of whole numbers is kept as given (no duplicates)."""
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds (a count) must be >= 1, got {seeds}")
        return list(range(int(seeds)))
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of whole numbers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds!r}")
    return [int(s) for s in seeds]


def parse_betas(betas: Optional[Iterable[float]]) -> Optional[list]:
    """``None`` (no beta sweep) or a non-empty list of distinct betas in [0, 1)."""
    if betas is None:
        return None
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
        raise TypeError(f"betas must be a list of numbers in [0, 1), got {betas!r}")
    out = []
    for b in betas:
        if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)):
            raise TypeError(f"betas must be numbers in [0, 1), got {b!r}")
        if not (0.0 <= float(b) < 1.0):  # also rejects NaN
            raise ValueError(f"every beta must be in [0, 1) (beta -> 1 is inverse frequency: use the inverse_freq "
                             f"methods), got {b!r}")
        out.append(float(b))
    if not out:
        raise ValueError("betas is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"betas repeat: {out!r}")
    return out


def run_label(run: dict) -> str:
    """The name of a run's group in summaries and plots: the method, plus its beta where it uses one."""
    beta = run.get("beta")
    return run["method"] if beta is None else f"{run['method']} (beta={beta:g})"


def _run_id(method: str, seed: int, beta: Optional[float]) -> str:
    return f"{method}-seed{seed}" if beta is None else f"{method}-beta{beta!r}-seed{seed}"


def plan_runs(dataset: str, methods: Sequence[str], seeds: Union[int, list], *, betas=None,
              imbalance: Optional[float] = None, epochs: Optional[int] = None, device: str = "cpu",
              local_device: bool = True, **overrides) -> List[PlannedRun]:
    """Every run of the grid, configs resolved (recipe defaults filled in, every field validated).
    Methods that use beta run once per beta of ``betas`` (when given); the others once. ``local_device=False``:
    the runs train on other machines, whose devices are not looked for here (:func:`resolve_config`)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if isinstance(methods, str):
        raise TypeError("methods must be a list of method names, not a string")
    methods = list(methods)
    if not methods:
        raise ValueError("methods must name at least one method")
    specs = [get_spec(m) for m in methods]
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat: {methods!r}")
    seeds = parse_seeds(seeds)
    betas = parse_betas(betas)
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {', '.join(_OVERRIDABLE)}")
    if betas is not None and "beta" in overrides:
        raise ValueError("pass either beta (one value for every method) or betas (a sweep), not both")
    if betas is not None and not any(spec.uses_beta for spec in specs):
        users = ", ".join(m for m in METHODS if get_spec(m).uses_beta)
        raise UsageError(f"--betas does not apply: none of the methods {', '.join(methods)} uses beta (the methods "
                         f"that do: {users}); add one of them, or remove --betas")
    plan = []
    for method, spec in zip(methods, specs):
        method_betas = betas if (betas is not None and spec.uses_beta) else [overrides.get("beta")]
        for beta in method_betas:
            opts = dict(overrides)
            if beta is not None:
                opts["beta"] = beta
            for seed in seeds:
                config = resolve_config(TrainConfig(dataset, method, seed=seed, imbalance=imbalance, epochs=epochs,
                                                    device=device, **opts), local_device=local_device)
                plan.append(PlannedRun(_run_id(method, seed, config.beta if spec.uses_beta else None), config))
    return plan


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k in _TRAIN_FIELDS and k not in _EXECUTION_FIELDS}


_TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _same_run(planned: PlannedRun, result: dict, train_counts: list) -> Optional[str]:
    """``None`` when ``result`` is the finished ``planned`` run (its configuration), else what differs."""
    want = _identity(json.loads(json.dumps(planned.config.to_dict())))
    have = _identity(result.get("config", {}))
    diff = [f"{k}: {have.get(k)!r} there, {want[k]!r} now" for k in want if have.get(k) != want[k]]
    if result.get("train_counts") != list(train_counts):
        diff.append(f"training counts {result.get('train_counts')} there, {list(train_counts)} now")
    return "; ".join(diff) or None


def _same_data(result: dict, fingerprint: str) -> Optional[str]:
    """``None`` when ``result`` was trained on the data of ``fingerprint``, else what differs."""
    have = result.get("data_fingerprint")
    if have == fingerprint:
        return None
    if have is None:
        return "it records no data fingerprint (an older cbbench wrote it), so its data cannot be checked"
    return f"data fingerprint {have} there, {fingerprint} now"


# what the summary, the CSV and the plots read from a result, and the JSON types they expect
_RESULT_TYPES = {"method": str, "dataset": str, "seed": int, "status": str, "config": dict, "train_counts": list,
                 "train_time_s": (int, float), "per_class_accuracy": (list, type(None)),
                 **{key: (int, float, type(None)) for key in SCALAR_METRICS}}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _check_result(path: str, result) -> None:
    """ResumeConflict unless ``result`` (read from ``path``) has the shape of a run's result."""
    fix = "remove that file to train the run again"
    if not isinstance(result, dict):
        raise ResumeConflict(f"{path}: holds JSON {_JSON_NAMES.get(type(result), type(result).__name__)}, not a run's "
                             f"result (an object); {fix}")
    for key, types in _RESULT_TYPES.items():
        if key not in result:
            raise ResumeConflict(f"{path}: not a run's result (no {key!r}); {fix}")
        if isinstance(result[key], bool) or not isinstance(result[key], types):
            raise ResumeConflict(f"{path}: {key!r} is {_JSON_NAMES.get(type(result[key]), type(result[key]).__name__)},"
                                 f" not what a run's result holds there; {fix}")


def _result_path(out_dir: str, run_id: str) -> str:
    return os.path.join(out_dir, RUNS_DIR, run_id, "result.json")


def _error_path(out_dir: str, run_id: str) -> str:
    """A failed run's report (cbbench.harness.executors): the error and traceback of its last attempt."""
    return os.path.join(out_dir, RUNS_DIR, run_id, "error.txt")


def finished_run_ids(out_dir: str, plan: Sequence[PlannedRun]) -> list:
    """Ids of the planned runs that have a ``result.json`` under ``out_dir``."""
    return [p.run_id for p in plan if os.path.isfile(_result_path(out_dir, p.run_id))]


def _load_finished(out_dir: str, plan: Sequence[PlannedRun], train_counts: list, fingerprint: str) -> dict:
    """run id -> result of every planned run already written under ``out_dir`` with the same config and
    data; anything else there is a ResumeConflict (the folder belongs to another comparison, or its data
    changed): refused, never mixed into the summary."""
    finished = {}
    for planned in plan:
        path = _result_path(out_dir, planned.run_id)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                result = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ResumeConflict(f"{path}: unreadable result ({exc}); remove it to retrain that run") from None
        _check_result(path, result)
        diff = _same_run(planned, result, train_counts)
        if diff:
            raise ResumeConflict(f"{path} was trained with another configuration ({diff}); resume with the original "
                                 "options, or use another output folder")
        diff = _same_data(result, fingerprint)
        if diff:
            raise ResumeConflict(f"{path} was trained on other data ({diff}): the input files, their sizes or "
                                 "modification times differ; resume on the data it was trained on, or use another "
                                 "output folder (or remove its runs/ to train them all again)")
        finished[planned.run_id] = result
    return finished


def run_comparison(dataset: str, methods: list, seeds: Union[int, list], out_dir: Optional[str] = None, *,
                   betas: Optional[Sequence[float]] = None, resume: bool = False, reuse: Sequence[dict] = (),
                   imbalance: Optional[float] = None, epochs: Optional[int] = None, device: str = "cpu",
                   progress: bool = True, plots: bool = True, executor=None, **overrides) -> list:
    """Train every method with every seed (and every beta of ``betas`` for the methods that use one) on
    ``dataset``; return one result dict per run (the keys of ``result.json``, plus ``run_id``) in grid
    order. ``overrides`` are :class:`TrainConfig` fields (``beta``, ``gamma``, ``batch_size``, ``lr``,
    ``model``, ``data_dir``, ``dataset_options``, ...).

    With ``out_dir``: each run is written as it finishes (``runs/<run id>/result.json``, ``results.csv``),
    then ``summary.md``, ``runs.json`` and, with ``plots``, the PNGs. ``resume`` takes the runs already
    in ``out_dir`` instead of training them again; ``reuse`` does the same from result dicts in memory
    (e.g. an earlier comparison on the same data). Raises :class:`ComparisonInterrupted` on an interrupt.

    ``executor``: ``"serial"`` (default: every run in this process), ``"ray"`` (every run a Ray task, with
    the default options) or an executor object (:class:`cbbench.harness.executors.RayExecutor` with its
    address, CPUs and GPUs per run, retries). With Ray, runs that fail after their retries are reported
    and :class:`~cbbench.harness.errors.RunsFailed` is raised after everything else is written.
    """
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",")]
    executor = make_executor(executor)
    if not executor.local_device:
        if distributed.world_size() > 1:
            raise UsageError(f"executor {executor.name!r} does not run under torchrun: each run is one task there; "
                             "start the comparison in one process")
        # the grid's own errors (methods, betas, options) before connecting to a cluster; the device and
        # accel are checked once the cluster says which devices it has
        plan_runs(dataset, methods, seeds, betas=betas, imbalance=imbalance, epochs=epochs, device="cpu",
                  local_device=False, **dict(overrides, accel="none"))
    with executor.session():
        device = executor.run_device(device)  # refuses runs the cluster cannot train, before anything is sent
        plan = plan_runs(dataset, methods, seeds, betas=betas, imbalance=imbalance, epochs=epochs, device=device,
                         local_device=executor.local_device, **overrides)
        first = plan[0].config
        data = load_dataset(dataset, data_dir=first.data_dir, imbalance=imbalance, progress=progress and is_main(),
                            **first.dataset_options)
        for planned in plan:
            check_run(planned.config, data, local_device=executor.local_device)
        with contextlib.ExitStack() as held:
            if out_dir is not None:  # one writer per folder, from the resume check to the last plot
                held.enter_context(main_folder_lock(out_dir))
            return _run_plan(plan, data, out_dir, resume=resume, reuse=reuse, progress=progress, plots=plots,
                             executor=executor)


def _run_plan(plan: List[PlannedRun], data, out_dir: Optional[str], *, resume: bool, reuse: Sequence[dict],
              progress: bool, plots: bool, executor) -> list:
    counts = [int(c) for c in data.train_counts]
    fingerprint = data_fingerprint(data)
    done = {}
    if out_dir is not None and resume:  # the folder is locked and checked writable (run_comparison)
        done.update(on_main(_load_finished, out_dir, plan, counts, fingerprint))
    main = is_main()
    progress = progress and main
    writes = out_dir if main else None  # every rank trains; rank 0 alone writes
    for result in reuse:
        for planned in plan:
            if planned.run_id not in done and result.get("method") == planned.config.method \
                    and result.get("seed") == planned.config.seed and not _same_run(planned, result, counts) \
                    and not _same_data(result, fingerprint):
                done[planned.run_id] = dict(result, run_id=planned.run_id)
    todo = [planned for planned in plan if planned.run_id not in done]
    if todo:
        check_inputs(data, plan[0].config, progress)  # every input file, before the first epoch

    start = time.perf_counter()
    runs, failures = {}, []
    bar = tqdm(total=len(plan), desc=f"{data.name} comparison", disable=not progress, unit="run")

    running_now = [0]  # as the executor last said

    def show(running: Optional[int] = None, refresh: bool = True) -> None:
        if running is not None:
            running_now[0] = running
        # the counts in this order (tqdm sorts keyword arguments)
        bar.set_postfix(collections.OrderedDict(running=running_now[0], finished=len(runs), failed=len(failures)),
                        refresh=refresh)

    def keep(run_id: str, result: dict) -> None:  # a finished run: written at once, whole
        if writes is not None:
            atomic_write(_result_path(writes, run_id), json.dumps(result, indent=1))
            with contextlib.suppress(FileNotFoundError):  # the report of an earlier failed attempt
                os.unlink(_error_path(writes, run_id))
        runs[run_id] = result

    try:
        for planned in plan:  # the kept runs, in grid order (the reused ones are written here)
            if planned.run_id in done:
                result = done[planned.run_id]
                if writes is None or not os.path.isfile(_result_path(writes, planned.run_id)):
                    keep(planned.run_id, result)
                runs[planned.run_id] = result
                bar.update()
        if runs and writes is not None:
            write_results_csv(_in_order(plan, runs), os.path.join(writes, "results.csv"))
        show(0)
        with contextlib.closing(executor.execute(todo, data, train_run, progress=progress, running=show)) as ends:
            for outcome in ends:
                if outcome.failure is not None:
                    failures.append(_failure_record(_planned(plan, outcome.run_id), outcome.failure))
                    _report_failure(writes, outcome.failure, bar if progress else None)
                else:
                    keep(outcome.run_id, dict(outcome.result, run_id=outcome.run_id))
                    if writes is not None:
                        write_results_csv(_in_order(plan, runs), os.path.join(writes, "results.csv"))
                show(max(0, running_now[0] - 1), refresh=False)  # this one ended; the executor says the rest
                bar.update()
        show(0)
        bar.close()
    except KeyboardInterrupt as exc:
        bar.close()
        finished = _in_order(plan, runs)
        if writes is not None and (finished or failures):  # the quick files only: a second Ctrl-C must not wait
            write_summary_md(finished, os.path.join(writes, "summary.md"), planned=len(plan), failures=failures,
                             dataset=data.name)
        raise ComparisonInterrupted(finished, len(plan), out_dir, getattr(exc, "signum", signal.SIGINT)) from None
    except OutputError as exc:
        kept = f"the {len(runs)} finished run(s) before it are in {os.path.join(out_dir, RUNS_DIR)}; " \
            "--resume continues from them" if runs else "no run had finished"
        raise OutputError(f"{exc} ({kept})") from None
    runs = _in_order(plan, runs)
    wall = time.perf_counter() - start
    out_dir = writes
    if out_dir is not None:
        write_summary_md(runs, os.path.join(out_dir, "summary.md"), wall_time_s=wall, planned=len(plan),
                         failures=failures, dataset=data.name)
        atomic_write(os.path.join(out_dir, "runs.json"), json.dumps(runs, indent=1))
        if plots and runs:
            from .beta import has_beta_sweep
            from .plots import plot_accuracy_per_method, plot_beta_experiment, plot_per_class_accuracy

            plot_accuracy_per_method(runs, os.path.join(out_dir, "accuracy_per_method.png"))
            plot_per_class_accuracy(runs, os.path.join(out_dir, "per_class_accuracy.png"))
            if has_beta_sweep(runs):
                plot_beta_experiment(runs, os.path.join(out_dir, "beta_experiment.png"))
    if failures:
        raise RunsFailed(_failed_message(failures, len(plan), len(runs), out_dir), runs, failures)
    return runs


def _planned(plan: Sequence[PlannedRun], run_id: str) -> PlannedRun:
    return next(p for p in plan if p.run_id == run_id)


def _failure_record(planned: PlannedRun, failure: RunFailure) -> dict:
    """A failed run as the summary lists it."""
    spec = get_spec(planned.config.method)
    return {"run_id": planned.run_id, "method": planned.config.method, "seed": planned.config.seed,
            "beta": planned.config.beta if spec.uses_beta else None, "error": failure.error,
            "attempts": failure.attempts}


def _report_failure(out_dir: Optional[str], failure: RunFailure, bar) -> None:
    """A failed run's full report to ``runs/<run id>/error.txt`` and its one line to stderr, at once."""
    where = ""
    if out_dir is not None:
        path = _error_path(out_dir, failure.run_id)
        atomic_write(path, f"{failure.run_id}: failed after {failure.attempts} attempt(s): {failure.error}\n\n"
                           f"The last attempt's report:\n{failure.details}\n")
        where = f" (details: {path})"
    line = f"failed: {failure.run_id} after {failure.attempts} attempt(s): {failure.error}{where}"
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _failed_message(failures: list, planned: int, finished: int, out_dir: Optional[str]) -> str:
    names = ", ".join(f["run_id"] for f in failures[:5]) + (f" and {len(failures) - 5} more" if len(failures) > 5
                                                             else "")
    kept = (f"the {finished} finished run(s), results.csv and summary.md are in {out_dir}, each failed run's error "
            f"in {os.path.join(out_dir, RUNS_DIR, '<run>', 'error.txt')}; rerun the same command with --resume to "
            "train only the failed runs") if out_dir else f"{finished} run(s) finished"
    return f"{len(failures)} of {planned} runs failed after their retries: {names}; {kept}"


def _in_order(plan: Sequence[PlannedRun], runs: dict) -> list:
    return [runs[p.run_id] for p in plan if p.run_id in runs]


def mean_std_count(values) -> tuple:
    """(mean, sample std or None, count) over the values that are neither None nor NaN."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None), len(vals)


def summarize(runs: list) -> list:
    """Per group of :func:`run_label` (first-seen order): mean, std and count of each scalar metric over
    the runs that finished normally, how many diverged, and the mean time."""
    groups = {}
    for run in runs:
        groups.setdefault(run_label(run), []).append(run)
    rows = []
    for label, group in groups.items():
        row = {"label": label, "method": group[0]["method"], "beta": group[0].get("beta"), "runs": len(group),
               "seeds": [r["seed"] for r in group],
               "diverged": [r["seed"] for r in group if r.get("status") == "diverged"]}
        for key in SCALAR_METRICS:
            row[key] = mean_std_count([r[key] for r in group])
        row["train_time_s"] = float(np.mean([r["train_time_s"] for r in group]))
        rows.append(row)
    return rows


def write_results_csv(runs: list, path: str) -> None:
    """One row per run: status, scalar metrics, training time and per-class accuracy (acc_class_i);
    written atomically."""
    num_classes = max(len(r["train_counts"]) for r in runs)
    header = ["dataset", "method", "beta", "seed", "status", *SCALAR_METRICS, "train_time_s"] + [
        f"acc_class_{i}" for i in range(num_classes)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in runs:
        per_class = list(r["per_class_accuracy"] or [])
        per_class += [None] * (num_classes - len(per_class))
        writer.writerow([r["dataset"], r["method"], r.get("beta"), r["seed"], r.get("status", "ok"),
                         *(r[k] for k in SCALAR_METRICS), f"{r['train_time_s']:.3f}", *per_class])
    atomic_write(path, buf.getvalue())


def _fmt(stat) -> str:
    mean, std, _ = stat
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def write_summary_md(runs: list, path: str, *, wall_time_s: Optional[float] = None,
                     planned: Optional[int] = None, failures: Sequence[dict] = (),
                     dataset: Optional[str] = None) -> None:
    """A markdown table, mean ± sample std over seeds per method (and beta), the run settings, the
    diverged runs and, with a beta sweep, the beta experiment's reading. ``planned`` (the grid size)
    marks an interrupted comparison; ``failures`` (runs that failed on a cluster, without a result) are
    listed, and are all there is when no run finished (then ``dataset`` names the comparison)."""
    from .beta import beta_markdown, has_beta_sweep

    failed = _failed_markdown(failures)
    if not runs:
        lines = [f"# {dataset or 'comparison'}: long-tailed method comparison", "",
                 f"**No run finished: {len(failures)} of {planned or len(failures)} failed.**", "", *failed]
        atomic_write(path, "\n".join(lines) + "\n")
        return
    first = runs[0]
    cfg = first["config"]
    counts = first["train_counts"]
    seeds = sorted({r["seed"] for r in runs})
    decays = ("cosine decay to 0" if cfg.get("lr_schedule") == "cosine" else
              ", ".join(f"x{f:g} at epoch {m}" for m, f in zip(cfg["milestones"], cfg["lr_factors"])))
    betas = sorted({r["beta"] for r in runs if r.get("beta") is not None})
    lines = [f"# {first['dataset']}: long-tailed method comparison", ""]
    if planned is not None and planned != len(runs) + len(failures):
        lines += [f"**Interrupted: {len(runs)} of {planned} runs finished; the table covers those.**", ""]
    if failures:
        lines += [f"**Failed: {len(failures)} of {planned or len(runs) + len(failures)} runs failed (no result; "
                  "listed below); the table covers the finished ones.**", ""]
    lines += [
        f"- imbalance factor {cfg['imbalance']:g}; training counts per class {counts} "
        f"({sum(counts)} examples); test counts {cfg['test_counts']}",
        f"- model {cfg['model']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']:g} "
        f"(warm-up {cfg['warmup_epochs']}, {decays}), weight decay {cfg['weight_decay']:g}; "
        f"beta {', '.join(f'{b:g}' for b in betas) or cfg['beta']} (methods using class-balanced weights or "
        f"sampling), focal gamma {cfg['gamma']}",
        f"- seeds {seeds}; device {cfg['device']} ({cfg['accel']}); loss backend {cfg['loss_backend']}; "
        f"torch {cfg['torch']}, {cfg['threads_used']} CPU thread(s) per run"
        + (f"; wall time {wall_time_s:.1f} s for {len(runs)} runs" if wall_time_s is not None else ""),
        "- metrics in %, mean ± sample std over the seeds that did not diverge; many/medium/few-shot: classes "
        "with >100 / 20-100 / <20 training examples ('–': no class in that group, or no run finished)",
        "",
        "| method | beta | top-1 error | balanced acc. | many-shot | medium-shot | few-shot | runs | diverged | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = summarize(runs)
    for row in rows:
        beta = "–" if row["beta"] is None else f"{row['beta']:g}"
        diverged = f"{len(row['diverged'])} (seeds {row['diverged']})" if row["diverged"] else "0"
        lines.append(f"| {row['method']} | {beta} | " + " | ".join(_fmt(row[k]) for k in SCALAR_METRICS)
                     + f" | {row['runs']} | {diverged} | {row['train_time_s']:.2f} |")
    diverged = [r for r in runs if r.get("status") == "diverged"]
    if diverged:
        lines += ["", "Diverged (training loss became NaN or inf; stopped, no metrics): " + ", ".join(
            f"{run_label(r)} seed {r['seed']} in epoch {r.get('diverged_epoch')}" for r in diverged) + "."]
    if has_beta_sweep(runs):
        lines += ["", *beta_markdown(runs, heading="## The beta experiment")]
    if failed:
        lines += ["", *failed]
    atomic_write(path, "\n".join(lines) + "\n")


def _failed_markdown(failures: Sequence[dict]) -> list:
    if not failures:
        return []
    lines = ["## Failed runs", "", "No result (each failed after its retries; its error and traceback are in "
             "`runs/<run>/error.txt`); `--resume` trains them again:", ""]
    for f in failures:
        beta = "" if f.get("beta") is None else f" (beta={f['beta']:g})"
        lines.append(f"- `{f['run_id']}`: {f['method']}{beta} seed {f['seed']}, {f['attempts']} attempt(s): "
                     f"{f['error']}")
    return lines

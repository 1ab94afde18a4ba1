"""The grid on a cluster (cbbench/harness/executors.py): ``cbbench compare --executor ray``.

On a local Ray instance of 2 CPUs (2 workers): a grid's per-run results are bitwise those of the serial
run (same seeds), and so are results.csv, runs.json, the summary's numbers and the plots; a grid stopped
by SIGINT or SIGTERM keeps its finished runs and ``--resume`` completes it; a task that raises, or whose
worker dies, is retried and then reported as failed; an interrupt cancels the tasks still running; a GPU
run on a cluster without GPUs is refused before anything is submitted. Those tests skip when Ray is not
installed (``pip install 'cbbench[ray]'``); the ones that need no Ray run everywhere: the message naming
the extra, Ray options refused without ``--executor ray``, and the comparison's handling of failed runs
(through an executor that fails a run in this process).
"""
import csv
import functools
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import _thread
from pathlib import Path

import pytest
import torch

from cbbench.cli import main
from cbbench.harness import compare as compare_mod
from cbbench.harness.compare import ComparisonInterrupted, plan_runs, run_comparison
from cbbench.harness.errors import EXIT_FAILED_RUNS, EXIT_USAGE, RunsFailed, UsageError
from cbbench.harness.executors import Outcome, RayExecutor, RunFailure, SerialExecutor
from cbbench.harness.train import train_run

try:
    import ray
except ImportError:  # the tests that need a cluster skip; the others run
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'cbbench[ray]')")

REPO = Path(__file__).resolve().parents[1]
# 8 runs of ~1 s each (digits-LT, the recipe's 40 epochs): a CB-weighted, a sampled and a deferred method
METHODS = ["softmax", "cb_focal", "class_balanced_sampling", "ldam_drw"]
SEEDS = 2
GRID = dict(dataset="digits-lt", methods=METHODS, seeds=SEEDS, device="cpu")
CLI_GRID = ["--dataset", "digits-lt", "--methods", ",".join(METHODS), "--seeds", str(SEEDS), "--device", "cpu"]
RUN_IDS = sorted(f"{m}-seed{s}" if m in ("softmax", "class_balanced_sampling") else f"{m}-beta0.9999-seed{s}"
                 for m in METHODS for s in range(SEEDS))


# -- helpers ---------------------------------------------------------------------------------------------------

def _comparable(result: dict) -> dict:
    """A result without what differs between two trainings of the same run: its time and date."""
    result = dict(result)
    result.pop("train_time_s")
    result["config"] = {k: v for k, v in result["config"].items() if k != "date"}
    return result


def _results(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))}


def _csv_without_times(path: Path) -> list:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    drop = rows[0].index("train_time_s")
    return [row[:drop] + row[drop + 1:] for row in rows]


def _summary_without_times(path: Path) -> str:
    text = re.sub(r"; wall time [0-9.]+ s for", "; wall time T s for", path.read_text())
    return re.sub(r"\| [0-9.]+ \|$", "| T |", text, flags=re.M)  # the s/run column


def _assert_same_as_serial(out: Path, serial: Path) -> None:
    """Every per-run result bitwise the serial run's (bar time and date), and the files made from them."""
    ours, theirs = _results(out), _results(serial)
    assert sorted(ours) == sorted(theirs) == RUN_IDS
    for run_id in RUN_IDS:
        assert _comparable(ours[run_id]) == _comparable(theirs[run_id]), run_id
    assert _csv_without_times(out / "results.csv") == _csv_without_times(serial / "results.csv")
    assert [_comparable(r) for r in json.loads((out / "runs.json").read_text())] == \
        [_comparable(r) for r in json.loads((serial / "runs.json").read_text())]
    assert _summary_without_times(out / "summary.md") == _summary_without_times(serial / "summary.md")
    for png in ("accuracy_per_method.png", "per_class_accuracy.png"):
        assert (out / png).read_bytes() == (serial / png).read_bytes(), png


def _stats(out: Path) -> dict:
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "runs").glob("*/result.json")}


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# trainers planted in place of compare.train_run; they run in Ray workers (pickled by value: the workers
# cannot import this test module), each attempt logged to a file
def _planted(config, data=None, *, progress=True, log, fail=(), die=(), sleep=()):
    with open(log, "a") as fh:
        fh.write(f"{config.method}-seed{config.seed} {os.getpid()}\n")
    if config.method in fail:
        raise ValueError(f"planted failure in {config.method}")
    if config.method in die:
        os._exit(1)
    if config.method in sleep:
        time.sleep(120)
    return train_run(config, data, progress=progress)


def _attempts(log: Path) -> dict:
    counts = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


# -- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def serial_reference(tmp_path_factory):
    """The grid trained in this process (the default executor): the results every executor must give."""
    out = tmp_path_factory.mktemp("serial") / "cmp"
    run_comparison(out_dir=str(out), progress=False, **GRID)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs, shared by the tests: each run requests 1, so 2 train at once."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'cbbench[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


# -- without Ray ---------------------------------------------------------------------------------------------

def test_without_ray_the_ray_executor_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is absent
    out = tmp_path / "cmp"
    rc = main(["compare", *CLI_GRID, "--executor", "ray", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and "pip install 'cbbench[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(UsageError, match=re.escape("pip install 'cbbench[ray]'")):
        run_comparison(out_dir=str(out), progress=False, executor="ray", **GRID)


@pytest.mark.parametrize("option", [["--address", "auto"], ["--gpus-per-run", "0.5"], ["--cpus-per-run", "2"],
                                    ["--retries", "1"]])
def test_ray_options_without_the_ray_executor_are_refused(tmp_path, capsys, option):
    rc = main(["compare", *CLI_GRID, *option, "--out", str(tmp_path / "cmp"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and f"{option[0]} applies to --executor ray only" in err
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("options, message", [
    (dict(gpus_per_run=1.5), "above 1 a run takes whole units"),
    (dict(gpus_per_run=-1), ">= 0"),
    (dict(cpus_per_run=0), "> 0"),
    (dict(cpus_per_run=float("nan")), "> 0"),
    (dict(retries=-1), "retries must be a whole number >= 0"),
    (dict(address=""), "address must be"),
])
def test_bad_ray_options_are_one_usage_error(options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        RayExecutor(**options)


def test_a_gpu_grid_is_planned_on_a_driver_without_a_gpu():
    # the driver of a cluster (a login or head node) may have no GPU while its workers do: the runs are
    # planned and checked there for "cuda" without looking for one; the worker resolves the device again
    (planned,) = plan_runs("digits-lt", ["softmax"], 1, device="cuda", local_device=False)
    assert planned.config.device == "cuda" and planned.config.accel == "cuda_graph"
    with pytest.raises(UsageError, match="no index"):
        plan_runs("digits-lt", ["softmax"], 1, device="cuda:1", local_device=False)
    if not torch.cuda.is_available():  # here, planned on this machine, it is refused as before
        with pytest.raises(ValueError, match="CUDA is not available"):
            plan_runs("digits-lt", ["softmax"], 1, device="cuda")


class _FailsOne(SerialExecutor):
    """In-process stand-in for a cluster where one run fails after its retries."""

    def __init__(self, failing):
        self.failing = failing

    def execute(self, todo, data, train, *, progress, running):
        for planned in todo:
            if planned.run_id == self.failing:
                yield Outcome(planned.run_id, failure=RunFailure(planned.run_id, "ValueError: planted",
                                                                 "Traceback ...\nValueError: planted", 3))
            else:
                yield Outcome(planned.run_id, result=train(planned.config, data, progress=progress))


def test_a_failed_run_is_reported_kept_apart_and_resume_trains_only_it(tmp_path, serial_reference, monkeypatch):
    out = tmp_path / "cmp"
    failing = "cb_focal-beta0.9999-seed1"
    with pytest.raises(RunsFailed, match=f"1 of 8 runs failed .*{failing}.*--resume") as info:
        run_comparison(out_dir=str(out), progress=False, executor=_FailsOne(failing), **GRID)
    assert len(info.value.runs) == 7 and [f["run_id"] for f in info.value.failures] == [failing]
    assert sorted(_results(out)) == sorted(set(RUN_IDS) - {failing})
    assert "ValueError: planted" in (out / "runs" / failing / "error.txt").read_text()
    summary = (out / "summary.md").read_text()
    assert "**Failed: 1 of 8 runs failed" in summary and "Interrupted" not in summary
    assert f"- `{failing}`: cb_focal (beta=0.9999) seed 1, 3 attempt(s): ValueError: planted" in summary
    assert len(_csv_without_times(out / "results.csv")) == 1 + 7
    assert len(json.loads((out / "runs.json").read_text())) == 7
    kept = _stats(out)
    trained = []
    monkeypatch.setattr(compare_mod, "train_run",
                        lambda config, data=None, **kw: trained.append(config.method) or train_run(config, data, **kw))
    run_comparison(out_dir=str(out), progress=False, resume=True, **GRID)
    assert trained == ["cb_focal"] and not (out / "runs" / failing / "error.txt").exists()
    assert {k: v for k, v in _stats(out).items() if k in kept} == kept
    _assert_same_as_serial(out, serial_reference)


# -- on a local Ray instance -----------------------------------------------------------------------------------

@needs_ray
def test_ray_grid_is_bitwise_the_serial_grid(ray_cluster, serial_reference, tmp_path):
    out = tmp_path / "ray"
    runs = run_comparison(out_dir=str(out), progress=False, executor=RayExecutor(), **GRID)
    serial_runs = json.loads((serial_reference / "runs.json").read_text())
    assert [r["run_id"] for r in runs] == [r["run_id"] for r in serial_runs]  # grid order, not finishing order
    _assert_same_as_serial(out, serial_reference)


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_resume_after_a_cancelled_ray_grid_completes_it(ray_cluster, serial_reference, tmp_path, signum):
    out = tmp_path / "ray"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAY_ADDRESS", None)
    # the command line as a user runs it: its own Ray instance on this machine, 1 CPU per run
    proc = subprocess.Popen([sys.executable, "-m", "cbbench", "compare", *CLI_GRID, "--executor", "ray",
                             "--out", str(out), "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any((out / "runs").glob("*/result.json")) or proc.poll() is not None, 180,
                  "the first finished run")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert ("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted") + " after" in err
    kept = _stats(out)
    assert 1 <= len(kept) < len(RUN_IDS), err
    for run_id in kept:  # whole results only
        json.loads((out / "runs" / run_id / "result.json").read_text())
    assert f"Interrupted: {len(kept)} of {len(RUN_IDS)} runs finished" in (out / "summary.md").read_text()
    runs = run_comparison(out_dir=str(out), progress=False, resume=True, executor=RayExecutor(), **GRID)
    assert len(runs) == len(RUN_IDS)
    assert {k: v for k, v in _stats(out).items() if k in kept} == kept  # the kept runs were not trained again
    _assert_same_as_serial(out, serial_reference)


@needs_ray
def test_a_task_that_raises_is_retried_then_reported_as_failed(ray_cluster, serial_reference, tmp_path,
                                                                monkeypatch, capsys):
    out, log = tmp_path / "ray", tmp_path / "attempts.log"
    monkeypatch.setattr(compare_mod, "train_run", functools.partial(_planted, log=str(log), fail={"cb_focal"}))
    rc = main(["compare", *CLI_GRID, "--executor", "ray", "--retries", "1", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == EXIT_FAILED_RUNS, captured.err
    failed = [f"cb_focal-beta0.9999-seed{s}" for s in range(SEEDS)]
    assert {k: v for k, v in _attempts(log).items() if k.startswith("cb_focal")} == {"cb_focal-seed0": 2,
                                                                                   "cb_focal-seed1": 2}
    for run_id in failed:
        assert f"failed: {run_id} after 2 attempt(s): ValueError: planted failure in cb_focal" in captured.err
        report = (out / "runs" / run_id / "error.txt").read_text()
        assert report.startswith(f"{run_id}: failed after 2 attempt(s): ValueError: planted failure in cb_focal")
        assert ", in _planted" in report and "\x1b[" not in report  # the remote traceback, without colours
        assert not (out / "runs" / run_id / "result.json").exists()
    # the error line (Ray's own reports of the retries may come before or after it)
    assert f"cbbench compare: error: 2 of {len(RUN_IDS)} runs failed after their retries" in captured.err
    assert "**Failed: 2 of 8 runs failed" in captured.out  # the summary is printed, failed runs listed
    assert sorted(_results(out)) == sorted(set(RUN_IDS) - set(failed))
    kept = _stats(out)
    monkeypatch.undo()
    assert main(["compare", *CLI_GRID, "--executor", "ray", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert {k: v for k, v in _stats(out).items() if k in kept} == kept
    assert not any((out / "runs").glob("*/error.txt"))
    _assert_same_as_serial(out, serial_reference)


@needs_ray
def test_a_dead_worker_is_retried_then_reported_as_failed(ray_cluster, tmp_path, monkeypatch):
    out, log = tmp_path / "ray", tmp_path / "attempts.log"
    monkeypatch.setattr(compare_mod, "train_run", functools.partial(_planted, log=str(log), die={"softmax"}))
    with pytest.raises(RunsFailed, match="1 of 2 runs failed") as info:
        run_comparison("digits-lt", ["softmax", "cb_focal"], [0], str(out), device="cpu", progress=False,
                       executor=RayExecutor(retries=2))
    (failure,) = info.value.failures
    assert failure["run_id"] == "softmax-seed0" and failure["attempts"] == 3 == _attempts(log)["softmax-seed0"]
    assert "WorkerCrashedError" in failure["error"] and "died" in failure["error"]
    assert [r["run_id"] for r in info.value.runs] == ["cb_focal-beta0.9999-seed0"]
    assert len({line.split()[1] for line in log.read_text().splitlines() if line.startswith("softmax")}) == 3


@needs_ray
def test_an_interrupt_cancels_the_tasks_still_running(ray_cluster, tmp_path, monkeypatch):
    out, log = tmp_path / "ray", tmp_path / "attempts.log"
    monkeypatch.setattr(compare_mod, "train_run", functools.partial(_planted, log=str(log), sleep={"cb_focal"}))

    def interrupt_when_one_finished_and_one_sleeps():
        _wait_for(lambda: (out / "runs" / "softmax-seed0" / "result.json").exists() and "cb_focal" in
                  (log.read_text() if log.exists() else ""), 120, "a finished run and a sleeping one")
        _thread.interrupt_main()

    waiter = threading.Thread(target=interrupt_when_one_finished_and_one_sleeps, daemon=True)
    waiter.start()
    with pytest.raises(ComparisonInterrupted, match="after 1 of 2 runs") as info:
        run_comparison("digits-lt", ["softmax", "cb_focal"], [0], str(out), device="cpu", progress=False,
                       executor=RayExecutor())
    waiter.join()
    assert [r["run_id"] for r in info.value.runs] == ["softmax-seed0"]
    (sleeper,) = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("cb_focal")]

    def gone():
        try:
            os.kill(sleeper, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for(gone, 30, f"the cancelled task's worker (pid {sleeper}) to stop")  # not its 120 s of sleep


@needs_ray
def test_a_stale_ray_start_record_starts_a_local_instance_instead_of_waiting(monkeypatch, capsys):
    import ray._private.services as services

    from cbbench.harness.executors import _default_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as alive:  # a cluster that answers: connect to it, as ray.init would
        alive.bind(("127.0.0.1", 0))
        alive.listen()
        monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: f"127.0.0.1:{alive.getsockname()[1]}")
        assert _default_address() is None
        dead = alive.getsockname()[1]
    # `ray start` stopped without `ray stop` leaves its record: ray.init would wait minutes for it
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: f"127.0.0.1:{dead}")
    assert _default_address() == "local"
    assert f"(127.0.0.1:{dead}) does not answer" in capsys.readouterr().err
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    assert _default_address() is None
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{dead}")  # the user's choice is Ray's to follow
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: f"127.0.0.1:{dead}")
    assert _default_address() is None


@needs_ray
@pytest.mark.parametrize("option, message", [
    (["--gpus-per-run", "0.5"], "has no GPU; nothing was submitted"),
    (["--device", "cuda"], "has no GPU; nothing was submitted"),
    (["--cpus-per-run", "3"], "has 3 CPU(s) for one run, so the runs would wait forever; nothing was submitted"),
    (["--device", "cuda:1"], "pass --device cuda"),
    (["--device", "cpu", "--gpus-per-run", "1"], "reserves GPUs for runs that train on the CPU"),
])
def test_runs_the_cluster_cannot_train_are_refused_before_submission(ray_cluster, tmp_path, monkeypatch, capsys,
                                                                      option, message):
    loads, submitted = [], []
    monkeypatch.setattr(compare_mod, "load_dataset", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(RayExecutor, "execute", lambda self, *a, **k: submitted.append(a) or iter(()))
    argv = [a for a in CLI_GRID if a not in ("--device", "cpu")] + option
    rc = main(["compare", *argv, "--executor", "ray", "--out", str(tmp_path / "cmp"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and message in err and len(err.strip().splitlines()) == 1, err
    assert loads == [] and submitted == [] and not (tmp_path / "cmp").exists()

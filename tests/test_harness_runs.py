"""Runs that never lose work: checks before the first run, each run written as it finishes, --resume,
SIGINT, diverged runs, corrupted data files and strict CLI lists."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbbench.cli import main
from cbbench.harness import compare as compare_mod
from cbbench.harness import train as train_mod
from cbbench.harness.compare import ComparisonInterrupted, run_comparison
from cbbench.harness.datasets import load_dataset, write_fake_cifar
from cbbench.harness.errors import EXIT_DATA, EXIT_OUTPUT
from cbbench.harness.train import TrainConfig, train_run

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=2, batch_size=256, dataset_options={"n_max": 200, "test_per_class": 10})


@pytest.fixture
def counted(monkeypatch):
    """Count the runs the comparison trains (the real training still happens)."""
    calls = []

    def counting(config, data=None, **kw):
        calls.append((config.method, config.seed, config.beta))
        return train_run(config, data, **kw)

    monkeypatch.setattr(compare_mod, "train_run", counting)
    return calls


def _blocked_dir(tmp_path):
    """A folder path that cannot be created (its parent is a file), whoever runs the tests, root included."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return blocker / "out"


# -- every run checked before the first one --------------------------------------------------------------

def test_compare_checks_every_run_before_training(tmp_path, counted):
    # drs switches at the first milestone, which a 1-epoch run never reaches; softmax alone would be fine
    with pytest.raises(ValueError, match="drs"):
        run_comparison("synthetic-lt", ["softmax", "drs"], 2, str(tmp_path / "cmp"), epochs=1, progress=False,
                       dataset_options=TINY["dataset_options"])
    assert counted == []
    assert not (tmp_path / "cmp" / "runs").exists()


def test_compare_checks_methods_against_the_data_before_training(tmp_path, counted):
    # imbalance 500 on digits leaves classes empty: found when the data load, before any run
    with pytest.raises(ValueError, match="no example"):
        run_comparison("digits-lt", ["softmax"], 1, str(tmp_path / "cmp"), imbalance=500, progress=False)
    assert counted == []


def test_unwritable_out_is_found_before_training(tmp_path, counted, capsys):
    out = _blocked_dir(tmp_path)
    with pytest.raises(ValueError, match="not writable"):
        run_comparison("synthetic-lt", ["softmax"], 1, str(out), progress=False, **TINY)
    assert counted == []
    rc = main(["compare", "--dataset", "synthetic-lt", "--methods", "softmax", "--seeds", "1", "--epochs", "1",
               "--device", "cpu", "--out", str(out), "--no-progress"])
    assert rc == EXIT_OUTPUT and "not writable" in capsys.readouterr().err and counted == []


def test_train_checks_out_before_training(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(train_mod, "train_run", lambda *a, **k: calls.append(a) or {})
    rc = main(["train", "--dataset", "digits-lt", "--method", "softmax", "--epochs", "1", "--device", "cpu",
               "--out", str(_blocked_dir(tmp_path)), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_OUTPUT and "not writable" in err and str(tmp_path / "a_file") in err
    assert calls == []


# -- each run written at once; interrupt keeps them; --resume continues ---------------------------------

def _interrupt_after(monkeypatch, n_ok):
    calls = []

    def flaky(config, data=None, **kw):
        calls.append(config.seed)
        if len(calls) > n_ok:
            raise KeyboardInterrupt
        return train_run(config, data, **kw)

    monkeypatch.setattr(compare_mod, "train_run", flaky)
    return calls


def test_interrupt_keeps_finished_runs_and_resume_trains_only_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(ComparisonInterrupted) as info:
        run_comparison("synthetic-lt", ["softmax", "cb_focal"], 2, str(out), progress=False, **TINY)
    assert len(info.value.runs) == 2 and info.value.planned == 4
    assert "interrupted after 2 of 4 runs" in str(info.value) and "--resume" in str(info.value)
    kept = sorted(p.parent.name for p in (out / "runs").glob("*/result.json"))
    assert kept == ["softmax-seed0", "softmax-seed1"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [("softmax", "0", "ok"), ("softmax", "1", "ok")]
    assert "Interrupted: 2 of 4 runs" in (out / "summary.md").read_text()
    first = json.loads((out / "runs" / "softmax-seed0" / "result.json").read_text())

    calls = []
    monkeypatch.setattr(compare_mod, "train_run",
                        lambda config, data=None, **kw: calls.append(config.method) or train_run(config, data, **kw))
    runs = run_comparison("synthetic-lt", ["softmax", "cb_focal"], 2, str(out), resume=True, progress=False, **TINY)
    assert calls == ["cb_focal", "cb_focal"]
    assert [r["run_id"] for r in runs] == ["softmax-seed0", "softmax-seed1", "cb_focal-beta0.9999-seed0",
                                           "cb_focal-beta0.9999-seed1"]
    assert runs[0]["per_class_accuracy"] == first["per_class_accuracy"]
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 4
    assert "Interrupted" not in (out / "summary.md").read_text()


def test_resume_refuses_runs_of_another_configuration(tmp_path, counted):
    out = str(tmp_path / "cmp")
    run_comparison("synthetic-lt", ["softmax"], 1, out, progress=False, plots=False, **TINY)
    other = dict(TINY, epochs=3)
    with pytest.raises(ValueError, match=r"softmax-seed0.*epochs: 2 there, 3 now"):
        run_comparison("synthetic-lt", ["softmax"], 1, out, resume=True, progress=False, **other)
    assert len(counted) == 1


def test_results_csv_is_rewritten_after_each_run(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    seen = []
    real_write = compare_mod.write_results_csv

    def spy(runs, path):
        real_write(runs, path)
        seen.append(len(list(csv.DictReader(open(path)))))

    monkeypatch.setattr(compare_mod, "write_results_csv", spy)
    run_comparison("synthetic-lt", ["softmax"], 3, str(out), progress=False, plots=False, **TINY)
    assert seen == [1, 2, 3]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def _compare_cmd(out, methods="all", seeds="3"):
    return [sys.executable, "-m", "cbbench", "compare", "--dataset", "digits-lt", "--methods", methods, "--seeds",
            seeds, "--device", "cpu", "--out", str(out), "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background-job"])
def test_sigint_stops_within_seconds_and_keeps_finished_runs(tmp_path, sigint_ignored):
    """SIGINT to a running `cbbench compare` (also when started as a shell background job, which ignores
    SIGINT) stops it within seconds, exit 130, saying what it kept; the kept runs are on disk."""
    out = tmp_path / "cmp"
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen(_compare_cmd(out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    try:
        deadline = time.time() + 120
        while not list(out.glob("runs/*/result.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no run finished within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        _, err = proc.communicate(timeout=60)  # the old code never stopped: a hang fails here
        stopped_after = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert stopped_after < 20  # ~2 s on 2 busy cores; generous for CI runners under load
    assert "Traceback" not in err
    kept = list(out.glob("runs/*/result.json"))
    assert f"interrupted after {len(kept)} of " in err and "--resume" in err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(kept) >= 1


# -- diverged runs ------------------------------------------------------------------------------------------

def test_nan_inducing_learning_rate_marks_the_run_diverged():
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = train_run(TrainConfig("digits-lt", "softmax", epochs=6, lr=1e6), progress=False)
    assert result["status"] == "diverged" and result["diverged_epoch"] == 0
    assert result["epochs_completed"] == 1  # stopped early, not after 6 epochs
    assert result["train_loss"] == [None]  # a non-finite epoch loss is null in result.json (strict JSON)
    json.dumps(result, allow_nan=False)
    assert result["top1_error"] is None and result["balanced_accuracy"] is None and result["many_shot"] is None
    assert result["per_class_accuracy"] is None and result["train_counts"][0] == 120
    ok = train_run(TrainConfig("digits-lt", "softmax", epochs=2), progress=False)
    assert ok["status"] == "ok" and ok["diverged_epoch"] is None and ok["epochs_completed"] == 2
    assert len(ok["train_loss"]) == 2 and ok["train_loss"][1] < ok["train_loss"][0]


def test_diverged_runs_show_as_such_in_summary_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    with pytest.warns(RuntimeWarning):
        runs = run_comparison("digits-lt", ["softmax"], 2, str(out), lr=1e6, epochs=2, progress=False)
    assert [r["status"] for r in runs] == ["diverged", "diverged"]
    summary = (out / "summary.md").read_text()
    assert "| softmax | – | – | – | – | – | – | 2 | 2 (seeds [0, 1]) |" in summary
    assert "Diverged (training loss became NaN or inf" in summary
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["diverged", "diverged"] and rows[0]["top1_error"] == ""
    assert (out / "accuracy_per_method.png").stat().st_size > 1000
    rc = main(["train", "--dataset", "digits-lt", "--method", "cb_focal", "--epochs", "2", "--lr", "1e6",
               "--device", "cpu", "--out", str(tmp_path / "one"), "--no-progress"])
    assert rc == 0 and "DIVERGED" in capsys.readouterr().out
    assert json.loads((tmp_path / "one" / "result.json").read_text())["status"] == "diverged"


# -- corrupted data files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_a_dict", "empty"])
def test_corrupted_cifar_pickle_is_one_clear_error_naming_the_file(tmp_path, damage, capsys):
    folder = write_fake_cifar(tmp_path, per_class=3, test_per_class=1)
    bad = os.path.join(folder, "data_batch_3")
    raw = open(bad, "rb").read()
    content = {"truncate": raw[: len(raw) // 2], "garbage": b"\x00\x01not a pickle at all" * 10,
               "not_a_dict": __import__("pickle").dumps([1, 2, 3]), "empty": b""}[damage]
    open(bad, "wb").write(content)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10-lt", data_dir=tmp_path, imbalance=2)
    message = str(info.value)
    assert message.startswith(bad + ":") and "expected a CIFAR python pickle" in message
    # one error, not a chain of the pickle module's exceptions
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    rc = main(["train", "--dataset", "cifar10-lt", "--data-dir", str(tmp_path), "--imbalance", "2", "--method",
               "softmax", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_DATA and bad in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- strict CLI lists ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["weights", "--counts", "100 10 1"], "'100 10 1' is not a number; separate items with commas"),
    (["weights", "--counts", "100,,1"], "--counts: item 2 of '100,,1' is empty"),
    (["weights", "--counts", "100,10,"], "--counts: item 3 of '100,10,' is empty"),
    (["weights", "--betas", "0.9 0.99"], "--betas: '0.9 0.99' is not a number"),
    (["compare", "--dataset", "digits-lt", "--methods", "softmax,,cb_focal"], "--methods: item 2"),
    (["compare", "--dataset", "digits-lt", "--methods", "softmax cb_focal"], "unknown method 'softmax cb_focal'"),
    (["compare", "--dataset", "digits-lt", "--seeds", "0,1,"], "--seeds: item 3 of '0,1,' is empty"),
    (["compare", "--dataset", "digits-lt", "--seeds", "2.5"], "--seeds: '2.5' is not a whole number"),
    (["compare", "--dataset", "digits-lt", "--betas", "0.9,,0.99"], "--betas: item 2"),
    (["compare", "--dataset", "digits-lt", "--betas", "0.9,1.0"], "every beta must be in [0, 1)"),
    (["compare", "--dataset", "digits-lt", "--betas", "0.9,0.9"], "betas repeat"),
])
def test_malformed_cli_lists_are_rejected(argv, message, tmp_path, capsys, counted):
    rc = main(argv + ["--out", str(tmp_path / "o")] + (["--no-progress"] if argv[0] == "compare" else []))
    assert rc == 2
    assert message in capsys.readouterr().err
    assert counted == []


def test_well_formed_lists_with_spaces_after_commas_are_accepted(capsys, tmp_path):
    assert main(["weights", "--counts", "100, 10, 1", "--betas", "0.9, 0.99", "--out", ""]) == 0
    assert "| 2 | 1 |" in capsys.readouterr().out

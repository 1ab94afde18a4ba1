"""``torchrun --nproc_per_node=2 -m cbbench train|compare`` end to end (gloo, CPU, digits-LT, 2 epochs), against
one process: the same metrics and training losses, rank 0 alone writes and prints, ``--resume`` keeps runs
that one process finished."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cbbench.cli import main
from cbbench.harness.compare import run_comparison
from cbbench.harness.datasets import load_dataset
from cbbench.harness.train import TrainConfig, train_run

COMMON = ["--dataset", "digits-lt", "--epochs", "2", "--batch-size", "45", "--device", "cpu", "--no-progress"]


def torchrun(*args, timeout=240):
    """The torchrun command line (torch.distributed.run, which the ``torchrun`` script runs) with 2 processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cbbench", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def assert_same_run(got, want):
    assert got["status"] == want["status"] == "ok"
    assert got["per_class_accuracy"] == want["per_class_accuracy"]
    assert got["top1_error"] == want["top1_error"]
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
    assert got["config"]["world_size"] == 2 and got["config"]["dist_backend"] == "gloo"


@pytest.mark.slow
def test_torchrun_train_equals_one_process(tmp_path):
    out = torchrun("train", *COMMON, "--method", "cb_focal", "--out", str(tmp_path / "run"))
    assert out.count("digits-lt cb_focal seed 0: top-1 error") == 1, out  # rank 0 alone prints
    got = json.loads((tmp_path / "run" / "result.json").read_text())
    want = train_run(TrainConfig("digits-lt", "cb_focal", epochs=2, batch_size=45, device="cpu"), progress=False)
    assert_same_run(got, want)
    assert want["config"]["world_size"] == 1


@pytest.mark.slow
def test_torchrun_compare_resumes_and_equals_one_process(tmp_path):
    out_dir = tmp_path / "cmp"
    data = load_dataset("digits-lt")
    options = dict(epochs=2, batch_size=45, device="cpu", progress=False, plots=False)
    first = run_comparison("digits-lt", ["cb_drw"], [0], str(out_dir), **options)  # one process
    want = run_comparison("digits-lt", ["drs"], [0], None, **options)[0]
    out = torchrun("compare", *COMMON, "--methods", "cb_drw,drs", "--seeds", "1", "--resume", "--out", str(out_dir))
    assert out.count("# digits-lt: long-tailed method comparison") == 1, out  # rank 0 alone prints the summary
    runs = json.loads((out_dir / "runs.json").read_text())
    assert [r["run_id"] for r in runs] == ["cb_drw-beta0.9999-seed0", "drs-seed0"]
    assert runs[0] == json.loads(json.dumps(first[0]))  # kept, not trained again
    assert_same_run(runs[1], want)
    assert len(data.y_test) == sum(runs[1]["config"]["test_counts"])
    assert (out_dir / "results.csv").read_text().count("\n") == 3


def test_single_process_commands_refuse_several_ranks(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["weights", "--counts", "10,1", "--betas", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "(rank 1): error: 'cbbench weights' runs in one process" in err

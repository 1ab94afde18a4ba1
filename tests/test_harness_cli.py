"""End-to-end runs of ``cbbench train`` / ``cbbench compare`` and the Python API on tiny settings."""
import csv
import inspect
import json

import pytest
import torch

from cbbench.cli import main
from cbbench.harness import DATASETS, METHODS, TrainConfig, run_comparison, train_run
from cbbench.harness.datasets import load_dataset, long_tailed_counts, write_fake_cifar
from cbbench.harness.errors import EXIT_DATA

RESULT_KEYS = {"top1_error", "balanced_accuracy", "per_class_accuracy", "many_shot", "medium_shot", "few_shot",
               "train_counts", "method", "dataset", "config"}


def test_cli_train_writes_result_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "digits-lt", "--method", "cb_focal", "--epochs", "3", "--seed", "1",
               "--device", "cpu", "--out", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["method"] == "cb_focal" and result["dataset"] == "digits-lt"
    assert result["train_counts"] == [120, 77, 50, 32, 21, 13, 8, 5, 3, 2]
    assert result["config"]["epochs"] == 3 and result["config"]["seed"] == 1 and result["config"]["gamma"] == 1.0
    assert len(result["per_class_accuracy"]) == 10
    # the digits test split is balanced: error = 100 - balanced accuracy
    assert result["top1_error"] == pytest.approx(100 - result["balanced_accuracy"])
    assert result["many_shot"] == pytest.approx(result["per_class_accuracy"][0])
    assert "top-1 error" in capsys.readouterr().out


def test_cli_compare_writes_csv_summary_and_plots(tmp_path):
    out = tmp_path / "cmp"
    rc = main(["compare", "--dataset", "synthetic-lt", "--methods", "softmax,balanced_softmax", "--seeds", "2",
               "--epochs", "3", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("softmax", "0"), ("softmax", "1"),
                                                        ("balanced_softmax", "0"), ("balanced_softmax", "1")]
    summary = (out / "summary.md").read_text()
    assert "| softmax |" in summary and "| balanced_softmax |" in summary and "±" in summary
    for png in ("accuracy_per_method.png", "per_class_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tmp_path, capsys):
    rc = main(["train", "--dataset", "cifar10-lt", "--data-dir", str(tmp_path), "--method", "softmax",
               "--device", "cpu", "--out", str(tmp_path / "x")])
    assert rc == EXIT_DATA
    assert "cifar-10-batches-py" in capsys.readouterr().err
    rc = main(["compare", "--dataset", "digits-lt", "--methods", "softmax,magic", "--out", str(tmp_path / "y")])
    assert rc == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    rc = main(["train", "--dataset", "digits-lt", "--method", "softmax", "--imbalance", "500", "--device", "cpu",
               "--out", str(tmp_path / "z")])
    assert rc == 2
    assert "no example" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits-lt", "--method", "nope", "--out", str(tmp_path)])


def test_python_api_signature_and_result():
    params = inspect.signature(run_comparison).parameters
    assert list(params)[:4] == ["dataset", "methods", "seeds", "out_dir"]
    assert params["device"].default == "cpu" and params["progress"].default is True
    assert "cifar10-lt" in DATASETS and "cb_focal" in METHODS
    runs = run_comparison("synthetic-lt", ["drs"], [3], epochs=2, progress=False, batch_size=128,
                          dataset_options={"n_max": 100, "test_per_class": 20})
    assert len(runs) == 1 and RESULT_KEYS <= set(runs[0]) and runs[0]["seed"] == 3
    assert runs[0]["config"]["switch_epoch"] == 1
    with pytest.raises(ValueError, match="unknown option"):
        run_comparison("synthetic-lt", ["softmax"], 1, batch=3)
    with pytest.raises(ValueError, match="seeds"):
        run_comparison("synthetic-lt", ["softmax"], 0)


def test_same_seed_same_result_and_seeds_differ():
    data = load_dataset("synthetic-lt", n_max=200)
    a = train_run(TrainConfig("synthetic-lt", "progressive_sampling", seed=4, epochs=3), data, progress=False)
    b = train_run(TrainConfig("synthetic-lt", "progressive_sampling", seed=4, epochs=3), data, progress=False)
    c = train_run(TrainConfig("synthetic-lt", "progressive_sampling", seed=5, epochs=3), data, progress=False)
    assert a["per_class_accuracy"] == b["per_class_accuracy"]
    assert a["per_class_accuracy"] != c["per_class_accuracy"]


def test_logit_adjustment_helps_the_tail_on_synthetic_lt():
    """On imbalanced Gaussians a linear model trained with Balanced Softmax (Bayes-consistent for the
    balanced error) must beat plain softmax on few-shot classes by a wide margin."""
    data = load_dataset("synthetic-lt")
    plain = train_run(TrainConfig("synthetic-lt", "softmax"), data, progress=False)
    balanced = train_run(TrainConfig("synthetic-lt", "balanced_softmax"), data, progress=False)
    assert balanced["few_shot"] > plain["few_shot"] + 20
    assert balanced["balanced_accuracy"] > plain["balanced_accuracy"] + 5


def test_resnet32_on_fake_cifar(tmp_path):
    # ResNet-32 is slow on 2 shared CPU cores (and 5-15x slower with 2 spinning OpenMP threads under load):
    # two epochs of one step on ~30 images (DRW switches at epoch 1), 1 thread, exercise the image path
    write_fake_cifar(tmp_path, per_class=4, test_per_class=2)
    threads_before = torch.get_num_threads()
    result = train_run(TrainConfig("cifar10-lt", "ldam_drw", data_dir=str(tmp_path), imbalance=2, epochs=2,
                                   batch_size=32, device="cpu", threads=1), progress=False)
    assert result["config"]["model"] == "resnet32" and result["config"]["augment"] is True
    assert result["train_counts"] == long_tailed_counts(4, 10, 2)
    assert result["config"]["n_train"] == sum(long_tailed_counts(4, 10, 2))
    assert result["config"]["threads_used"] == 1 and torch.get_num_threads() == threads_before
    assert 0 <= result["top1_error"] <= 100


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("accel", ["cuda_graph", "compile", "none"])
def test_cuda_paths_on_fake_cifar(tmp_path, accel):
    write_fake_cifar(tmp_path, per_class=300, test_per_class=20)
    result = train_run(TrainConfig("cifar10-lt", "cb_focal", data_dir=str(tmp_path), imbalance=10, epochs=3,
                                   batch_size=64, device="cuda", accel=accel), progress=False)
    assert result["config"]["accel"] == accel
    assert result["config"]["accel_used"] == accel  # no silent fallback from a failed capture
    assert result["config"]["drop_last"] == (accel == "cuda_graph")
    assert 0 <= result["top1_error"] <= 100

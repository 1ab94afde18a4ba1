"""The report writer and the accuracy summary, from a fake result set; the ``cbbench bench`` command
without training or timing."""
import pytest

from cbbench import cli
from cbbench.bench import accuracy as acc
from cbbench.bench import report, speed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_speed():
    env = {"device": "cpu", "device_name": "Fake CPU", "torch": "2.13.0", "torch_cuda": None, "cbbench": "0.1.0",
           "commit": "f" * 40, "date": "2026-01-01T00:00:00+00:00", "cpu_count": 2, "load_average_1min": 0.1,
           "load_average_1min_after": 0.2}
    rows = []
    for loss, impl, ms in (("softmax", "eager", 10.0), ("softmax", "cpu", 4.0), ("focal", "eager", 100.0),
                           ("focal", "compile", 30.0)):
        rows.append({"loss": loss, "shape": "8192x1000", "n": 8192, "c": 1000, "dtype": "float32", "device": "cpu",
                     "impl": impl, "status": "ok", "note": "", "fwd_bwd_ms": ms, "fwd_ms": ms / 2,
                     "floor_bytes_fwd_bwd": 65_544_000, "gbps_fwd_bwd": 65.544 / ms,
                     "frac_copy_fwd_bwd": 65.544 / ms / 20.0, "x_floor_fwd_bwd": 20.0 * ms / 65.544})
    rows.append({"loss": "softmax", "shape": "8192x1000", "n": 8192, "c": 1000, "dtype": "float32",
                 "device": "cpu", "impl": "cuda", "status": "skipped", "note": "no CUDA device"})
    result = {"env": env, "copy_gbps": 20.0, "wall_s": 1.0, "policy": {"min_repeat": 10}, "rows": rows}
    speed.add_peer_ratios(result["rows"])
    return result


def _fake_runs():
    runs = []
    for method, base in (("softmax", 70.0), ("cb_focal", 75.0)):
        for seed, delta in ((0, -1.0), (1, 1.0)):
            runs.append({"dataset": "digits-lt", "method": method, "top1_error": 100 - base - delta,
                         "balanced_accuracy": base + delta, "many_shot": 90.0, "medium_shot": None,
                         "few_shot": base - 20 + delta, "per_class_accuracy": [90.0, base + delta, 50.0 + seed],
                         "train_counts": [100, 30, 5], "config": {"epochs": 2, "seed": seed}})
    return runs


def test_summarize_averages_seeds():
    rows = acc.summarize(_fake_runs())
    assert [r["method"] for r in rows] == ["softmax", "cb_focal"]
    soft = rows[0]
    assert soft["runs"] == 2
    assert soft["balanced_accuracy"] == pytest.approx(70.0)
    assert soft["balanced_accuracy_std"] == pytest.approx(2 ** 0.5)
    assert soft["medium_shot"] is None
    assert soft["per_class_accuracy"] == pytest.approx([90.0, 70.0, 50.5])
    table = acc.format_table(rows)
    assert "cb_focal" in table and "70.00 ± 1.41" in table


def test_peer_ratios_of_fake_rows():
    rows = {(r["loss"], r["impl"]): r for r in _fake_speed()["rows"]}
    assert rows[("softmax", "cpu")]["speedup_vs_eager"] == pytest.approx(2.5)
    assert rows[("focal", "compile")]["speedup_vs_eager"] == pytest.approx(100 / 30)
    assert "speedup_vs_compile" not in rows[("softmax", "cpu")]


def test_report_from_fake_results(tmp_path):
    weights_png = tmp_path / "weights" / "effective_number.png"
    weights_png.parent.mkdir()
    weights_png.write_bytes(PNG_MAGIC)
    path = report.write_report(tmp_path, speed=[_fake_speed()], accuracy_runs=_fake_runs(),
                               weights_pngs=[weights_png], notes=["a note"], phases={"total": 12.0})
    text = path.read_text()
    for png in ("speed_cpu.png", "accuracy_digits-lt.png", "per_class_digits-lt.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in text
    assert "](weights/effective_number.png)" in text
    assert "| CB softmax CE | 8192x1000 | fp32 | cpu | 4.000 |" in text
    assert "2.50x" in text and "not run: cuda (no CUDA device)" in text
    assert "| digits-lt | cb_focal | 2 |" in text
    assert "Fake CPU" in text and "a note" in text and "total 12 s" in text


def test_report_shows_the_implementations_on_the_held_vectors(tmp_path):
    from cbbench.bench.conformance import Outcome

    held = [Outcome("empty class", "cbbench", "raises ValueError (class(es) [1] have zero training samples)", True),
            Outcome("empty class", "balanced-loss", "NaN loss", False)]
    text = report.write_report(tmp_path, speed=[_fake_speed()], held_vectors=held).read_text()
    assert "Peers on the held test vectors" in text
    assert "| empty class |" in text and "| balanced-loss | NaN loss | no |" in text
    assert "held test vectors" not in report.write_report(tmp_path / "none", speed=[_fake_speed()]).read_text()


def test_report_with_nothing_run(tmp_path):
    text = report.write_report(tmp_path).read_text()
    assert text.count("Not run.") == 2 and "Not drawn." in text


def test_busy_machine_is_flagged(tmp_path):
    result = _fake_speed()
    result["env"]["load_average_1min"] = 3.5
    text = report.write_report(tmp_path, speed=[result]).read_text()
    assert "not final" in text


def test_bench_command_is_registered():
    assert "cbbench.commands.bench" in cli.COMMAND_MODULES
    args = cli.build_parser().parse_args(["bench", "--out", "x", "--quick", "--skip-accuracy", "--device", "cpu"])
    assert args.quick and args.skip_accuracy and args.device == "cpu" and args.out == "x"


def test_bench_command_without_speed_and_accuracy_writes_the_weights_report(tmp_path, capsys):
    assert cli.main(["bench", "--out", str(tmp_path), "--skip-speed", "--skip-accuracy"]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert text.count("Not run.") == 2
    pngs = sorted(p.name for p in (tmp_path / "weights").glob("*.png"))
    assert pngs, "the weights figures were not written"
    for name in pngs:
        assert f"(weights/{name})" in text
    assert "report:" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# review fixes: CB-weight colouring, one set of accuracy plots, arguments checked before the speed phase
# ----------------------------------------------------------------------------------------------


def test_cb_weight_colouring_follows_the_method_spec():
    assert report.uses_cb_weights("cb_softmax") and report.uses_cb_weights("cb_focal")
    assert report.uses_cb_weights("ldam_drw") and report.uses_cb_weights("cb_drw")  # deferred CB weights
    assert not report.uses_cb_weights("cb_sampling")  # samples by the CB weight, unweighted loss
    assert not report.uses_cb_weights("softmax") and not report.uses_cb_weights("inverse_freq")
    from cbbench.harness import METHODS

    assert {m for m in METHODS if report.uses_cb_weights(m)} == report.CB_WEIGHTED_METHODS


def test_run_accuracy_without_plots_writes_the_harness_files_but_no_png(tmp_path):
    runs = acc.run_accuracy("digits-lt", ["softmax"], 1, str(tmp_path), progress=False, plots=False, epochs=1)
    assert len(runs) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "runs.json", "summary.md"]


@pytest.fixture
def no_speed(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the speed phase started before the arguments were checked")

    monkeypatch.setattr(speed, "run_speed", fail)


@pytest.mark.parametrize("argv,match,code", [
    (["--dataset", "cifar10-lt"], "data directory", 2),
    (["--seeds", "0"], "seeds", 2),
    (["--epochs", "0"], "epochs", 2),
    (["--dataset", "cifar100-lt", "--data-dir", "/nonexistent"], "no CIFAR-100 data", 3),  # data, not usage
    (["--threads", "0"], "threads", 2),
])
def test_bench_command_checks_arguments_before_the_speed_phase(tmp_path, capsys, no_speed, argv, match, code):
    assert cli.main(["bench", "--out", str(tmp_path / "r"), "--device", "cpu"] + argv) == code
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bench_command_dataset_choices_and_data_dir(tmp_path, capsys):
    from cbbench.harness import DATASETS

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--dataset", "imagenet-lt"])
    assert "invalid choice" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["bench", "--dataset", "cifar10-lt", "--data-dir", "d", "--threads", "3"])
    assert args.dataset in DATASETS and args.data_dir == "d" and args.threads == 3


def test_bench_command_passes_data_dir_to_the_accuracy_run(tmp_path, monkeypatch):
    from cbbench.commands import bench
    from cbbench.harness.datasets import write_fake_cifar

    write_fake_cifar(tmp_path / "data", num_classes=10, per_class=100, test_per_class=2)
    seen = {}

    def fake_run_accuracy(dataset, methods, seeds, out_dir, **kw):
        seen.update(kw, dataset=dataset, seeds=seeds)
        return []

    monkeypatch.setattr(acc, "run_accuracy", fake_run_accuracy)
    argv = ["bench", "--out", str(tmp_path / "r"), "--skip-speed", "--dataset", "cifar10-lt",
            "--data-dir", str(tmp_path / "data"), "--seeds", "2", "--epochs", "3"]
    assert cli.main(argv) == 0
    assert seen["data_dir"] == str(tmp_path / "data") and seen["epochs"] == 3 and seen["seeds"] == [0, 1]
    assert seen["plots"] is False and seen["dataset"] == "cifar10-lt"
    assert bench._dataset_counts("cifar10-lt", str(tmp_path / "data"))  # the weights figure's counts too

"""The main job (issue 25): `cbbench bench` runs the `main` level by default -- the training-size shapes and one
large shape per loss against eager, compile and the reference, the fused heads against linear + loss (eager
and compiled), accuracy and the beta experiment -- `--full` the complete sweep, with one progress bar over
the phases whose time left follows the measured pace."""
import io

import pytest

from cbbench import cli, ops
from cbbench.bench import accuracy as acc
from cbbench.bench import cases, plan, progress, speed
from cbbench.bench import linear as heads
from cbbench.bench.cases import Case, HeadCase


def test_the_main_level_is_the_training_shapes_and_one_large_shape_per_loss_inside_the_full_sweep():
    main, full = cases.suite("cpu", set_name="main"), cases.suite("cpu", set_name="full")
    assert set(main) < set(full)
    assert {(c.loss, c.shape) for c in main} == {("softmax", "8x10"), ("softmax", "128x100"),
                                                  ("softmax", "256x1000"), ("softmax", "8192x1000"),
                                                  ("sigmoid", "8192x1000"), ("focal", "8192x1000")}
    level = plan.level("main")
    assert {"cpu", "reference", "eager", "compile"} <= set(level.impls) and level.modes == ("fwd_bwd",)
    assert {"fused", "unfused", "eager", "compile"} == set(level.head_impls) and not level.head_memory
    assert cases.head_suite("cpu", level.head_set)
    assert plan.level("full").impls == speed.IMPLEMENTATIONS and plan.level("full").head_memory
    assert set(plan.level("full").beta_losses) == {"softmax", "sigmoid", "focal"}
    with pytest.raises(ValueError):
        plan.level("medium")


@pytest.mark.skipif(ops.kernel_module("cpu") is None, reason="CPU kernels not built")
def test_the_heads_eager_and_compiled_peers_compute_the_heads_loss_and_gradients():
    rows = heads.run_case(HeadCase("sigmoid", 24, 8, 40), ("fused", "eager", "compile"), repeats=1, memory=False)
    by = {r["impl"]: r for r in rows}
    for name in ("fused", "eager", "compile"):
        assert by[name]["status"] == "ok" and by[name]["max_rel_error"] < 2e-3, by[name]
        assert by[name]["median_s"] > 0


def test_the_time_left_follows_the_measured_pace(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = progress.PhaseProgress([("speed", 10.0), ("speed", 10.0), ("accuracy", 30.0)], bar=False, stream=out)
    assert bar.time_left() == 50.0  # the estimates, before anything ran
    bar.phase("speed", "speed on cpu")
    now[0] += 20.0  # the first step took twice its estimate: the machine is slower than the reference
    bar.done()
    assert bar.time_left() == pytest.approx(80.0)  # 40 s of estimated work left, at half the pace
    bar.skip("accuracy")
    assert bar.time_left() == pytest.approx(20.0)
    bar.phase("speed", "still speed")
    assert "== speed on cpu (about 0:50 left" in out.getvalue() and "== still speed (about 0:20 left" in out.getvalue()


def test_run_accuracy_reports_each_method_and_writes_the_harness_files(tmp_path):
    seen = []
    runs = acc.run_accuracy("digits-lt", ["softmax", "cb_softmax"], 1, str(tmp_path), progress=False, plots=False,
                            on_method=seen.append, epochs=1)
    assert seen == ["softmax", "cb_softmax"] and [r["method"] for r in runs] == seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "runs.json", "summary.md"]


def test_quick_and_full_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--quick", "--full"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli.main(["bench", "--skip-speed", "--skip-accuracy", "--full"]) == 2
    assert "--full does not apply" in capsys.readouterr().err


def test_the_default_level_hands_its_sets_to_every_phase_and_the_heads_reach_the_report(tmp_path, monkeypatch):
    """The main level's cases, implementations and modes reach the speed runner, its head set the heads'
    runner, every method its accuracy step and its loss families the beta experiment; the progress bar
    ends at 100 % of its estimated work; the heads' table is in the report."""
    from cbbench.commands import bench
    from cbbench.harness import METHODS, beta

    seen = {}

    def fake_speed(device, *, cases, impls, modes, policy, threads, log, on_case, skip):
        seen["speed"] = (cases, impls, modes, policy)
        seen["skip"] = skip
        for case in cases:
            on_case(case)
        return {"env": {"device": device, "device_name": "cpu", "torch": "t", "torch_cuda": None, "cbbench": "c",
                        "commit": "c", "date": "d", "cpu_count": 2}, "copy_gbps": 10.0,
                "policy": {"min_repeat": 7}, "modes": list(modes), "rows": []}

    def fake_head_case(case, impls, **kw):
        seen.setdefault("heads", []).append((case, impls, kw["memory"]))
        return [{"case": cases.head_case_id(case), "impl": "fused", "status": "ok", "median_s": 0.5,
                 "shape": case.shape, "loss": case.loss, "logits_mib": 1.0, "samples_s": [0.5]}]

    def fake_accuracy(dataset, methods, seeds, out_dir, on_method=None, **kw):
        for method in METHODS:
            on_method(method)
        return []

    def fake_beta(out_dir, datasets, seeds, **kw):
        seen.setdefault("beta", []).append((list(datasets), kw["losses"], kw["quick"]))
        return []

    made = []
    real = progress.PhaseProgress

    def recording(*a, **kw):
        made.append(real(*a, bar=False, **kw))
        return made[-1]

    monkeypatch.setattr(speed, "run_speed", fake_speed)
    monkeypatch.setattr(heads, "run_case", fake_head_case)
    monkeypatch.setattr(acc, "run_accuracy", fake_accuracy)
    monkeypatch.setattr(beta, "run_beta_experiments", fake_beta)
    monkeypatch.setattr(progress, "PhaseProgress", recording)
    assert cli.main(["bench", "--out", str(tmp_path), "--device", "cpu"]) == 0
    level = plan.level("main")
    speed_cases, impls, modes, policy = seen["speed"]
    assert speed_cases == cases.suite("cpu", set_name="main") and impls == level.impls and modes == level.modes
    assert policy == level.policy
    big, small = Case("focal", 8192, 1000), Case("softmax", 256, 1000)
    assert "--full times it" in seen["skip"](big, "reference") and seen["skip"](small, "reference") is None
    assert seen["skip"](big, "cpu") is None
    assert [c for c, _, _ in seen["heads"]] == cases.head_suite("cpu", "main")
    assert all(i == level.head_impls and m is False for _, i, m in seen["heads"])
    assert seen["beta"] == [(["digits-lt"], level.beta_losses, False), (["prototypes-lt"], level.beta_losses, False)]
    bar = made[0]
    assert bar.done_work == pytest.approx(bar.total)
    text = (tmp_path / "summary.md").read_text()
    assert "### Fused classifier heads on cpu" in text and "--full" in text
    assert (tmp_path / "heads" / "cpu" / "linear.json").is_file()
    assert bench.level_name(cli.build_parser().parse_args(["bench", "--full"])) == "full"

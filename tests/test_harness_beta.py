"""The beta experiment: prototypes-LT (the paper's premise by construction), the beta sweep of
`compare`, its reading, plot and report section."""
import json

import numpy as np
import pytest

import cbbench
from cbbench.cli import main
from cbbench.harness import compare as compare_mod
from cbbench.harness.beta import (BETA_METHODS, beta_markdown, beta_reading, has_beta_sweep, report_section,
                                  run_beta_experiments)
from cbbench.harness.compare import plan_runs, run_comparison
from cbbench.harness.datasets import load_dataset, make_prototypes_lt
from cbbench.harness.methods import BETA_FAMILIES, get_spec

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = {"n_max": 200, "test_per_class": 20}


def test_prototypes_lt_effective_number_is_the_distinct_prototypes_covered():
    """With P prototypes drawn uniformly, a class of n examples covers P (1 - (1 - 1/P)^n) prototypes on
    average: the effective number at beta = (P - 1)/P. Checked on the generated data, class by class."""
    data = load_dataset("prototypes-lt")
    counts = data.train_counts.tolist()
    assert counts == [2000, 1198, 718, 430, 258, 154, 92, 55, 33, 20]
    assert data.test_counts.tolist() == [300] * 10 and data.x_train.shape == (4958, 16)
    meta = data.meta
    assert meta["premise_beta"] == 0.99
    expected = cbbench.effective_number(counts, 0.99).numpy()
    np.testing.assert_allclose(meta["effective_number"], expected, atol=0.01)
    # the distinct count's exact standard deviation for n uniform draws among P = 100
    n, p = np.array(counts, dtype=float), 100.0
    sd = np.sqrt(p * (p - 1) * (1 - 2 / p) ** n + p * (1 - 1 / p) ** n - p ** 2 * (1 - 1 / p) ** (2 * n))
    distinct = np.array(meta["distinct_prototypes"])
    assert np.all(np.abs(distinct - expected) <= 4 * sd + 0.5), (distinct, expected, sd)
    mean = np.mean([make_prototypes_lt(data_seed=s, test_per_class=1).meta["distinct_prototypes"] for s in range(8)],
                   axis=0)
    assert np.all(np.abs(mean - expected) <= 4 * sd / np.sqrt(8) + 0.2), (mean, expected)
    # the premise: the head's effective number is far below its count, the tail's close to it
    assert expected[0] / counts[0] < 0.06 and expected[-1] / counts[-1] > 0.9
    # standardised with the training statistics; deterministic per data_seed
    assert np.allclose(data.x_train.mean(0), 0, atol=1e-4) and np.allclose(data.x_train.std(0), 1, atol=1e-3)
    again = make_prototypes_lt()
    assert np.array_equal(again.x_train, data.x_train) and np.array_equal(again.y_test, data.y_test)
    assert not np.array_equal(make_prototypes_lt(data_seed=1).x_train, data.x_train)


def test_prototypes_lt_examples_sit_near_their_prototypes():
    """Noise 0 makes every example an exact copy of one of its class's P prototypes."""
    data = make_prototypes_lt(n_max=300, prototypes=7, noise=0.0)
    for cls in range(10):
        rows = np.unique(data.x_train[data.y_train == cls].round(5), axis=0)
        assert len(rows) == data.meta["distinct_prototypes"][cls] <= 7


@pytest.mark.parametrize("kwargs, match", [
    (dict(prototypes=0), "prototypes"), (dict(noise=-1), "noise"), (dict(dim=1.5), "dim"),
    (dict(prototype_spread=float("nan")), "prototype_spread"), (dict(n_max=10), "no example"),
])
def test_prototypes_lt_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_prototypes_lt(**kwargs)


def test_beta_families_are_unweighted_cb_and_inverse_of_one_loss():
    for loss, (plain, cb, inverse) in BETA_FAMILIES.items():
        specs = get_spec(plain), get_spec(cb), get_spec(inverse)
        assert {s.loss for s in specs} == {loss}
        assert [s.weighting for s in specs] == ["none", "cb", "inverse"]
        assert [s.uses_beta for s in specs] == [False, True, False]
    assert get_spec("cb_drw").uses_beta and get_spec("cb_sampling").uses_beta and not get_spec("drs").uses_beta


def test_plan_sweeps_beta_only_for_methods_that_use_it():
    plan = plan_runs("synthetic-lt", ["softmax", "cb_focal", "cb_sampling"], 2, betas=[0, 0.99], epochs=2)
    ids = [p.run_id for p in plan]
    assert ids == ["softmax-seed0", "softmax-seed1", "cb_focal-beta0.0-seed0", "cb_focal-beta0.0-seed1",
                   "cb_focal-beta0.99-seed0", "cb_focal-beta0.99-seed1", "cb_sampling-beta0.0-seed0",
                   "cb_sampling-beta0.0-seed1", "cb_sampling-beta0.99-seed0", "cb_sampling-beta0.99-seed1"]
    assert [p.config.beta for p in plan if p.config.method == "cb_focal"] == [0.0, 0.0, 0.99, 0.99]
    with pytest.raises(ValueError, match="either beta"):
        plan_runs("synthetic-lt", ["cb_focal"], 1, betas=[0.9], beta=0.99)


def test_beta_zero_trains_exactly_the_unweighted_loss(tmp_path):
    runs = run_comparison("synthetic-lt", ["softmax", "cb_softmax", "focal", "cb_focal"], [0], betas=[0.0, 0.999],
                          epochs=3, progress=False, dataset_options=SMALL)
    by = {(r["method"], r["beta"]): r for r in runs}
    for plain, cb in (("softmax", "cb_softmax"), ("focal", "cb_focal")):
        assert by[(cb, 0.0)]["per_class_accuracy"] == by[(plain, None)]["per_class_accuracy"]
        assert by[(cb, 0.999)]["per_class_accuracy"] != by[(plain, None)]["per_class_accuracy"]


def test_compare_betas_cli_writes_the_beta_plot_and_reading(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--dataset", "synthetic-lt", "--methods", "softmax,cb_softmax,inverse_freq", "--betas",
               "0,0.99,0.9999", "--seeds", "2", "--epochs", "2", "--device", "cpu", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    summary = (out / "summary.md").read_text()
    assert "## The beta experiment" in summary and "| softmax |" in summary
    assert "| cb_softmax | 0.99 |" in summary and "An intermediate beta beats both:" in summary
    assert (out / "beta_experiment.png").read_bytes()[:8] == PNG
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
    assert sorted({r["beta"] for r in results if r["method"] == "cb_softmax"}) == [0.0, 0.99, 0.9999]
    assert {r["beta"] for r in results if r["method"] != "cb_softmax"} == {None}


def _fake(method, errors, beta=None):
    return [{"method": method, "beta": beta, "seed": s, "dataset": "fake-lt", "balanced_accuracy": 100.0 - e,
             "status": "ok", "config": {}} for s, e in enumerate(errors)]


def _fake_sweep(intermediate_errors):
    runs = _fake("softmax", [30.0, 30.5, 29.5]) + _fake("inverse_freq", [35.0, 35.5, 34.5])
    runs += _fake("cb_softmax", [30.0, 30.5, 29.5], 0.0)
    for beta, errors in intermediate_errors.items():
        runs += _fake("cb_softmax", errors, beta)
    return runs


def test_reading_says_yes_only_when_an_intermediate_beta_beats_both_beyond_noise():
    clear = beta_reading(_fake_sweep({0.9: [31, 31, 31], 0.99: [27.0, 27.5, 26.5]}))
    assert len(clear) == 1 and clear[0]["best_beta"] == 0.99 and clear[0]["beats_both"]
    assert clear[0]["versus"] == {"no weighting": "beats", "inverse frequency": "beats"}
    assert "**yes**" in clear[0]["text"]
    tie = beta_reading(_fake_sweep({0.99: [29.0, 30.5, 29.5]}))[0]  # 0.33 better, spread ~0.8: noise
    assert tie["versus"]["no weighting"] == "is within seed noise of" and not tie["beats_both"]
    worse = beta_reading(_fake_sweep({0.99: [33.0, 33.5, 32.5]}))[0]
    assert worse["versus"] == {"no weighting": "is worse than", "inverse frequency": "beats"}
    assert "**no**" in worse["text"]


def test_reading_falls_back_to_beta_zero_and_reports_missing_baselines():
    runs = [r for r in _fake_sweep({0.99: [20, 20.5, 19.5]}) if r["method"] == "cb_softmax"]
    reading = beta_reading(runs)[0]
    assert reading["versus"] == {"no weighting": "beats", "inverse frequency": None}
    assert not reading["beats_both"] and "inverse frequency: not available" in reading["text"]
    assert not has_beta_sweep(_fake("cb_softmax", [1, 2], 0.9))


def test_beta_markdown_table_holds_the_measured_means():
    lines = beta_markdown(_fake_sweep({0.99: [27.0, 27.5, 26.5]}), png="b.png")
    table = [ln for ln in lines if ln.startswith("| softmax |")]
    assert table == ["| softmax | 30.00 ± 0.50 | 30.00 ± 0.50 | 27.00 ± 0.50 | 35.00 ± 0.50 |"]
    assert "![balanced error against beta on fake-lt](b.png)" in lines


def test_bench_beta_phase_reuses_runs_and_draws_the_report_section(tmp_path, monkeypatch):
    """run_beta_experiments trains the beta grid once per (method, beta, seed), takes identical runs from
    ``reuse``, and the report section draws one plot per dataset."""
    first = run_comparison("synthetic-lt", ["softmax", "cb_focal"], [0], epochs=2, progress=False)
    calls = []
    real = compare_mod.train_run
    monkeypatch.setattr(compare_mod, "train_run",
                        lambda config, data=None, **kw: calls.append((config.method, config.beta)) or real(config, data,
                                                                                                            **kw))
    runs = run_beta_experiments(str(tmp_path / "beta"), ["synthetic-lt"], [0], betas=(0.0, 0.9999), reuse=first,
                                epochs=2)
    expected = len(BETA_METHODS) + 3 + 1  # every method once, the CB methods once more (two betas), the scale
    assert len(runs) == expected
    assert ("softmax", 0.9999) not in calls and ("cb_focal", 0.9999) not in calls  # reused
    assert len(calls) == expected - 2
    assert (tmp_path / "beta" / "synthetic-lt" / "results.csv").exists()
    lines = report_section(runs, tmp_path)
    assert any(line.startswith("- For scale, balanced_softmax") for line in lines)
    assert "### synthetic-lt" in lines and "![balanced error against beta on synthetic-lt](beta_synthetic-lt.png)" \
        in lines
    assert (tmp_path / "beta_synthetic-lt.png").read_bytes()[:8] == PNG

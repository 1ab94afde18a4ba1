"""The measured-effective-number study (cbbench effective-study): its pass-bar logic, null data, the
validation split carved from training (beta is never chosen on the test split), paired verdicts, the
duplicate injection of the CIFAR check, and the bench report section."""
import json

import numpy as np
import pytest

from cbbench.harness import effective_downstream as down
from cbbench.harness import effective_study as st
from cbbench.harness.datasets import load_dataset


def _row(**kw):
    base = {"estimator": st.ESTIMATORS[0].name, "separation": 0.2, "mal": 0.01, "rho": 0.99, "noise": 0.3, "dim": 16,
            "feature_map": None, "seed": 1, "bias": 0.0}
    return dict(base, **kw)


def _null(case, exact):
    return {"case": case, "estimator": st.ESTIMATORS[0].name, "exact": exact, "mal": 0.0}


def test_pass_bar_holds_only_when_every_item_holds():
    rows = [_row(), _row(separation=0.39, mal=0.09), _row(separation=0.9, mal=2.0)]  # the last is outside the bar
    nulls = [_null("distinct", True), _null("one", True)]
    items = st.pass_bar(rows, nulls, speed_s=10.0)
    assert [i["passed"] for i in items] == [True, True, True, True]
    bad = st.pass_bar(rows + [_row(separation=0.3, rho=0.9)], nulls + [_null("one", False)], speed_s=61.0)
    assert [i["passed"] for i in bad] == [False, True, False, False]
    assert "rho 0.900" in bad[0]["detail"] and "1 of 2" in bad[2]["detail"]
    assert st.pass_bar(rows, nulls)[3]["passed"] is None  # speed not measured
    # the other estimators never count toward the bar
    other = [_row(estimator=st.ESTIMATORS[1].name, mal=1.0)]
    assert st.pass_bar(rows + other, nulls)[0]["passed"] is True


def test_breaks_reports_the_first_noise_over_the_line():
    rows = [_row(noise=n, mal=m, separation=n) for n, m in ((0.1, 0.0), (0.3, 0.2), (0.6, 0.3), (1.0, 1.0))]
    got = st._breaks(rows, st.ESTIMATORS[0].name)
    assert got == [{"dim": 16, "feature_map": None, "noise": 0.6, "separation": 0.6}]


def test_null_data_have_the_truth_they_claim():
    x, aug, y, counts = st._null_data("distinct", 0.1, 16, 1)
    assert len(np.unique(x, axis=0)) == len(x) and x.shape == aug.shape and np.bincount(y).tolist() == counts.tolist()
    x, aug, y, counts = st._null_data("one", 0.1, 16, 1)
    assert counts.tolist()[0] == 2000 and x.shape[1] == 16


def test_known_truth_markdown_renders_every_configuration():
    rows = [_row(noise=n, effective=[1], truth=[1], counts=[2]) for n in (0.1, 0.3)]
    text = "\n".join(st.known_truth_markdown(rows, [_null("distinct", True)], speed_s=3.0))
    assert "| 16 | – | 0.1 |" in text and "| 16 | – | 0.3 |" in text and "**pass**" in text


def test_validation_is_carved_from_the_training_split_only():
    data = load_dataset("digits-lt", views=True)
    tuning = down.carve_validation(data, 0.2, seed=7)
    # the evaluation split of the tuning data is made of training examples, never test examples
    train_rows = {r.tobytes() for r in data.x_train}
    assert all(r.tobytes() in train_rows for r in tuning.x_test)
    assert not {r.tobytes() for r in tuning.x_test} & {r.tobytes() for r in tuning.x_train}
    assert len(tuning.y_train) + len(tuning.y_test) == len(data.y_train)
    per_class = np.bincount(tuning.y_test, minlength=10)
    assert (per_class >= 1).all() and (np.bincount(tuning.y_train, minlength=10) >= 1).all()
    assert per_class[0] == 24  # 20 % of 120
    assert tuning.x_train_aug.shape == tuning.x_train.shape


def test_beta_is_chosen_on_the_validation_split(tmp_path, monkeypatch):
    """The tuning runs see the carved validation split as their evaluation split; the CB arm then trains with
    the beta of the lowest validation error; every arm is paired by seed."""
    seen = []
    val_error = {0.9: 30.0, 0.99: 20.0, 0.999: 20.0, 0.9999: 25.0}  # tie: the smaller beta wins

    def fake_train_run(config, data, progress=False):
        seen.append((config, data))
        tuning = "validation_of_training_split" in data.meta
        error = val_error[config.beta] if tuning else 10.0 + (config.method.startswith("measured") and 1.0)
        return {"balanced_accuracy": 100.0 - error - 0.1 * config.seed, "top1_error": error, "status": "ok",
                "config": {"method": config.method, "seed": config.seed, "beta": config.beta, "commit": "x"},
                "effective": None}

    monkeypatch.setattr(down, "train_run", fake_train_run)
    monkeypatch.setattr(down, "DATASETS", {"digits-lt": {"views": True}})
    monkeypatch.setattr(down, "LOSSES", {"softmax": down.LOSSES["softmax"]})
    down.run_downstream(str(tmp_path), seeds=2)
    tuning = [(c, d) for c, d in seen if "validation_of_training_split" in d.meta]
    assert len(tuning) == 2 * len(down.TUNING_BETAS)
    test_rows = {r.tobytes() for r in load_dataset("digits-lt").x_test}
    for _, data in tuning:
        assert not {r.tobytes() for r in data.x_test} & test_rows
    cb = [c for c, d in seen if c.method == "cb_softmax" and "validation_of_training_split" not in d.meta]
    assert [c.beta for c in cb] == [0.99, 0.99]
    store = json.loads((tmp_path / "downstream_runs.json").read_text())
    p = down.paired(store, "digits-lt", "softmax", "measured", "none", [0, 1])
    assert p["mean"] == pytest.approx(1.0) and p["verdict"] == "loses to"
    # a rerun keeps the finished runs
    seen.clear()
    down.run_downstream(str(tmp_path), seeds=2)
    assert seen == []


@pytest.mark.parametrize("diffs, verdict", [([-1.0, -1.2, -0.9], "beats"), ([1.0, 1.1, 0.9], "loses to"),
                                            ([-1.0, 1.0, 0.1], "ties")])
def test_paired_verdicts(diffs, verdict):
    store = {"runs": {}}
    for seed, d in enumerate(diffs):
        store["runs"][f"ds/softmax/measured/{seed}"] = {"balanced_accuracy": 100.0 - (20.0 + d)}
        store["runs"][f"ds/softmax/none/{seed}"] = {"balanced_accuracy": 80.0}
    assert down.paired(store, "ds", "softmax", "measured", "none", range(3))["verdict"] == verdict


def test_duplicate_injection_keeps_counts_and_knows_its_sources():
    from cbbench.harness.effective_cifar import REPLICATIONS, _injected

    y = np.repeat(np.arange(6), [100, 60, 50, 11, 7, 1])
    source, truth = _injected(y, seed=0)
    assert len(source) == len(y) and (y[source] == y).all()  # every copy comes from its own class
    for c in range(6):
        assert len(np.unique(source[y == c])) == truth[c]
        assert truth[c] == max(1, int(np.ceil((y == c).sum() / REPLICATIONS[c % len(REPLICATIONS)])))


def test_bench_report_section(tmp_path):
    from cbbench.commands.weights import measured_report

    lines = measured_report(str(tmp_path))
    text = "\n".join(lines)
    assert text.startswith("## The effective number measured from data")
    rows = [ln for ln in lines if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 10
    truth, measured = ([int(r.split("|")[k]) for r in rows] for k in (3, 4))
    assert np.median(np.abs(np.log(np.asarray(measured) / np.asarray(truth)))) <= 0.05
    assert (tmp_path / "measured_effective_number.png").stat().st_size > 10_000


@pytest.mark.filterwarnings("ignore:An input array is constant")  # 1 epoch on noise: E may be equal everywhere
def test_cifar_part_on_a_tiny_image_folder(tmp_path):
    """The CIFAR check end to end on a folder of random 32x32 images (1 epoch): it trains, measures with
    two crop/flip views, injects duplicates with known sources and writes its JSON and markdown."""
    from PIL import Image

    from cbbench.commands.effective_study import render_cifar
    from cbbench.harness.effective_cifar import run_cifar

    rng = np.random.RandomState(0)
    counts = [12, 9, 7, 5, 4]
    for split, per_class in (("train", counts), ("test", [2] * 5)):
        for c, n in enumerate(per_class):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    result = run_cifar(str(out), str(tmp_path / "data"), epochs=1, threads=1)
    assert result["counts"] == counts and result["injected"]["distinct_sources"] == [12, 5, 2, 1, 1]
    assert result["measured"]["radius_source"].startswith("quantile 0.99 of the distance between two views")
    assert sum(result["injected"]["measured"]["effective_number"]) >= 5
    (out / "cifar.json").write_text(json.dumps(result))
    text = render_cifar(str(out))
    assert "Duplicate injection" in text and (out / "cifar_measured.png").is_file()

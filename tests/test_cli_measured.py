"""`cbbench weights --from-features FILE`: the measured effective numbers of a feature file, their table,
plot and JSON, and its input errors."""
import json

import numpy as np
import pytest

import cbbench
from cbbench import cli
from cbbench.harness.datasets import make_prototypes_lt


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    d = make_prototypes_lt(num_classes=4, n_max=400, prototypes=[6, 60, 12, 30], views=True, test_per_class=1,
                           data_seed=5)
    path = tmp_path_factory.mktemp("feat") / "features.npz"
    np.savez(path, features=d.x_train, labels=d.y_train, features_aug=d.x_train_aug)
    return path, d


def _rows(out):
    return [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")
            and line[2].isdigit()]


def test_prints_the_measured_table_and_writes_the_plot_and_json(feature_file, tmp_path, capsys):
    path, d = feature_file
    assert cli.main(["weights", "--from-features", str(path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    want = cbbench.effective_number_from_features(d.x_train, d.y_train, 4, features_aug=d.x_train_aug)
    rows = _rows(out)
    assert [int(r[1]) for r in rows] == d.train_counts.tolist()
    assert [int(r[3]) for r in rows] == [int(v) for v in want.effective_number.tolist()]
    assert [float(r[6]) for r in rows] == pytest.approx(want.weights().tolist(), abs=1e-4)
    assert "two views" in out and f"{want.dataset_beta:.6g}" in out
    png = (tmp_path / "measured_effective_number.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((tmp_path / "measured.json").read_text())
    assert summary["effective_number"] == [int(v) for v in want.effective_number.tolist()]


def test_radius_and_training_split_names(feature_file, tmp_path, capsys):
    path, d = feature_file
    other = tmp_path / "train.npz"
    np.savez(other, x_train=d.x_train, y_train=d.y_train)
    assert cli.main(["weights", "--from-features", str(other), "--radius", "0", "--out", ""]) == 0
    out = capsys.readouterr().out
    assert "(given)" in out and [int(r[3]) for r in _rows(out)] == d.train_counts.tolist()


@pytest.mark.parametrize("extra, message", [
    (["--counts", "3,2"], "not both"),
    (["--quantile", "2"], "quantile must be in [0, 1]"),
])
def test_bad_options(feature_file, extra, message, capsys):
    path, _ = feature_file
    assert cli.main(["weights", "--from-features", str(path), "--out", ""] + extra) == 2
    assert message in capsys.readouterr().err


def test_bad_files(tmp_path, capsys):
    assert cli.main(["weights", "--from-features", str(tmp_path / "none.npz"), "--out", ""]) == 3  # a data error
    assert "no such file" in capsys.readouterr().err
    np.savez(tmp_path / "wrong.npz", a=np.zeros(3))
    assert cli.main(["weights", "--from-features", str(tmp_path / "wrong.npz"), "--out", ""]) == 3  # a data error
    assert "expected arrays features + labels" in capsys.readouterr().err
    np.savez(tmp_path / "float.npz", features=np.zeros((3, 2)), labels=np.zeros(3))
    assert cli.main(["weights", "--from-features", str(tmp_path / "float.npz"), "--out", ""]) == 3  # a data error
    assert "whole-number labels" in capsys.readouterr().err
    (tmp_path / "text.npz").write_text("not a zip")
    assert cli.main(["weights", "--from-features", str(tmp_path / "text.npz"), "--out", ""]) == 3  # a data error
    assert "cannot read it as .npz" in capsys.readouterr().err
    assert cli.main(["weights", "--radius", "1", "--out", ""]) == 2
    assert "--radius applies to --from-features only" in capsys.readouterr().err

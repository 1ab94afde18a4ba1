"""Long-tailed datasets: the count formula, the CB/LDAM selection rule, fake-CIFAR loading, digits, synthetic."""
import os
import pickle

import numpy as np
import pytest

from cbbench.harness.datasets import (DATASETS, load_cifar_lt, load_dataset, load_digits_lt, long_tailed_counts,
                                      long_tailed_indices, make_synthetic_lt,
                                      write_fake_cifar)


def fake_cifar(root, num_classes=10, per_class=30, test_per_class=4):
    """The fake folder plus the arrays it holds, read back independently of the loader."""
    path = write_fake_cifar(root, num_classes, per_class, test_per_class, seed=1)
    key = b"labels" if num_classes == 10 else b"fine_labels"
    train = sorted(f for f in os.listdir(path) if f.startswith("data_batch") or f == "train")
    parts = [pickle.load(open(os.path.join(path, f), "rb"), encoding="bytes") for f in train]
    test = pickle.load(open(os.path.join(path, "test_batch" if num_classes == 10 else "test"), "rb"))
    return (path, np.concatenate([p[b"data"] for p in parts]), np.concatenate([p[key] for p in parts]),
            test[b"data"], np.asarray(test[key]))


def ldam_selection(labels, img_num_per_cls):
    """IMBALANCECIFAR10.gen_imbalanced_data of the LDAM code, verbatim in spirit: one global seed."""
    np.random.seed(0)
    targets_np = np.array(labels, dtype=np.int64)
    classes = np.unique(targets_np)
    keep = []
    for the_class, the_img_num in zip(classes, img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        keep.append(idx[:the_img_num])
    return np.concatenate(keep)


def test_full_size_fake_cifar10_lt_has_12406_images(tmp_path):
    write_fake_cifar(tmp_path)
    data = load_dataset("cifar10-lt", data_dir=tmp_path)
    assert data.x_train.shape == (12406, 3, 32, 32) and data.x_test.shape == (10000, 3, 32, 32)
    assert data.train_counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_cifar10_lt_if100_counts_match_the_protocol():
    counts = long_tailed_counts(5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406
    # the LDAM formula written out independently
    assert counts == [int(5000 * (0.01 ** (i / 9.0))) for i in range(10)]
    assert sum(long_tailed_counts(500, 100, 100)) == 10847  # CIFAR-100-LT IF 100
    assert sum(long_tailed_counts(5000, 10, 10)) == 20431  # CIFAR-10-LT IF 10


def test_step_profile_and_balanced():
    assert long_tailed_counts(100, 5, 10, profile="step") == [100, 100, 10, 10, 10]
    assert long_tailed_counts(7, 4, 1) == [7, 7, 7, 7]


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_max=10, num_classes=3, imbalance=20), "no example"),
    (dict(n_max=10, num_classes=3, imbalance=0.5), ">= 1"),
    (dict(n_max=10, num_classes=3, imbalance=float("nan")), ">= 1"),
    (dict(n_max=0, num_classes=3, imbalance=2), "n_max"),
    (dict(n_max=10, num_classes=3, imbalance=2, profile="linear"), "profile"),
])
def test_long_tailed_counts_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        long_tailed_counts(**kwargs)


def test_selection_matches_ldam_rule():
    rng = np.random.RandomState(3)
    labels = rng.permutation(np.repeat(np.arange(6), 40))
    counts = long_tailed_counts(40, 6, 8)
    got = long_tailed_indices(labels, counts, seed=0)
    np.testing.assert_array_equal(got, ldam_selection(labels, counts))
    assert np.bincount(labels[got]).tolist() == counts


def test_fake_cifar10_loading_follows_the_rule(tmp_path):
    _, images, labels, test_images, test_labels = fake_cifar(tmp_path)
    data = load_cifar_lt(10, tmp_path, imbalance=10)
    counts = long_tailed_counts(30, 10, 10)
    assert data.train_counts.tolist() == counts
    expected = ldam_selection(labels, counts)
    np.testing.assert_array_equal(data.x_train, images[expected].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(data.y_train, labels[expected])
    np.testing.assert_array_equal(data.x_test, test_images.reshape(-1, 3, 32, 32))  # test set untouched
    np.testing.assert_array_equal(data.y_test, test_labels)
    assert data.x_train.dtype == np.uint8 and data.kind == "image"
    # the folder itself works as --data-dir too
    again = load_dataset("cifar10-lt", data_dir=tmp_path / "cifar-10-batches-py", imbalance=10)
    np.testing.assert_array_equal(again.y_train, data.y_train)


def test_fake_cifar100_loading(tmp_path):
    fake_cifar(tmp_path, num_classes=100, per_class=6, test_per_class=1)
    data = load_dataset("cifar100-lt", data_dir=str(tmp_path), imbalance=6)
    assert data.num_classes == 100
    assert data.train_counts.tolist() == long_tailed_counts(6, 100, 6)
    assert data.meta["mean"] == (0.5071, 0.4865, 0.4409)


def test_missing_cifar_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data_batch_1"):
        load_dataset("cifar10-lt", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100-lt", data_dir=None)


def test_corrupt_cifar_pickle_is_reported(tmp_path):
    path, *_ = fake_cifar(tmp_path)
    with open(os.path.join(path, "test_batch"), "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, fh)
    with pytest.raises(ValueError, match="missing key"):
        load_cifar_lt(10, tmp_path, imbalance=2)


def test_digits_default_keeps_every_class_and_a_balanced_test_split():
    data = load_digits_lt()
    assert data.imbalance == 50
    assert data.train_counts.tolist() == long_tailed_counts(120, 10, 50)
    assert data.train_counts.min() >= 1
    assert data.test_counts.tolist() == [50] * 10
    # the training split is standardised with its own statistics
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    # no test image is also a training image (digits has no exact duplicates across these splits)
    train_rows = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_rows for row in data.x_test)
    with pytest.raises(ValueError, match="no example"):
        load_digits_lt(imbalance=200)


def test_synthetic_overlap_and_counts():
    data = make_synthetic_lt(20, num_classes=4, dim=3, n_max=400, test_per_class=300, separation=3.0)
    assert data.train_counts.tolist() == long_tailed_counts(400, 4, 20)
    assert data.test_counts.tolist() == [300] * 4
    means = np.stack([data.x_test[data.y_test == c].mean(axis=0) for c in range(4)])
    # class means sit at distance `separation` from the origin (unit-variance noise, 300 samples)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 3.0, atol=0.25)
    same = make_synthetic_lt(20, num_classes=4, dim=3, n_max=400, test_per_class=300, separation=3.0)
    np.testing.assert_array_equal(same.x_train, data.x_train)  # data_seed fixes the data


def test_unknown_dataset_and_options():
    assert DATASETS == ("digits-lt", "synthetic-lt", "prototypes-lt", "cifar10-lt", "cifar100-lt", "folder", "list",
                        "features", "imagenet-lt", "places-lt", "inat2018")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist-lt")
    with pytest.raises(ValueError, match="separation does not apply to --dataset digits-lt"):
        load_dataset("digits-lt", separation=1.0)

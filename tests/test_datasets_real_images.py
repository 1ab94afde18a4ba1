"""The image-folder path on real images: CIFAR-10-LT (imbalance 100) as JPEG files, a 7 MB archive kept
outside the repository. Skipped where it is absent (a fresh clone); point ``CBBENCH_CIFAR10_LT_JPG`` at
``cifar10-lt100-jpg.tar.gz`` or keep it at ``../shared/data/`` beside the repository."""
import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbbench.harness import TrainConfig, train_run
from cbbench.harness.datasets import load_dataset, long_tailed_counts

REPO = Path(__file__).resolve().parents[1]
ARCHIVE_ENV = "CBBENCH_CIFAR10_LT_JPG"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _archive():
    candidates = [Path(os.environ[ARCHIVE_ENV])] if os.environ.get(ARCHIVE_ENV) else []
    candidates.append(REPO.parent / "shared" / "data" / "cifar10-lt100-jpg.tar.gz")
    return next((c for c in candidates if c.is_file()), None)


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_archive() is None, reason=f"no cifar10-lt100-jpg.tar.gz (set {ARCHIVE_ENV})")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10-lt-jpg")
    with tarfile.open(_archive()) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10-lt100"


@pytest.fixture(scope="module")
def data(folder):
    return load_dataset("folder", data_dir=folder)


def test_real_cifar10_lt_folder_loads_with_the_exact_counts(folder, data):
    assert data.train_counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert data.train_counts.tolist() == long_tailed_counts(5000, 10, 100)  # the CB/LDAM rule, 12,406 images
    assert data.test_counts.tolist() == [1000] * 10
    assert data.meta["class_names"] == CIFAR10_CLASSES and data.meta["eval_split"] == "test"
    assert data.kind == "image" and data.x_train.shape == (12406, 3, 32, 32) and data.x_test.shape[0] == 10000
    assert data.imbalance == 100.0 and data.meta["resized"] == 0
    # the arrays hold the decoded JPEGs: the first truck image, pixel for pixel
    first_truck = sorted((folder / "train" / "truck").iterdir())[0]
    row = int(np.flatnonzero(data.y_train == 9)[0])
    np.testing.assert_array_equal(data.x_train[row], np.asarray(Image.open(first_truck).convert("RGB")).transpose(2, 0, 1))
    # CIFAR-like channel statistics (the CIFAR-10 training set's are 0.49, 0.48, 0.45 / 0.20, 0.20, 0.20)
    assert np.allclose(data.meta["mean"], (0.49, 0.48, 0.45), atol=0.05)


def test_real_images_train_one_short_epoch(data):
    """ResNet-32 with the CIFAR recipe for one epoch on every 25th training image (all ten classes) and
    every 50th test image, one thread: the real-image pipeline end to end, in seconds."""
    keep = np.arange(0, len(data.y_train), 25)
    test = np.arange(0, len(data.y_test), 50)
    small = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep],
                                x_test=data.x_test[test], y_test=data.y_test[test])
    assert (small.train_counts > 0).all()
    result = train_run(TrainConfig("folder", "cb_focal", data_dir="unused", epochs=1, batch_size=64, device="cpu",
                                   threads=1, dataset_options={"images": "memory"}), small, progress=False)
    assert result["status"] == "ok" and result["config"]["model"] == "resnet32"
    assert result["train_counts"] == small.train_counts.tolist() and sum(result["config"]["test_counts"]) == 200
    assert 0 <= result["top1_error"] <= 100 and len(result["per_class_accuracy"]) == 10

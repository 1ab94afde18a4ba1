"""Your own data and the benchmark presets, on tiny generated fixtures: image folders (in memory and
streamed), list files, iNaturalist json, features; and the bad inputs, each one clear error naming the
file."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbbench.cli import main
from cbbench.harness import TrainConfig, train_run
from cbbench.harness import userdata
from cbbench.harness.datasets import dataset_kind, load_dataset, long_tailed_counts
from cbbench.harness.errors import EXIT_DATA
from cbbench.harness.images import ImageFiles, random_resized_crop_box
from cbbench.harness.inputs import StreamInputs
from cbbench.harness.train import resolve_config

CLASSES = ("cat", "ant", "bee")  # sorted order: ant, bee, cat
TRAIN_COUNTS = {"cat": 6, "ant": 4, "bee": 2}


def _image(rng, cls_index, size):
    width, height = size
    return (rng.rand(height, width, 3) * 60 + 60 * cls_index).astype(np.uint8)


def write_folder(root, size=(16, 16), ext="png", test_split="test", counts=TRAIN_COUNTS, seed=0):
    """train/<class>/NNN.ext and <test_split>/<class>/NNN.ext; returns {path: pixel array}."""
    rng = np.random.RandomState(seed)
    pixels = {}
    for split, per_class in (("train", counts), (test_split, {c: 2 for c in counts})):
        for cls, n in per_class.items():
            folder = Path(root) / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = _image(rng, CLASSES.index(cls), size)
                path = folder / f"{i:03d}.{ext}"
                Image.fromarray(arr).save(path)
                pixels[str(path)] = arr
    return pixels


# -- image folder ------------------------------------------------------------------------------------------

def test_folder_of_small_images_is_decoded_into_memory(tmp_path):
    pixels = write_folder(tmp_path)
    data = load_dataset("folder", data_dir=tmp_path)
    assert data.kind == "image" and data.meta["images"] == "memory"
    assert data.meta["class_names"] == ["ant", "bee", "cat"]  # class order: sorted names
    assert data.train_counts.tolist() == [4, 2, 6] and data.test_counts.tolist() == [2, 2, 2]
    assert data.x_train.shape == (12, 3, 16, 16) and data.x_train.dtype == np.uint8
    first_cat = str(tmp_path / "train" / "cat" / "000.png")
    cat_rows = np.flatnonzero(data.y_train == 2)
    np.testing.assert_array_equal(data.x_train[cat_rows[0]], pixels[first_cat].transpose(2, 0, 1))
    assert data.imbalance == 3.0  # used as they are: 6 / 2
    assert len(data.meta["mean"]) == 3 and all(0 < s < 1 for s in data.meta["std"])
    config = resolve_config(TrainConfig("folder", "softmax", data_dir=str(tmp_path)))
    assert (config.model, config.epochs, config.augment) == ("resnet32", 200, True)  # the CIFAR recipe


def test_folder_takes_val_when_there_is_no_test_and_rejects_unknown_eval_classes(tmp_path):
    write_folder(tmp_path, test_split="val")
    assert load_dataset("folder", data_dir=tmp_path).meta["eval_split"] == "val"
    (tmp_path / "val" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"val: class folder\(s\) \['dog'\] have no training folder"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_lt_cut_with_the_cb_ldam_rule(tmp_path):
    write_folder(tmp_path, counts={"cat": 8, "ant": 8, "bee": 8})
    data = load_dataset("folder", data_dir=tmp_path, imbalance=4)
    assert data.train_counts.tolist() == long_tailed_counts(8, 3, 4) == [8, 4, 2]
    assert data.imbalance == 4.0


def test_streamed_folder_trains_and_its_batches_do_not_depend_on_the_workers(tmp_path):
    write_folder(tmp_path, size=(80, 72), ext="jpg")
    data = load_dataset("folder", data_dir=tmp_path, crop=32)
    assert data.kind == "image_files" and data.meta["crop"] == 32 and data.meta["resize"] == 37
    assert data.train_counts.tolist() == [4, 2, 6]
    config = resolve_config(TrainConfig("folder", "softmax", data_dir=str(tmp_path), dataset_options={"crop": 32}))
    assert (config.model, config.lr_schedule) == ("resnet50", "cosine")  # the large-image recipe
    batches = [torch.tensor([3, 0, 7, 11]), torch.tensor([5, 2])]
    seen = []
    for workers in (0, 2):
        inputs = StreamInputs(data, augment=True, seed=1, workers=workers, device=torch.device("cpu"))
        seen.append([(x.clone(), y.clone()) for x, y in inputs.epoch_batches(batches, 4, None)])
    for (xa, ya), (xb, yb) in zip(*seen):
        assert xa.shape == (len(ya), 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(seen[0][0][1], torch.as_tensor(data.y_train[[3, 0, 7, 11]]))
    result = train_run(TrainConfig("folder", "cb_focal", data_dir=str(tmp_path), model="resnet10", epochs=2,
                                   batch_size=4, workers=0, threads=1, dataset_options={"crop": 32}), progress=False)
    assert result["status"] == "ok" and result["train_counts"] == [4, 2, 6]
    assert len(result["per_class_accuracy"]) == 3


def test_train_augmentation_is_keyed_by_seed_epoch_and_index_and_test_is_a_centre_crop(tmp_path):
    pixels = write_folder(tmp_path, size=(80, 60), ext="png")
    path = str(tmp_path / "train" / "cat" / "000.png")
    train = ImageFiles([path], [2], train=True, crop=24, seed=3)
    a, b, c = train[(0, 1)][0], train[(0, 1)][0], train[(0, 2)][0]
    assert a.shape == (3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    test = ImageFiles([path], [2], train=False, crop=24, resize=30)
    x, label, err = test[0]
    assert label == 2 and err is None
    expected = Image.fromarray(pixels[path]).resize((40, 30), Image.Resampling.BILINEAR).crop((8, 3, 32, 27))
    np.testing.assert_array_equal(x.numpy(), np.asarray(expected).transpose(2, 0, 1))


def test_random_resized_crop_box_stays_inside_with_torchvision_ranges():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(2000):
        left, top, w, h = random_resized_crop_box(120, 80, rng)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 80 and w > 0 and h > 0
        areas.append(w * h / (120 * 80))
    assert 0.05 < min(areas) < 0.15 and max(areas) > 0.85  # area fraction spans [0.08, 1]
    # a 30:1 image: no try fits, so the central crop of the widest allowed ratio (4:3), as torchvision
    assert random_resized_crop_box(300, 10, rng) == (143, 0, 13, 10)


# -- list files, iNaturalist json, presets -------------------------------------------------------------------

def _write_list(path, rows):
    with open(path, "w") as fh:
        for rel, label in rows:
            fh.write(f"{rel} {label}\n" if rel is not None else "\n")


def _rows(root, split):
    rows = []
    for label, cls in enumerate(sorted(CLASSES)):
        for f in sorted(os.listdir(Path(root) / split / cls)):
            rows.append((f"{split}/{cls}/{f}", label))
    return rows


def test_list_files_load_as_the_oltr_format(tmp_path):
    write_folder(tmp_path / "img")
    train_rows = _rows(tmp_path / "img", "train")
    _write_list(tmp_path / "train.txt", train_rows[:3] + [(None, None)] + train_rows[3:])  # a blank line
    _write_list(tmp_path / "test.txt", _rows(tmp_path / "img", "test"))
    data = load_dataset("list", data_dir=tmp_path / "img", train_list=str(tmp_path / "train.txt"),
                        eval_list=str(tmp_path / "test.txt"))
    assert data.name == "list" and data.kind == "image"
    assert data.train_counts.tolist() == [4, 2, 6] and data.test_counts.tolist() == [2, 2, 2]
    assert data.meta["train_source"] == str(tmp_path / "train.txt")


def test_inaturalist_json_loads_like_its_list(tmp_path):
    write_folder(tmp_path / "img")

    def coco(split):
        rows = _rows(tmp_path / "img", split)
        return {"images": [{"id": 100 + k, "file_name": rel} for k, (rel, _) in enumerate(rows)],
                "annotations": [{"id": 7 + k, "image_id": 100 + k, "category_id": label}
                                for k, (_, label) in enumerate(rows)],
                "categories": [{"id": c, "name": n} for c, n in enumerate(sorted(CLASSES))]}

    for split, name in (("train", "train2018.json"), ("test", "val2018.json")):
        (tmp_path / name).write_text(json.dumps(coco(split)))
    data = load_dataset("list", data_dir=tmp_path / "img", train_list=str(tmp_path / "train2018.json"),
                        eval_list=str(tmp_path / "val2018.json"))
    assert data.train_counts.tolist() == [4, 2, 6] and data.num_classes == 3
    paths, labels, categories = userdata.read_inat_json(str(tmp_path / "train2018.json"), "/r")
    assert categories == 3 and paths[0] == "/r/train/ant/000.png" and labels.tolist()[:4] == [0, 0, 0, 0]


@pytest.fixture
def small_presets(monkeypatch):
    """The presets with the fixture's class and image counts (their file names and formats unchanged)."""
    for name, num_classes, counts in (("places-lt", 3, {"train": 12, "val": 6, "test": 6}),
                                      ("inat2018", 3, {"train": 12, "val": 6})):
        monkeypatch.setitem(userdata.PRESETS, name, dataclasses.replace(userdata.PRESETS[name], num_classes=num_classes,
                                                                        counts=counts))


def test_presets_read_the_published_list_names_and_check_counts(tmp_path, small_presets, monkeypatch):
    write_folder(tmp_path / "img", size=(80, 72), ext="jpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_list(lists / "Places_LT_train.txt", _rows(tmp_path / "img", "train"))
    _write_list(lists / "Places_LT_test.txt", _rows(tmp_path / "img", "test"))
    data = load_dataset("places-lt", data_dir=tmp_path / "img", lists_dir=lists, crop=32)
    assert data.kind == "image_files" and data.train_counts.tolist() == [4, 2, 6]
    assert data.meta["color_jitter"] == 0.4 and data.meta["eval_split"] == "test"
    # the published counts are checked: 12 lines are not the 62,500 of Places-LT
    monkeypatch.setitem(userdata.PRESETS, "places-lt", dataclasses.replace(userdata.PRESETS["places-lt"],
                                                                          counts={"train": 62500, "test": 6}))
    with pytest.raises(ValueError, match=r"Places_LT_train.txt: 12 images, but the places-lt train split has 62500"):
        load_dataset("places-lt", data_dir=tmp_path / "img", lists_dir=lists)
    with pytest.raises(FileNotFoundError, match=r"Places_LT_val.txt: the places-lt val list is missing.*--lists-dir"):
        load_dataset("places-lt", data_dir=tmp_path / "img", lists_dir=lists, eval_split="val")


def test_inat2018_preset_falls_back_to_the_competition_json(tmp_path, small_presets):
    write_folder(tmp_path / "img", size=(80, 72), ext="jpg")
    rows = {"train": _rows(tmp_path / "img", "train"), "val": _rows(tmp_path / "img", "test")}
    for split, name in (("train", "train2018.json"), ("val", "val2018.json")):
        doc = {"images": [{"id": k, "file_name": rel} for k, (rel, _) in enumerate(rows[split])],
               "annotations": [{"image_id": k, "category_id": lab} for k, (_, lab) in enumerate(rows[split])],
               "categories": [{"id": c} for c in range(3)]}
        (tmp_path / name).write_text(json.dumps(doc))
    data = load_dataset("inat2018", data_dir=tmp_path / "img", lists_dir=tmp_path, crop=32)
    assert data.train_counts.tolist() == [4, 2, 6] and data.meta["mean"] == (0.466, 0.471, 0.380)
    assert data.meta["color_jitter"] == 0.0


def test_preset_recipes_are_the_published_ones():
    inat = resolve_config(TrainConfig("inat2018", "cb_focal", data_dir="/nowhere"))
    assert (inat.model, inat.epochs, inat.batch_size, inat.lr, inat.weight_decay) == ("resnet50", 90, 1024, 1.6, 1e-4)
    assert inat.milestones == (30, 60, 80) and inat.warmup_epochs == 5 and inat.nesterov and not inat.norm_weight_decay
    imnet = resolve_config(TrainConfig("imagenet-lt", "softmax", data_dir="/nowhere"))
    assert (imnet.model, imnet.epochs, imnet.batch_size, imnet.lr, imnet.lr_schedule) == ("resnext50", 90, 512, 0.2,
                                                                                          "cosine")
    assert imnet.switch_epoch == 72  # DRW under cosine: 80 % of the epochs
    places = resolve_config(TrainConfig("places-lt", "softmax", data_dir="/nowhere"))
    assert (places.model, places.epochs, places.backbone_lr_factor, places.milestones) == ("resnet152", 30, 0.01,
                                                                                          (10, 20))
    assert dataset_kind("inat2018") == "image_files"


# -- features ---------------------------------------------------------------------------------------------

def _features(rng, counts, dim=5):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return (rng.normal(size=(len(y), dim)) + y[:, None]).astype(np.float32), y


def test_features_npz_and_npy_train_a_head(tmp_path, capsys):
    rng = np.random.RandomState(0)
    x_train, y_train = _features(rng, [30, 10, 4])
    x_test, y_test = _features(rng, [5, 5, 5])
    np.savez(tmp_path / "f.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = load_dataset("features", features=str(tmp_path / "f.npz"))
    assert data.kind == "tabular" and data.train_counts.tolist() == [30, 10, 4] and data.meta["dim"] == 5
    np.testing.assert_array_equal(data.x_train, x_train)  # used as they are
    np.save(tmp_path / "f.npy", {"x_train": x_train, "y_train": y_train, "x_val": x_test, "y_val": y_test})
    npy = load_dataset("features", features=str(tmp_path / "f.npy"), imbalance=2)
    assert npy.meta["eval_split"] == "val" and npy.train_counts.tolist() == long_tailed_counts(4, 3, 2) == [4, 2, 2]
    rc = main(["train", "--dataset", "features", "--features", str(tmp_path / "f.npz"), "--method", "cb_softmax",
               "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["config"]["model"] == "logistic" and result["config"]["lr_schedule"] == "cosine"
    assert result["train_counts"] == [30, 10, 4] and result["balanced_accuracy"] > 60


# -- the CLI on your own data -------------------------------------------------------------------------------

def test_cli_compare_on_an_image_folder_and_a_list(tmp_path):
    write_folder(tmp_path / "img")
    rc = main(["compare", "--dataset", "folder", "--data-dir", str(tmp_path / "img"), "--methods",
               "softmax,cb_softmax", "--seeds", "1", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
               "--out", str(tmp_path / "cmp"), "--no-progress"])
    assert rc == 0 and "| cb_softmax | 0.9999 |" in (tmp_path / "cmp" / "summary.md").read_text()
    _write_list(tmp_path / "train.txt", _rows(tmp_path / "img", "train"))
    _write_list(tmp_path / "test.txt", _rows(tmp_path / "img", "test"))
    rc = main(["train", "--dataset", "list", "--data-dir", str(tmp_path / "img"), "--train-list",
               str(tmp_path / "train.txt"), "--eval-list", str(tmp_path / "test.txt"), "--method", "softmax",
               "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "run"),
               "--no-progress"])
    assert rc == 0 and json.loads((tmp_path / "run" / "result.json").read_text())["train_counts"] == [4, 2, 6]


# -- bad inputs: one clear error naming the file ------------------------------------------------------------

def _list_fixture(tmp_path):
    write_folder(tmp_path / "img", size=(80, 72), ext="jpg")
    _write_list(tmp_path / "train.txt", _rows(tmp_path / "img", "train"))
    _write_list(tmp_path / "test.txt", _rows(tmp_path / "img", "test"))
    return dict(data_dir=tmp_path / "img", train_list=str(tmp_path / "train.txt"), eval_list=str(tmp_path / "test.txt"))


@pytest.mark.parametrize("case", ["missing_list", "missing_image", "bad_line", "label_not_int", "eval_label_beyond",
                                  "preset_label_out_of_range"])
def test_bad_list_inputs_name_the_file(tmp_path, case, small_presets):
    opts = _list_fixture(tmp_path)
    train_txt, test_txt = Path(opts["train_list"]), Path(opts["eval_list"])
    name = "list"
    if case == "missing_list":
        opts["train_list"] = str(tmp_path / "nope.txt")
        expected, exc = f"{tmp_path / 'nope.txt'}: list file not found", FileNotFoundError
    elif case == "missing_image":
        train_txt.write_text(train_txt.read_text() + "train/cat/999.jpg 2\n")
        expected, exc = f"{tmp_path / 'img' / 'train' / 'cat' / '999.jpg'}: image file not found", FileNotFoundError
    elif case == "bad_line":
        train_txt.write_text("train/cat/000.jpg\n" + train_txt.read_text())
        expected, exc = f"{train_txt}:1: expected 'relative/path label'", ValueError
    elif case == "label_not_int":
        train_txt.write_text(train_txt.read_text() + "train/cat/000.jpg two\n")
        expected, exc = f"{train_txt}:13: the label 'two' is not a whole number", ValueError
    elif case == "eval_label_beyond":
        test_txt.write_text(test_txt.read_text() + "test/cat/000.jpg 3\n")
        # blamed on the evaluation list's line (it was "train.txt: 1 class(es) have no training example")
        expected, exc = f"{test_txt}:7: label 3 is outside the 3 classes 0..2 of the training data ({train_txt})", \
            ValueError
    else:  # preset_label_out_of_range
        name = "places-lt"
        lists = tmp_path / "lists"
        lists.mkdir()
        rows = [line for line in train_txt.read_text().splitlines()]
        rows[-1] = rows[-1].rsplit(" ", 1)[0] + " 365"
        (lists / "Places_LT_train.txt").write_text("\n".join(rows) + "\n")
        (lists / "Places_LT_test.txt").write_text(test_txt.read_text())
        opts = dict(data_dir=tmp_path / "img", lists_dir=lists)
        expected, exc = f"{lists / 'Places_LT_train.txt'}: labels cover 4 classes (largest 365), but places-lt has 3", \
            ValueError
    with pytest.raises(exc) as info:
        load_dataset(name, **opts)
    assert str(info.value).startswith(expected), str(info.value)


def test_unreadable_image_is_one_error_line_in_the_cli(tmp_path, capsys):
    opts = _list_fixture(tmp_path)
    bad = tmp_path / "img" / "train" / "ant" / "001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    for workers in ("0", "2"):
        rc = main(["train", "--dataset", "list", "--data-dir", str(opts["data_dir"]), "--train-list",
                   opts["train_list"], "--eval-list", opts["eval_list"], "--method", "softmax", "--model", "resnet10",
                   "--crop", "32", "--epochs", "1", "--batch-size", "12", "--workers", workers, "--device", "cpu",
                   "--out", str(tmp_path / "run"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_DATA and err.startswith(f"cbbench train: error: {bad}: unreadable image"), err
        assert len(err.splitlines()) == 1
    # small images are decoded when the data load: the same error, before training
    write_folder(tmp_path / "small")
    (tmp_path / "small" / "test" / "bee" / "001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"test/bee/001.png: unreadable image"):
        load_dataset("folder", data_dir=tmp_path / "small")


@pytest.mark.parametrize("arrays, match", [
    (dict(x_train=np.zeros((4, 2)), y_train=np.array([0, 1, 1, 0])), r"missing array\(s\) \['x_test', 'y_test'\]"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.array([0, 1, 1]), x_test=np.zeros((2, 2)), y_test=np.array([0, 1])),
     r"x_train must be \(N, D\) and y_train \(N,\)"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.array([0, 2, 2, 0]), x_test=np.zeros((2, 2)), y_test=np.array([0, 1])),
     r"class\(es\) have no training example, e.g. \[1\]"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.array([0, 1, 1, 0]), x_test=np.zeros((2, 2)), y_test=np.array([0, 5])),
     r"label 5 is outside the 2 classes"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.array([0.0, 1, 1, 0]), x_test=np.zeros((2, 2)), y_test=np.array([0, 1])),
     r"y_train must hold whole-number labels"),
])
def test_bad_features_files_name_the_file(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as info:
        load_dataset("features", features=str(path))
    assert str(path) in str(info.value)


def test_missing_and_broken_folders_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train: no training folder; expected DATA_DIR/train/<class>"):
        load_dataset("folder", data_dir=tmp_path)
    write_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"train: 1 class\(es\) have no training example, e.g. \['dog'\]"):
        load_dataset("folder", data_dir=tmp_path / "d")
    (tmp_path / "f.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"f.npz: unreadable features file"):
        load_dataset("features", features=str(tmp_path / "f.npz"))

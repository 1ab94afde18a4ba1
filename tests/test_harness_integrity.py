"""Runs never mix data, never lose work, and every error a user can cause is one line naming the file, the
line and the fix, with its own exit code (cbbench/harness/errors.py): the data fingerprint checked by
--resume, the output folder's lock, input files checked before the first epoch, options that do not
apply refused, SIGTERM, file permissions and --no-progress."""
import builtins
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbbench.cli import main
from cbbench.harness import compare as compare_mod
from cbbench.harness.datasets import dataset_kind, load_dataset, write_fake_cifar
from cbbench.harness.errors import (EXIT_BUSY, EXIT_DATA, EXIT_OUTPUT, EXIT_RESUME, EXIT_TERMINATED, EXIT_USAGE,
                                    DataError)
from cbbench.harness.inputs import StreamInputs
from cbbench.harness.methods import METHODS
from cbbench.harness.train import train_run

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cat")
QUICK = ["--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture
def counted(monkeypatch):
    """The runs a comparison trains (the real training still happens)."""
    calls = []

    def counting(config, data=None, **kw):
        calls.append((config.method, config.seed))
        return train_run(config, data, **kw)

    monkeypatch.setattr(compare_mod, "train_run", counting)
    return calls


def write_folder(root, size=(16, 16), ext="png", counts=(4, 2, 6), seed=0):
    """root/{train,test}/<class>/NNN.ext, class c with counts[c] training and 2 test images."""
    rng = np.random.RandomState(seed)
    for split, per_class in (("train", counts), ("test", (2, 2, 2))):
        for c, (name, n) in enumerate(zip(CLASSES, per_class)):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.rand(size[1], size[0], 3) * 60 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.{ext}")
    return Path(root)


def list_rows(img, split):
    return [f"{split}/{name}/{f} {c}" for c, name in enumerate(CLASSES)
            for f in sorted(os.listdir(Path(img) / split / name))]


def write_lists(tmp_path, encoding="utf-8", size=(16, 16)):
    """An image folder and its train.txt / test.txt; returns (img, train.txt, test.txt)."""
    img = write_folder(tmp_path / "img", size=size, ext="png")
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("\n".join(list_rows(img, "train")) + "\n", encoding=encoding)
    test.write_text("\n".join(list_rows(img, "test")) + "\n", encoding=encoding)
    return img, train, test


def write_features(path, seed=0, x_train=None, x_test=None, y_train=None):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(3), [30, 10, 4]) if y_train is None else y_train
    y_test = np.repeat(np.arange(3), 5)
    x = rng.normal(size=(len(y), 5)) + y[:, None] if x_train is None else x_train
    xt = rng.normal(size=(len(y_test), 5)) + y_test[:, None] if x_test is None else x_test
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=y_test)
    return str(path)


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. a run's identity includes its data ---------------------------------------------------------------

def test_resume_refuses_runs_trained_on_other_data_with_the_same_counts(tmp_path, counted, capsys):
    emb, out = tmp_path / "emb.npz", tmp_path / "cmp"
    argv = ["compare", "--dataset", "features", "--features", str(emb), "--methods", "softmax", "--seeds", "1",
            *QUICK, "--out", str(out)]
    write_features(emb, seed=0)
    assert main(argv) == 0
    result = out / "runs" / "softmax-seed0" / "result.json"
    first = result.read_text()
    assert json.loads(first)["data_fingerprint"].startswith("sha256:")
    write_features(emb, seed=1)  # the file rewritten in place: the same class counts, other examples
    capsys.readouterr()
    assert main(argv + ["--resume"]) == EXIT_RESUME
    err = one_line(capsys.readouterr().err)
    assert f"{result} was trained on other data (data fingerprint sha256:" in err and "another output folder" in err
    assert result.read_text() == first and len(counted) == 1  # nothing trained, nothing overwritten
    write_features(emb, seed=0)  # the data it was trained on again: kept, not trained again
    assert main(argv + ["--resume"]) == 0 and len(counted) == 1


def test_resume_refuses_another_data_dir_and_keeps_the_same_data_moved(tmp_path, counted, capsys):
    a = write_folder(tmp_path / "a", seed=0)
    b = write_folder(tmp_path / "b", seed=1)  # the same class counts, other pixels
    out = tmp_path / "cmp"

    def compare(data_dir, *extra):
        return main(["compare", "--dataset", "folder", "--data-dir", str(data_dir), "--methods", "softmax",
                     "--seeds", "1", "--batch-size", "4", *QUICK, "--out", str(out), *extra])

    assert compare(a) == 0 and len(counted) == 1
    capsys.readouterr()
    assert compare(b, "--resume") == EXIT_RESUME
    assert "was trained on other data" in one_line(capsys.readouterr().err) and len(counted) == 1
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)  # the data location is not part of a run's identity: the content is
    assert compare(moved, "--resume") == 0 and len(counted) == 1


def test_streamed_files_fingerprint_their_list_sizes_and_times(tmp_path):
    img = write_folder(tmp_path / "img", size=(80, 72), ext="jpg")
    first = load_dataset("folder", data_dir=img, crop=32, progress=False)
    assert first.kind == "image_files" and first.fingerprint.startswith("sha256:")
    copy = tmp_path / "copy"
    shutil.copytree(img, copy, copy_function=shutil.copy2)  # times kept: paths are relative to the root
    assert load_dataset("folder", data_dir=copy, crop=32, progress=False).fingerprint == first.fingerprint
    touched = copy / "test" / "bee" / "001.jpg"
    info = touched.stat()
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 10 ** 9))  # rewritten in place, say
    assert load_dataset("folder", data_dir=copy, crop=32, progress=False).fingerprint != first.fingerprint


# -- 2. one writer per output folder ------------------------------------------------------------------

def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "cmp"
    lock = out / ".cbbench.lock"
    proc = subprocess.Popen([sys.executable, "-m", "cbbench", "compare", "--dataset", "digits-lt", "--methods", "all",
                             "--seeds", "3", "--device", "cpu", "--out", str(out), "--no-progress"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    small = ["--dataset", "digits-lt", "--device", "cpu", "--epochs", "1", "--no-progress", "--out", str(out)]
    try:
        deadline = time.time() + 60
        while not (lock.exists() and lock.read_text()):
            assert proc.poll() is None and time.time() < deadline, "the first compare never locked its folder"
            time.sleep(0.1)
        holder = json.loads(lock.read_text())
        assert (holder["pid"], holder["host"]) == (proc.pid, socket.gethostname())
        for argv in (["compare", "--methods", "softmax", "--seeds", "1"], ["train", "--method", "softmax"]):
            assert main(argv + small) == EXIT_BUSY
            err = one_line(capsys.readouterr().err)
            assert f"{out}: in use by 'cbbench compare" in err and f"pid {proc.pid} on host {socket.gethostname()}" in err
            assert "pass another --out" in err
        proc.kill()  # a crash: no clean-up, the lock file stays behind
        proc.wait()
        assert lock.exists()
        assert main(["compare", "--methods", "softmax", "--seeds", "1"] + small) == 0
        err = capsys.readouterr().err
        assert f"taking over the lock left by 'cbbench compare" in err and f"pid {proc.pid}" in err
        assert not lock.exists()  # released at the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_file_system_without_locks_runs_unlocked_after_a_warning(tmp_path, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "cmp"
    assert main(COMPARE_TINY + ["--out", str(out)]) == 0
    assert f"warning: {out}: cannot lock the folder (No locks available)" in capsys.readouterr().err
    assert (out / "summary.md").exists() and not (out / ".cbbench.lock").exists()


# -- 3. every input file checked before the first epoch ------------------------------------------------

def test_a_truncated_test_image_fails_before_the_first_epoch(tmp_path, monkeypatch, capsys):
    img = write_folder(tmp_path / "img", size=(80, 72), ext="jpg")
    bad = img / "test" / "bee" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    epochs = []
    real = StreamInputs.epoch_batches

    def spy(self, batches, epoch, *args, **kwargs):
        epochs.append(epoch)
        return real(self, batches, epoch, *args, **kwargs)

    monkeypatch.setattr(StreamInputs, "epoch_batches", spy)
    for workers in ("0", "2"):
        rc = main(["train", "--dataset", "folder", "--data-dir", str(img), "--crop", "32", "--model", "resnet10",
                   "--method", "softmax", "--batch-size", "4", "--workers", workers, *QUICK, "--out",
                   str(tmp_path / "run")])
        err = one_line(capsys.readouterr().err)
        assert rc == EXIT_DATA and f"{bad}: unreadable image (OSError: image file is truncated" in err
        assert "before training" in err and epochs == []


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("value, what", [(1e39, "is beyond float32's range"), (np.nan, "is not a finite number")])
def test_feature_values_are_checked_for_float32_in_either_split(tmp_path, capsys, split, value, what):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(44 if split == "train" else 15, 5))
    x[3, 1] = value
    path = write_features(tmp_path / "emb.npz", **{f"x_{split}": x})
    with pytest.raises(DataError) as info:
        load_dataset("features", features=path)
    assert str(info.value).startswith(f"{path} (x_{split}): the value {value!r} at index [3, 1] {what}")
    rc = main(["train", "--dataset", "features", "--features", path, "--method", "softmax", *QUICK, "--out",
               str(tmp_path / "run")])
    assert rc == EXIT_DATA and f"x_{split}" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run" / "result.json").exists()  # not a diverged run, not a wrong error rate


def test_cifar_pixels_outside_uint8_are_refused_not_wrapped(tmp_path):
    import pickle

    folder = write_fake_cifar(tmp_path, per_class=3, test_per_class=1)
    batch = os.path.join(folder, "data_batch_2")
    with open(batch, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    entry[b"data"] = entry[b"data"].astype(np.int64)
    entry[b"data"][1, 7] = 300  # would be 44 after the cast to uint8
    with open(batch, "wb") as fh:
        pickle.dump(entry, fh)
    with pytest.raises(DataError, match=r"data_batch_2 \(b'data'\): the value 300 at index \[1, 7\] is beyond uint8"):
        load_dataset("cifar10-lt", data_dir=tmp_path, imbalance=2)


# -- 4. every error a user can cause: one line, the file, the line, the value, the fix ----------------

@pytest.fixture(scope="module")
def finished_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "cmp"
    assert main(COMPARE_TINY + ["--out", str(out)]) == 0
    return out


COMPARE_TINY = ["compare", "--dataset", "synthetic-lt", "--methods", "softmax", "--seeds", "1", "--batch-size", "256",
                *QUICK]


@pytest.mark.parametrize("content", ["null", "[]", '"done"', "{}", '{"config": 3}'])
def test_a_resumed_result_of_the_wrong_json_type_is_one_error_line(finished_comparison, tmp_path, capsys, content):
    out = tmp_path / "cmp"
    shutil.copytree(finished_comparison, out)
    result = out / "runs" / "softmax-seed0" / "result.json"
    result.write_text(content)
    assert main(COMPARE_TINY + ["--out", str(out), "--resume"]) == EXIT_RESUME
    err = one_line(capsys.readouterr().err)
    assert f"{result}:" in err and "remove that file to train the run again" in err


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: writing under ``folder`` fails with EROFS, as on a read-only mount (the
    permission bits would not stop root, who may run these tests)."""
    def make(folder):
        folder = os.path.abspath(folder)

        def inside(path):
            return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(
                folder + os.sep)

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

        def fake_open(file, mode="r", *args, **kwargs):
            if inside(file) and any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if inside(path) or os.path.abspath(os.fsdecode(path)) == folder:
                refuse(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return make


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(folder)``: a file written under ``folder`` cannot be put in place (ENOSPC)."""
    def make(folder):
        folder = os.path.abspath(folder)
        real_replace = os.replace

        def fake_replace(src, dst, *args, **kwargs):
            if os.path.abspath(os.fsdecode(dst)).startswith(folder + os.sep):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(dst))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", fake_replace)
    return make


WRITERS = {
    "train": ["train", "--dataset", "synthetic-lt", "--method", "softmax", *QUICK],
    "compare": COMPARE_TINY,
    "weights": ["weights", "--counts", "100,10,1"],
    "bench": ["bench", "--skip-speed", "--skip-accuracy", "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(WRITERS))
@pytest.mark.parametrize("failure, reason", [("read_only", "Read-only file system"),
                                             ("disk_full", "No space left on device")])
def test_write_failures_are_one_error_line_for_every_command(tmp_path, capsys, request, command, failure, reason):
    out = tmp_path / "out"
    out.mkdir()
    request.getfixturevalue(failure)(out)
    rc = main(WRITERS[command] + ["--out", str(out)])
    captured = capsys.readouterr()
    err = one_line(captured.err)
    assert rc == EXIT_OUTPUT and err.startswith(f"cbbench {command}: error: ") and str(out) in err and reason in err
    assert "pass another --out" in err
    if command == "train" and failure == "disk_full":  # found after training: the result is not lost
        assert json.loads(captured.out)["method"] == "softmax" and "printed on stdout" in err


def test_a_learning_rate_beyond_float32_is_one_error_line(tmp_path, capsys):
    rc = main(["train", "--dataset", "digits-lt", "--method", "softmax", "--lr", "1e39", *QUICK, "--out",
               str(tmp_path / "run")])
    assert rc == EXIT_USAGE
    assert "lr 1e+39 is beyond float32's range" in one_line(capsys.readouterr().err)


def test_list_files_with_a_byte_order_mark_load(tmp_path):
    img, train, test = write_lists(tmp_path, encoding="utf-8-sig")
    data = load_dataset("list", data_dir=img, train_list=str(train), eval_list=str(test), progress=False)
    assert data.train_counts.tolist() == [4, 2, 6] and data.kind == "image"
    options = {"train_list": str(train), "eval_list": str(test)}
    assert dataset_kind("list", str(img), options) == "image"  # the first path is probed without the mark
    doc = {"images": [{"id": k, "file_name": row.rsplit(" ", 1)[0]} for k, row in enumerate(list_rows(img, "train"))],
           "annotations": [{"image_id": k, "category_id": int(row.rsplit(" ", 1)[1])}
                           for k, row in enumerate(list_rows(img, "train"))]}
    (tmp_path / "train.json").write_text(json.dumps(doc), encoding="utf-8-sig")
    data = load_dataset("list", data_dir=img, train_list=str(tmp_path / "train.json"), eval_list=str(test),
                        progress=False)
    assert data.train_counts.tolist() == [4, 2, 6]


@pytest.mark.parametrize("which", ["train", "eval"])
def test_a_latin1_list_file_is_one_error_naming_the_file_and_line(tmp_path, capsys, which):
    img, train, test = write_lists(tmp_path)
    target = train if which == "train" else test
    lines = target.read_bytes().splitlines()
    lines[2] = "train/cat/café.png 2".encode("latin-1")
    target.write_bytes(b"\n".join(lines) + b"\n")
    rc = main(["train", "--dataset", "list", "--data-dir", str(img), "--train-list", str(train), "--eval-list",
               str(test), "--method", "softmax", "--batch-size", "4", *QUICK, "--out", str(tmp_path / "run")])
    err = one_line(capsys.readouterr().err)
    assert rc == EXIT_DATA and f"{target}:3: byte b'\\xe9' at column 14 is not UTF-8" in err
    assert "save the file as UTF-8" in err


def test_a_label_typo_is_reported_with_its_line(tmp_path, capsys):
    img, train, test = write_lists(tmp_path)
    lines = train.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0] + " 999"  # line 5 of a 3-class list
    train.write_text("\n".join(lines) + "\n")
    argv = ["train", "--dataset", "list", "--data-dir", str(img), "--train-list", str(train), "--eval-list", str(test),
            "--method", "softmax", "--batch-size", "4", *QUICK, "--out", str(tmp_path / "run")]
    assert main(argv) == EXIT_DATA
    err = one_line(capsys.readouterr().err)
    assert f"{train}:5: label 999 makes 1000 classes (the largest label + 1), but the next largest label is 2" in err
    # the same typo in the evaluation list: its own line, not "classes without a training example"
    train.write_text("\n".join(list_rows(img, "train")) + "\n")
    rows = list_rows(img, "test")
    rows[3] = rows[3].rsplit(" ", 1)[0] + " 999"
    test.write_text("\n".join(rows) + "\n")
    assert main(argv) == EXIT_DATA
    assert f"{test}:4: label 999 is outside the 3 classes 0..2 of the training data ({train})" in one_line(
        capsys.readouterr().err)
    y = np.repeat(np.arange(3), [30, 10, 4])
    y[7] = 999
    path = write_features(tmp_path / "emb.npz", y_train=y)
    with pytest.raises(DataError, match=r"emb.npz \(y_train\[7\]\): label 999 makes 1000 classes"):
        load_dataset("features", features=path)


# -- 5. options that do not apply are refused, with the reason ------------------------------------------

@pytest.fixture
def option_data(tmp_path):
    img, train, test = write_lists(tmp_path)
    return {"emb": write_features(tmp_path / "emb.npz"), "img": str(img), "train": str(train), "test": str(test)}


INAPPLICABLE = [
    (["compare", "--dataset", "digits-lt", "--methods", "softmax,focal", "--betas", "0.9,0.99", "--seeds", "1"],
     "--betas does not apply: none of the methods softmax, focal uses beta"),
    (["compare", "--dataset", "digits-lt", "--methods", "cb_focal", "--beta", "0.99", "--betas", "0.9,0.99",
      "--seeds", "1"], "--beta and --betas"),
    (["train", "--dataset", "digits-lt", "--method", "softmax", "--beta", "0.99"],
     "--beta does not apply: the method softmax does not use it"),
    (["train", "--dataset", "digits-lt", "--method", "cb_softmax", "--gamma", "2"],
     "--gamma does not apply: the method cb_softmax does not use it"),
    (["compare", "--dataset", "digits-lt", "--methods", "softmax,cb_focal", "--tau", "2", "--seeds", "1"],
     "--tau does not apply: the methods softmax, cb_focal do not use it"),
    (["train", "--dataset", "digits-lt", "--method", "softmax", "--data-dir", "{img}"],
     "--data-dir does not apply to --dataset digits-lt"),
    (["train", "--dataset", "features", "--features", "{emb}", "--method", "softmax", "--data-dir", "{img}"],
     "--data-dir does not apply to --dataset features"),
    (["train", "--dataset", "features", "--features", "{emb}", "--method", "softmax", "--workers", "2"],
     "--workers does not apply to --dataset features"),
    (["train", "--dataset", "features", "--features", "{emb}", "--method", "softmax", "--images", "stream"],
     "--images does not apply to --dataset features (it applies to folder, list"),
    (["compare", "--dataset", "list", "--data-dir", "{img}", "--train-list", "{train}", "--eval-list", "{test}",
      "--lists-dir", "{img}", "--methods", "softmax", "--seeds", "1"], "--lists-dir does not apply to --dataset list"),
    (["train", "--dataset", "folder", "--data-dir", "{img}", "--method", "softmax", "--workers", "2"],
     "--workers does not apply to --dataset folder: its data are images decoded into memory"),
    (["train", "--dataset", "folder", "--data-dir", "{img}", "--method", "softmax", "--eval-list", "{test}"],
     "--eval-list does not apply to --dataset folder"),
    (["bench", "--skip-speed", "--threads", "2"], "--threads does not apply with --skip-speed"),
    (["bench", "--skip-speed", "--skip-accuracy", "--seeds", "2"], "--seeds does not apply with --skip-accuracy"),
    (["bench", "--skip-speed", "--skip-accuracy", "--quick"], "--quick does not apply with --skip-speed and"),
    (["bench", "--skip-speed", "--data-dir", "{img}"], "--data-dir does not apply to --dataset digits-lt"),
]


@pytest.mark.parametrize("argv, message", INAPPLICABLE, ids=[m.split(" does")[0].split(" and")[0] + f"-{k}"
                                                            for k, (_, m) in enumerate(INAPPLICABLE)])
def test_options_that_do_not_apply_are_refused(tmp_path, capsys, counted, monkeypatch, option_data, argv, message):
    from cbbench.bench import accuracy, speed

    ran = []
    monkeypatch.setattr(speed, "run_speed", lambda *a, **k: ran.append("speed"))
    monkeypatch.setattr(accuracy, "run_accuracy", lambda *a, **k: ran.append("accuracy") or [])
    argv = [a.format(**option_data) for a in argv]
    if argv[0] != "bench":
        argv += QUICK
    rc = main(argv + ["--out", str(tmp_path / "out")])
    err = one_line(capsys.readouterr().err)
    assert rc == EXIT_USAGE and message in err, err
    assert "unexpected keyword" not in err and counted == [] and ran == []
    assert not (tmp_path / "out").exists()


# -- 6. SIGTERM, permissions, --no-progress ------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_keeps_finished_runs_writes_the_summary_and_exits_143(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.Popen([sys.executable, "-m", "cbbench", "compare", "--dataset", "digits-lt", "--methods", "all",
                             "--seeds", "3", "--device", "cpu", "--out", str(out), "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(out.glob("runs/*/result.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no run finished within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_TERMINATED, err
    assert "Traceback" not in err and "terminated (SIGTERM) after" in err and "--resume" in err
    kept = list(out.glob("runs/*/result.json"))
    planned = len(METHODS) * 3  # --methods all --seeds 3 on one dataset
    assert f"after {len(kept)} of {planned} runs" in err
    assert f"Interrupted: {len(kept)} of {planned} runs" in (out / "summary.md").read_text()
    assert not (out / ".cbbench.lock").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert main(COMPARE_TINY + ["--out", str(tmp_path / "cmp")]) == 0
        assert main(WRITERS["train"] + ["--out", str(tmp_path / "run")]) == 0
        assert main(WRITERS["weights"] + ["--out", str(tmp_path / "weights")]) == 0
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".json", ".csv", ".md", ".png"}
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_no_progress_silences_every_bar(tmp_path, capsys):
    memory = write_folder(tmp_path / "small")  # decoded into memory: the decoding bars
    assert main(["compare", "--dataset", "folder", "--data-dir", str(memory), "--methods", "softmax", "--seeds", "1",
                 "--batch-size", "4", *QUICK, "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().err == ""
    streamed = write_folder(tmp_path / "large", size=(80, 72), ext="jpg")  # the checking and epoch bars
    argv = ["train", "--dataset", "folder", "--data-dir", str(streamed), "--crop", "32", "--model", "resnet10",
            "--method", "softmax", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "run")]
    assert main(argv + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main(argv) == 0  # with bars: the images are checked, with a progress bar, before training
    assert "folder: checking 12 training + 6 evaluation images" in capsys.readouterr().err

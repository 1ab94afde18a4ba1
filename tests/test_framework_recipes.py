"""The recipes of docs/frameworks.md, run: plain DDP (torchrun), Lightning (``Trainer(devices=2, strategy="ddp")``)
and Accelerate (torchrun with ``Accelerator(cpu=True)``), 2 gloo processes on the CPU, against one process.

Every run trains a linear model in float64 with a class-balanced focal loss (``sync_normalizer=True``) for 2
epochs on 23 rows -- neither the global batch (10) nor the world size (2) divides it -- and must end with the
parameters, and log the per-step global losses, of one process on the same global batches, to 1e-6 relative
(measured: about 1e-16, float64 rounding). Each framework's default loader is run too: it pads the short end
of the epoch with repeated rows, so its 2-process run differs from one process (by 0.14 to 0.35 relative here,
asserted > 1e-2), and the test checks the padding is the whole difference (the run equals one process on the
padded batches it recorded). A recipe with ``sync_normalizer=False`` must differ as well.

The scripts are tests/recipes/{ddp,lightning,accelerate}_recipe.py (shared data, model and one-process run:
tests/recipes/common.py). Skipped when lightning / accelerate are not installed.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import cbbench

RECIPES = Path(__file__).parent / "recipes"
ROOT = Path(cbbench.__file__).resolve().parents[1]  # the cbbench under test, for the child processes
TOL = 1e-6          # relative: what the recipes promise
DIFFERS = 1e-2      # relative: the least difference the broken set-ups show (measured 7e-2 to 0.35)

_spec = importlib.util.spec_from_file_location("framework_recipes_common", RECIPES / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")


def _env(**extra):
    env = dict(os.environ, **extra, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    return env


def _launch(cmd, out, cwd, timeout=300, **env):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {row["variant"]: row for row in rows}, rows


def _torchrun(script, variants, tmp):
    out = tmp / "runs.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(common.WORLD),
           str(RECIPES / script), str(out), *variants]
    runs, rows = _launch(cmd, out, tmp)
    assert len(rows) == len(variants)  # rank 0 alone writes
    return runs


def _assert_same(run, batches, what):
    """``run`` (a recorded result) ends as one process on ``batches`` does, to TOL relative."""
    params, losses = common.one_process(batches)
    got_params = torch.tensor(run["params"], dtype=torch.float64)
    got_losses = torch.tensor(run["losses"], dtype=torch.float64)
    assert common.relative_difference(got_params, params) <= TOL, what
    assert common.relative_difference(got_losses, losses) <= TOL, what
    torch.testing.assert_close(got_params, params, rtol=TOL, atol=0, msg=what)
    torch.testing.assert_close(got_losses, torch.tensor(losses, dtype=torch.float64), rtol=TOL, atol=0, msg=what)


def _difference(run, batches):
    params, losses = common.one_process(batches)
    return (common.relative_difference(run["params"], params), common.relative_difference(run["losses"], losses))


def _lists(epoch_batches):
    """Each global batch's data set rows, sorted (the runs record them in rank order)."""
    return [sorted(b.tolist()) for batches in epoch_batches for b in batches]


def _recorded(run):
    return [sorted(b) for b in run["batches"]]


def _check_two_processes(run):
    assert run["world_size"] == common.WORLD


# ---------------------------------------------------------------------------------------------- plain DDP
@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    return _torchrun("ddp_recipe.py", ["default", "recipe", "recipe-nosync"], tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
@gloo
def test_ddp_recipe_equals_one_process(ddp_runs):
    run = ddp_runs["recipe"]
    _check_two_processes(run)
    assert run["backend"] == "gloo"
    want = common.global_sampler_batches()
    assert _recorded(run) == _lists(want)  # the same global batches, the 3-row tail unpadded
    _assert_same(run, want, "DDP + GlobalBatchSampler + sync_normalizer")


@pytest.mark.slow
@gloo
def test_ddp_distributed_sampler_pads_and_differs(ddp_runs):
    run = ddp_runs["default"]
    assert _recorded(run) == _lists(common.distributed_sampler_batches(pad=True))  # the tail: 3 rows + 1 repeated
    assert min(_difference(run, common.distributed_sampler_batches(pad=False))) > DIFFERS
    _assert_same(run, common.distributed_sampler_batches(pad=True), "the padding is the whole difference")


@pytest.mark.slow
@gloo
def test_ddp_recipe_without_sync_differs(ddp_runs):
    assert min(_difference(ddp_runs["recipe-nosync"], common.global_sampler_batches())) > DIFFERS


# ---------------------------------------------------------------------------------------------- Lightning
@pytest.fixture(scope="module")
def lightning_runs(tmp_path_factory):
    pytest.importorskip("lightning")
    # torchrun: Lightning sees a torchelastic environment and joins its processes. (Lightning's own launcher,
    # ``python lightning_recipe.py ...``, gives the same parameters but takes twice as long here: ~10 s per fit.)
    return _torchrun("lightning_recipe.py", ["default", "recipe", "recipe-nosync"],
                     tmp_path_factory.mktemp("lightning"))


@pytest.mark.slow
@gloo
def test_lightning_recipe_equals_one_process(lightning_runs):
    run = lightning_runs["recipe"]
    _check_two_processes(run)
    assert run["strategy"] == "DDPStrategy" and run["backend"] == "gloo"
    want = common.global_sampler_batches()
    assert _recorded(run) == _lists(want)
    _assert_same(run, want, "Lightning + GlobalBatchSampler + sync_normalizer (logged loss: sync_dist=True)")


@pytest.mark.slow
@gloo
def test_lightning_default_sampler_shuffles_pads_and_differs(lightning_runs):
    """A DataLoader(shuffle=False) gets DistributedSampler(shuffle=True, seed=0): shuffled, padded."""
    run = lightning_runs["default"]
    assert _recorded(run) == _lists(common.distributed_sampler_batches(pad=True))
    assert min(_difference(run, common.distributed_sampler_batches(pad=False))) > DIFFERS
    assert min(_difference(run, common.sequential_batches())) > DIFFERS  # what the loader asked for
    _assert_same(run, common.distributed_sampler_batches(pad=True), "the padding is the whole difference")


@pytest.mark.slow
@gloo
def test_lightning_recipe_without_sync_differs(lightning_runs):
    assert min(_difference(lightning_runs["recipe-nosync"], common.global_sampler_batches())) > DIFFERS


# --------------------------------------------------------------------------------------------- Accelerate
@pytest.fixture(scope="module")
def accelerate_runs(tmp_path_factory):
    pytest.importorskip("accelerate")
    return _torchrun("accelerate_recipe.py",
                     ["default", "recipe", "recipe-nosync", "recipe-shuffle", "recipe-split", "sampler"],
                     tmp_path_factory.mktemp("accelerate"))


@pytest.mark.slow
@gloo
@pytest.mark.parametrize("variant", ["recipe", "recipe-split"])
def test_accelerate_ignore_padding_equals_one_process(accelerate_runs, variant):
    run = accelerate_runs[variant]
    _check_two_processes(run)
    assert run["distributed_type"] == "DistributedType.MULTI_CPU"
    want = common.sequential_batches()
    assert _recorded(run) == _lists(want)  # the padded rows are ignored: the tail trains on its 3 rows
    _assert_same(run, want, f"Accelerate {variant}: prepared DataLoader, padded rows ignored")


@pytest.mark.slow
@gloo
def test_accelerate_ignore_padding_shuffled(accelerate_runs):
    """shuffle=True: Accelerate's order, every row once per epoch, the padding ignored."""
    run = accelerate_runs["recipe-shuffle"]
    batches = common.by_epoch(run["batches"])
    for epoch in batches:
        assert [len(b) for b in epoch] == [10, 10, 3]
        assert sorted(torch.cat(epoch).tolist()) == list(range(common.N))
    assert batches[0][0].tolist() != list(range(10))  # shuffled
    _assert_same(run, batches, "Accelerate shuffle=True, padded rows ignored")


@pytest.mark.slow
@gloo
def test_accelerate_global_batch_sampler_equals_one_process(accelerate_runs):
    run = accelerate_runs["sampler"]
    want = common.global_sampler_batches()
    assert _recorded(run) == _lists(want)
    _assert_same(run, want, "Accelerate, DataLoader not prepared, GlobalBatchSampler")


@pytest.mark.slow
@gloo
def test_accelerate_default_pads_and_differs(accelerate_runs):
    run = accelerate_runs["default"]
    padded = [[torch.arange(0, 10), torch.arange(10, 20), torch.tensor([20, 21, 22, 0, 1, 2, 3, 4, 5, 6])]]
    assert _recorded(run) == _lists(padded * common.EPOCHS)  # the tail completed with the data set's first rows
    assert min(_difference(run, common.sequential_batches())) > DIFFERS
    _assert_same(run, padded * common.EPOCHS, "the padding is the whole difference")


@pytest.mark.slow
@gloo
def test_accelerate_recipe_without_sync_differs(accelerate_runs):
    assert min(_difference(accelerate_runs["recipe-nosync"], common.sequential_batches())) > DIFFERS


@pytest.mark.slow
@gloo
def test_accelerate_launch_cpu_runs_one_process(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` starts one process (accelerate 1.x: the simple launcher
    without mpirun), which then trains alone -- hence torchrun in the recipe."""
    pytest.importorskip("accelerate")
    out = tmp_path / "runs.jsonl"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(RECIPES / "accelerate_recipe.py"), str(out), "recipe"]
    # HF_HOME: no accelerate config file of the user's applies
    runs, rows = _launch(cmd, out, tmp_path, timeout=200, HF_HOME=str(tmp_path / "hf"))
    run = runs["recipe"]
    assert len(rows) == 1 and run["world_size"] == 1 and run["distributed_type"] == "DistributedType.NO"
    _assert_same(run, common.sequential_batches(), "one process: batches of 10, ignore_padding does nothing")


def test_multi_hot_padded_rows_drop_out_with_zero_weight_and_target():
    """docs/frameworks.md: multi-hot targets have no ignore_index; a padded row drops out of the loss and of
    every divisor when its sample weight and its target row are 0 (a zero sample weight alone leaves its
    positives in the "mean" divisor)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, generator=g, dtype=torch.float64)
    t = (torch.rand(7, 4, generator=g) < 0.4).double()
    pad = torch.arange(7) >= 4
    weight = (~pad).double()
    for loss_type in ("sigmoid", "focal"):
        for reduction in ("mean", "weighted_mean", "sum"):
            criterion = cbbench.ClassBalancedLoss([10, 5, 3, 1], beta=0.99, loss_type=loss_type, reduction=reduction)
            want = criterion(z[~pad], t[~pad])
            torch.testing.assert_close(criterion(z, t * weight[:, None], sample_weight=weight), want,
                                       rtol=1e-12, atol=0)
            if reduction == "mean":
                assert not torch.allclose(criterion(z, t, sample_weight=weight), want)

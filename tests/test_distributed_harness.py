"""The harness under data parallelism, with 2 gloo ranks: sampler streams, evaluation and training equal
one process.

* every sampling schedule: the 2 ranks' shares of each epoch's batches, put together, are the batches of
  one process (set_epoch, uneven shares, a short last batch);
* evaluation on unpadded, uneven shards of the test split gives exactly the metrics of one process;
* every method trained on digits-LT for 4 epochs (through the DRW / DRS switches) on 2 ranks ends with
  the parameters of one process on the same global batches (batch 45: uneven shares 23 / 22 every step),
  to float tolerance;
* the same training runs with the loss normaliser not synchronised, and with every rank training on rank
  0's share (duplicated sampling), do not: the check can fail.
"""
import contextlib
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cbbench import distributed
from cbbench.harness import ddp
from cbbench.harness import methods as harness_methods
from cbbench.harness.compare import check_writable
from cbbench.harness.output import folder_lock, main_folder_lock
from cbbench.harness import samplers as harness_samplers
from cbbench.harness.datasets import load_dataset
from cbbench.harness.methods import METHODS
from cbbench.harness.metrics import evaluate, evaluate_distributed
from cbbench.harness.samplers import SAMPLINGS, GlobalBatchSampler, SamplingSchedule
from cbbench.harness.train import TrainConfig, train_run

pytestmark = pytest.mark.slow  # 2 spawned processes: ~25 s on 2 busy cores, mostly imports

WORLD = 2
COUNTS = [40, 17, 9, 3, 2]
TARGETS = np.repeat(np.arange(len(COUNTS)), COUNTS)  # 71 examples: batches of 7 end with a 1-row batch
EPOCHS, BATCH = 4, 45
# max |param difference| / max |param| beyond which two runs differ. Measured: 2 ranks vs 1 process
# <= 5e-7 (float32 rounding); without the normaliser sync 4e-4 to 4e-2, with duplicated sampling >= 2e-2
TOLERANCE = 1e-5
# the broken setups train one method per normaliser and sampler kind: sigmoid/focal positives, softmax
# count, weighted_mean after the DRW switch, LDAM's margins, the weighted sampler and the DRS switch
SABOTAGED_METHODS = ("cb_focal", "cb_softmax", "cb_drw", "ldam_drw", "class_balanced_sampling", "drs")


def _schedule(kind):
    return SamplingSchedule(kind, TARGETS, len(COUNTS), total_epochs=4, beta=0.99, switch_epoch=2)


def _config(method):
    return TrainConfig("digits-lt", method, seed=1, epochs=EPOCHS, batch_size=BATCH, device="cpu")


def _sampler_failures():
    failures = []
    for kind in SAMPLINGS:
        sampler = GlobalBatchSampler(_schedule(kind), 7, seed=3)  # world and rank from the process group
        single = GlobalBatchSampler(_schedule(kind), 7, seed=3, num_replicas=1, rank=0)
        for epoch in (2, 0, 3):
            sampler.set_epoch(epoch)
            single.set_epoch(epoch)
            mine = list(sampler)
            shares = [None] * WORLD
            dist.all_gather_object(shares, mine)
            want = list(single)
            if [len(s) for s in shares] != [len(want)] * WORLD:
                failures.append(f"{kind} epoch {epoch}: batch counts {[len(s) for s in shares]} vs {len(want)}")
                continue
            for b, batch in enumerate(want):
                joined = [None] * len(batch)
                for r in range(WORLD):
                    joined[r::WORLD] = shares[r][b]
                if joined != batch:
                    failures.append(f"{kind} epoch {epoch} batch {b}: {joined} vs {batch}")
    return failures


def _evaluation_failures():
    g = np.random.default_rng(0)
    y_true = g.integers(0, 4, 23)  # class 4 absent from the test split; 23 rows: shards of 11 and 12
    y_pred = np.where(g.random(23) < 0.6, y_true, g.integers(0, 5, 23))
    rows = distributed.even_shard(len(y_true))
    got = evaluate_distributed(y_true[rows.start:rows.stop], y_pred[rows.start:rows.stop], COUNTS)
    empty_shard = evaluate_distributed(y_true[:0] if distributed.rank() else y_true, y_pred[:0] if distributed.rank()
                                       else y_pred, COUNTS)
    want = evaluate(y_true, y_pred, COUNTS)
    return [f"{name}: {g} vs {want}" for name, g in (("shards", got), ("one empty shard", empty_shard)) if g != want]


def _rank0_checks(out_dir):
    """What rank 0 alone checks reaches every rank: its value, or its error (no rank left waiting)."""
    blocker = os.path.join(out_dir, "a-file")
    if dist.get_rank() == 0:
        open(blocker, "w").close()
    dist.barrier()
    try:
        ddp.on_main(check_writable, os.path.join(blocker, "out"))
        error = None
    except ValueError as exc:
        error = f"{type(exc).__name__}: {exc}"  # the class crosses ranks too: it sets the exit code
    # a folder another process holds (here rank 1): rank 0 finds it busy, and every rank stops with that
    locked = os.path.join(out_dir, "locked")
    with folder_lock(locked) if dist.get_rank() == 1 else contextlib.nullcontext():
        dist.barrier()
        try:
            with main_folder_lock(locked):
                busy = None
        except ValueError as exc:
            busy = f"{type(exc).__name__}: {exc}"
        dist.barrier()
    return {"value": ddp.on_main(dist.get_rank), "error": error, "busy": busy}


@contextlib.contextmanager
def _sabotaged(kind):
    """The harness with one thing broken: ``no_sync``, each rank divides by its own normaliser (as a plain
    DDP script would); ``duplicate``, every rank trains on rank 0's share (unsharded sampling)."""
    if kind == "no_sync":
        owner, name = harness_methods.Method, "__init__"
        init = owner.__init__

        def broken(self, *args, **kwargs):
            init(self, *args, **dict(kwargs, sync_normalizer=False))
    elif kind == "duplicate":
        owner, name = harness_samplers.GlobalBatchSampler, "share"

        def broken(self, batch):
            return distributed.batch_share(batch, 0, self.num_replicas)
    else:
        yield
        return
    original = getattr(owner, name)
    setattr(owner, name, broken)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _train_all(data, methods):
    params, results = {}, {}
    for method in methods:
        result, model = train_run(_config(method), data, progress=False, return_model=True)
        params[method] = {k: v.tolist() for k, v in model.state_dict().items()}
        results[method] = {k: result[k] for k in ("per_class_accuracy", "train_loss", "status")}
        results[method]["world_size"] = result["config"]["world_size"]
    return {"params": params, "results": results}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    report = {"sampler_failures": _sampler_failures(), "evaluation_failures": _evaluation_failures(),
              "rank0": _rank0_checks(out_dir)}
    data = load_dataset("digits-lt")
    for kind in ("none", "no_sync", "duplicate"):
        with _sabotaged(kind):
            report[kind] = _train_all(data, METHODS if kind == "none" else SABOTAGED_METHODS)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(report, fh)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """Every method trained by one process: (parameters, result) per method."""
    torch.set_num_threads(1)
    data = load_dataset("digits-lt")
    out = {}
    for method in METHODS:
        result, model = train_run(_config(method), data, progress=False, return_model=True)
        out[method] = ({k: v.clone() for k, v in model.state_dict().items()}, result)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ddp"))


def relative_difference(params, reference) -> float:
    """max |a - b| over all parameters, relative to the largest reference parameter."""
    diff = max(float((torch.tensor(params[k]) - v).abs().max()) for k, v in reference.items())
    return diff / max(float(v.abs().max()) for v in reference.values())


def differing_methods(trained, single):
    """method -> relative parameter difference, for the methods ``trained`` does not match one process in."""
    diffs = {m: relative_difference(params, single[m][0]) for m, params in trained["params"].items()}
    return {m: d for m, d in diffs.items() if d > TOLERANCE}


def test_sampler_streams_are_identical_across_world_sizes(two_ranks):
    for report in two_ranks:
        assert report["sampler_failures"] == []


def test_sharded_evaluation_equals_one_process(two_ranks):
    for report in two_ranks:
        assert report["evaluation_failures"] == []


def test_rank0_checks_reach_every_rank(two_ranks):
    for report in two_ranks:
        assert report["rank0"]["value"] == 0
        assert report["rank0"]["error"].startswith("OutputError: ")
        assert "a-file" in report["rank0"]["error"] and "is not writable" in report["rank0"]["error"]
        assert report["rank0"]["busy"].startswith("FolderBusy: ") and "pid" in report["rank0"]["busy"]


def test_two_ranks_train_the_model_of_one_process(two_ranks, single):
    for report in two_ranks:
        assert set(report["none"]["params"]) == set(METHODS)
        assert differing_methods(report["none"], single) == {}
        for method in METHODS:
            got, (_, want) = report["none"]["results"][method], single[method]
            assert got["world_size"] == WORLD and got["status"] == "ok"
            np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
    # the ranks hold one model
    assert two_ranks[0]["none"]["params"] == two_ranks[1]["none"]["params"]


@pytest.mark.parametrize("sabotage", ["no_sync", "duplicate"])
def test_the_training_check_catches_a_broken_setup(two_ranks, single, sabotage):
    """Without the synchronised normaliser, or with duplicated sampling, 2 ranks train another model."""
    differing = differing_methods(two_ranks[0][sabotage], single)
    assert set(differing) == set(SABOTAGED_METHODS), sorted(set(SABOTAGED_METHODS) - set(differing))


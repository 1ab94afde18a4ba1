"""Losses under data parallelism: 2 gloo ranks on uneven shards give DDP the single-process gradient.

Each rank computes its loss on its shard of one global batch, backpropagates, and the logits'
gradients are averaged over the ranks as DDP averages parameter gradients (the logits stand in for
the parameters: DDP's averaging is linear, so this is the same check). With ``sync_normalizer=True``
the averaged gradient must equal the gradient of one process on the whole batch, for every loss,
reduction, option and backend; without it, it must not (the check can fail).
"""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cbbench
from cbbench import distributed
from cbbench import functional as F

WORLD = 2
# uneven shards of a 10-row batch; rank 0 has one ignored row of its 3, rank 1 two of its 7
SHARDS = [slice(0, 3), slice(3, 10)]
IGNORED = [1, 4, 8]


def _batch(c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(10, c, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (10,), generator=g)
    y[IGNORED] = -100
    multi_hot = (torch.rand(10, c, generator=g) < 0.25).double()
    w = (torch.rand(c, generator=g) + 0.3).float().double()
    sample_weight = (torch.rand(10, generator=g) + 0.2).float().double()
    sample_weight[2] = 0.0  # a zero-weight row counts in no divisor
    return z, y, multi_hot, w, sample_weight


def _calls():
    off = torch.linspace(-1, 1, 6, dtype=torch.float64).float().double()
    return {
        "softmax": lambda z, y, t, w, **kw: F.softmax_cross_entropy(z, y, w, label_smoothing=0.1, logit_offset=off,
                                                                     **kw),
        "sigmoid": lambda z, y, t, w, **kw: F.sigmoid_cross_entropy(z, y, w, **kw),
        "focal": lambda z, y, t, w, **kw: F.sigmoid_focal_loss(z, y, w, gamma=2.0, alpha=0.25, **kw),
        "multi-hot focal": lambda z, y, t, w, **kw: F.sigmoid_focal_loss(z, t, w, gamma=1.0, **kw),
        "softmax focal": lambda z, y, t, w, **kw: F.softmax_focal_loss(z, y, w, gamma=2.0, alpha=0.5, **kw),
        # per-sample weights travel with their rows; the divisors sum them across ranks
        "weighted softmax": lambda z, y, t, w, s=None, **kw: F.softmax_cross_entropy(z, y, w, sample_weight=s, **kw),
        "weighted softmax focal": lambda z, y, t, w, s=None, **kw: F.softmax_focal_loss(z, y, w, gamma=1.5,
                                                                                        sample_weight=s, **kw),
        "weighted multi-hot focal": lambda z, y, t, w, s=None, **kw: F.sigmoid_focal_loss(z, t, w, gamma=2.0,
                                                                                          sample_weight=s, **kw),
        "module": lambda z, y, t, w, **kw: cbbench.ClassBalancedLoss(
            [50, 30, 20, 9, 5, 1], beta=0.99, loss_type="focal", reduction=kw["reduction"],
            backend=kw["backend"], sync_normalizer=kw.get("sync_normalizer", False))(z, y),
    }


def _scalar(loss):
    if loss.dim() == 0:
        return loss
    return (loss * torch.linspace(0.5, 1.5, 10, dtype=loss.dtype)[: loss.numel()]).sum()


def _worker(rank, port, out_dir, sync):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    failures, checked = [], 0
    z, y, t, w, s = _batch()
    shard = SHARDS[rank]
    for (name, call), reduction, backend in [(c, r, b) for c in _calls().items()
                                             for r in ("mean", "weighted_mean", "sum", "none")
                                             for b in ("reference", "cpu")]:
        zr = z[shard].clone().requires_grad_(True)
        extra = {"s": s[shard]} if name.startswith("weighted") else {}
        loss = call(zr, y[shard], t[shard], w, reduction=reduction, backend=backend, sync_normalizer=sync, **extra)
        if reduction == "none":  # the global rows' weights of _scalar, this rank's share
            loss = (loss * torch.linspace(0.5, 1.5, 10, dtype=loss.dtype)[shard]).sum()
        loss.backward()
        grad = torch.zeros_like(z)
        grad[shard] = zr.grad
        dist.all_reduce(grad)
        grad /= WORLD  # DDP's averaging
        value = loss.detach().clone()
        dist.all_reduce(value)
        value /= WORLD  # the mean of the ranks' values: the global loss
        zf = z.clone().requires_grad_(True)
        extra = {"s": s} if name.startswith("weighted") else {}
        want = _scalar(call(zf, y, t, w, reduction=reduction, backend=backend, **extra))
        want.backward()
        checked += 1
        if not torch.allclose(grad, zf.grad, rtol=1e-10, atol=1e-12):
            failures.append(f"{name} {reduction} {backend}: gradient")
        elif not torch.allclose(value, want.detach(), rtol=1e-10, atol=1e-12):
            failures.append(f"{name} {reduction} {backend}: value")
    # class counts: broadcast from rank 0, agreement checked
    counts = distributed.broadcast_counts([5, 3, 1] if rank == 0 else None)
    agree_error = None
    try:
        distributed.check_counts_agree([5, 3, 1 + rank])
    except ValueError as exc:
        agree_error = str(exc)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"failures": failures, "checked": checked, "counts": counts.tolist(),
                   "agree_error": agree_error, "agree_same": distributed.check_counts_agree([5, 3, 1]).tolist()}, fh)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, sync):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), sync), nprocs=WORLD, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("synced"), True)


def test_two_ranks_give_the_single_process_gradient(synced):
    for result in synced:
        assert result["checked"] == len(_calls()) * 4 * 2
        assert result["failures"] == []


def test_class_counts_are_broadcast_and_checked(synced):
    for result in synced:
        assert result["counts"] == [5.0, 3.0, 1.0]
        assert result["agree_same"] == [5.0, 3.0, 1.0]
        assert result["agree_error"] is not None and "class counts differ across ranks at class index [2]" in \
            result["agree_error"]


def test_without_the_sync_the_check_fails(tmp_path):
    """The same check with sync_normalizer=False: uneven shards make every normalised reduction wrong."""
    failures = _run(tmp_path, False)[0]["failures"]
    for name in _calls():
        for reduction in ("mean", "weighted_mean", "sum", "none"):
            for backend in ("reference", "cpu"):
                assert any(f.startswith(f"{name} {reduction} {backend}:") for f in failures), \
                    (name, reduction, backend)


def test_single_process_sync_is_the_plain_loss():
    z, y, t, w, s = _batch()
    for name, call in _calls().items():
        extra = {"s": s} if name.startswith("weighted") else {}
        for reduction in ("mean", "weighted_mean", "sum", "none"):
            torch.testing.assert_close(call(z, y, t, w, reduction=reduction, backend="cpu", sync_normalizer=True,
                                            **extra),
                                       call(z, y, t, w, reduction=reduction, backend="cpu", **extra))

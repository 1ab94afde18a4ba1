"""The measured effective number under torch.distributed (2 gloo ranks): measured once, on rank ``src``,
and broadcast; the other ranks' arrays are not read (they may pass None); an error on rank ``src`` reaches
every rank with its message."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cbbench.effective import effective_number_from_features
from cbbench.harness.datasets import make_prototypes_lt

pytestmark = pytest.mark.slow  # 2 spawned processes


def _data(seed):
    d = make_prototypes_lt(num_classes=4, n_max=200, prototypes=[3, 20, 7, 40], views=True, data_seed=seed,
                           test_per_class=1)
    return d.x_train, d.y_train, d.x_train_aug


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    report = {}
    x, y, aug = _data(seed=rank)  # each rank holds other data: only rank src's count
    m = effective_number_from_features(x, y, 4, features_aug=aug)
    report["src0"] = m.effective_number.tolist()
    none = effective_number_from_features(*(_data(0)[:2] if rank == 0 else (None, None)), 4,
                                          features_aug=_data(0)[2] if rank == 0 else None)
    report["others_pass_none"] = none.effective_number.tolist()
    report["src1"] = effective_number_from_features(x, y, 4, features_aug=aug, src=1).effective_number.tolist()
    try:
        effective_number_from_features(x, y + (5 if rank == 0 else 0), 4)
        report["error"] = None
    except ValueError as exc:
        report["error"] = str(exc)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(report, fh)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_measured_once_and_broadcast(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    want = {seed: effective_number_from_features(*_data(seed)[:2], 4, features_aug=_data(seed)[2])
            .effective_number.tolist() for seed in (0, 1)}
    assert want[0] != want[1]  # the ranks' own data would give other numbers
    for report in reports:
        assert report["src0"] == want[0] and report["others_pass_none"] == want[0]
        assert report["src1"] == want[1]
        assert report["error"] is not None and "labels must be in [0, 4)" in report["error"]

"""What the framework recipe scripts (``accelerate_recipe.py``, ``lightning_recipe.py``) and
``tests/test_framework_recipes.py`` share: a tiny long-tailed data set whose size neither the global batch
nor the world size divides, a linear model, the class-balanced loss, and the one-process run they are
compared with. float64 throughout, so one process and two agree to rounding (~1e-15), far inside 1e-6."""
import json

import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

import cbbench

N, FEATURES, CLASSES = 23, 5, 4      # 23: neither the global batch (10) nor the world size (2) divides it
WORLD = 2
GLOBAL_BATCH = 10                    # the batch one process trains on; 5 rows per rank with 2 ranks
PER_RANK = GLOBAL_BATCH // WORLD
EPOCHS = 2                           # 3 steps per epoch, the third on the 3-row tail (23 = 10 + 10 + 3)
LR = 0.5
SEED = 0


def data():
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(N, FEATURES, generator=g, dtype=torch.float64)
    y = torch.tensor([0] * 11 + [1] * 6 + [2] * 4 + [3] * 2)[torch.randperm(N, generator=g)]
    return x, y


def dataset():
    return TensorDataset(*data())


def train_counts():
    """Class counts of the whole training set (every rank computes the same)."""
    return torch.bincount(data()[1], minlength=CLASSES)


def make_net():
    g = torch.Generator().manual_seed(SEED + 1)
    net = torch.nn.Linear(FEATURES, CLASSES).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(CLASSES, FEATURES, generator=g, dtype=torch.float64) * 0.5)
        net.bias.copy_(torch.randn(CLASSES, generator=g, dtype=torch.float64) * 0.5)
    return net


def make_loss(sync_normalizer=True):
    return cbbench.ClassBalancedLoss(train_counts(), beta=0.99, loss_type="focal", gamma=1.0,
                                     sync_normalizer=sync_normalizer)


def flat_params(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()


def one_process(epoch_batches):
    """One process, plain PyTorch: SGD on the given global batches (``epoch_batches[e]``: the index
    tensors of epoch e). Returns the final parameters (flat) and the loss of every step."""
    x, y = data()
    net, criterion = make_net(), make_loss(sync_normalizer=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    losses = []
    for batches in epoch_batches:
        for idx in batches:
            loss = criterion(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return flat_params(net), losses


def sequential_batches():
    """The global batches of ``DataLoader(dataset, batch_size=GLOBAL_BATCH, shuffle=False)``, every epoch."""
    return [[torch.arange(i, min(i + GLOBAL_BATCH, N)) for i in range(0, N, GLOBAL_BATCH)]] * EPOCHS


def global_sampler_batches():
    """The global batches of ``GlobalBatchSampler(SamplingSchedule("instance", ...), GLOBAL_BATCH, seed=SEED)``
    on one rank, epoch by epoch (the same on any number of ranks)."""
    from cbbench.harness.samplers import GlobalBatchSampler, SamplingSchedule
    sampler = GlobalBatchSampler(SamplingSchedule("instance", data()[1], CLASSES, EPOCHS), GLOBAL_BATCH,
                                 seed=SEED, num_replicas=1, rank=0)
    out = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        out.append(sampler.global_batches())
    return out


def distributed_sampler_batches(pad=True, seed=0):
    """The global batches of ``DistributedSampler(dataset, shuffle=True, seed=seed)`` on WORLD ranks with a
    DataLoader of PER_RANK rows per rank (what Lightning sets up under DDP): epoch e's permutation
    ``randperm(N)`` seeded ``seed + e`` (the same on every rank), padded (``pad``) with its first rows to a
    multiple of WORLD; rank r takes rows r, r + WORLD, ... of it, so global batch k is rows
    ``[k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH)`` of the padded permutation."""
    out = []
    for epoch in range(EPOCHS):
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(N, generator=g)
        if pad:
            order = torch.cat([order, order[:(-N) % WORLD]])
        out.append([order[i:i + GLOBAL_BATCH] for i in range(0, len(order), GLOBAL_BATCH)])
    return out


def global_rows(x, y, ignore_index=-100):
    """Bookkeeping for the test, not part of a recipe: the data set rows that this step trains on, over all
    ranks in rank order (this rank's rows of ``x`` whose target is not ``ignore_index``, all-gathered)."""
    x_all = data()[0]
    mine = [int(torch.nonzero((x_all == row).all(1))[0]) for row in x.detach().cpu()[y.cpu() != ignore_index]]
    if not (dist.is_available() and dist.is_initialized()):
        return mine
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [i for rows in every for i in rows]


def by_epoch(steps):
    """Split a run's per-step global batches into epochs (every variant has the same steps per epoch)."""
    per_epoch = len(steps) // EPOCHS
    return [[torch.tensor(s, dtype=torch.int64) for s in steps[e * per_epoch:(e + 1) * per_epoch]]
            for e in range(EPOCHS)]


def relative_difference(a, b):
    """||a - b|| / ||b|| of two flat parameter vectors (or lists of losses)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def write_result(path, name, net, losses, batches, **extra):
    """Append one variant's result (rank 0) to a JSON-lines file: final parameters, the global loss and the
    global batch (data set rows, :func:`global_rows`) of every step."""
    with open(path, "a") as fh:
        fh.write(json.dumps({"variant": name, "params": flat_params(net).tolist(), "losses": losses,
                             "batches": batches, **extra}) + "\n")

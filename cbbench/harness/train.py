"""Train one method on one long-tailed dataset and evaluate it.

Defaults come from the dataset's recipe (:mod:`cbbench.harness.recipes`; CIFAR: Cui et al. 2019,
ResNet-32, 200 epochs, lr 0.1 with a 5-epoch warm-up, x0.01 at 160 and x0.0001 at 180). Changing
``epochs`` scales warm-up, decays and the DRW/DRS switch epoch (the first decay, or 80 % of the epochs
under a cosine schedule) proportionally.

Tabular data and small images live on the training device as tensors: mini-batches are gathered by
index from the epoch's sampler, and crop/flip run batched on the device; large images stream from disk
through DataLoader workers (:mod:`cbbench.harness.inputs`). On CUDA (``accel="auto"``) the whole
training step — forward, the fused loss, backward and a fused SGD step with a device-resident learning
rate — is captured once into a CUDA graph and replayed (static batch shape, so the last partial batch
of each epoch is dropped there); ``accel="compile"`` runs ``torch.compile(model)`` in an eager loop.

Data parallel (inside an initialised process group of W > 1 ranks, e.g. under ``torchrun``): the model is
wrapped in ``DistributedDataParallel``, every rank draws the same global batches of ``batch_size`` (the
*global* batch size) and trains on its share of each (:class:`~cbbench.harness.samplers.GlobalBatchSampler`),
the losses all-reduce their normaliser (``sync_normalizer=True``), and the test split is evaluated in
unpadded shards whose per-class tallies are summed: 1 rank and W ranks train on the same batches and
end with the same model, up to floating-point rounding (a test checks it). The class counts are checked to
agree across ranks. Eager steps only (``accel="auto"`` means ``"none"`` there; CUDA graphs are not
captured under DDP).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import distributed
from ..provenance import device_name, git_commit
from .datasets import DATASETS, LongTailedData, check_dataset_options, dataset_kind, load_dataset
from .ddp import is_main, on_main, rank_device
from .errors import UsageError
from .fingerprint import data_fingerprint
from . import measured
from .inputs import make_inputs, random_crop_flip
from .methods import Method, get_spec
from .metrics import evaluate_distributed, no_metrics
from .models import IMAGE_MODELS, MODELS, TABULAR_MODELS, build_model, init_sigmoid_bias, load_backbone_weights
from .recipes import RECIPES, recipe_for
from .samplers import GlobalBatchSampler, SamplingSchedule

__all__ = ["TrainConfig", "RECIPES", "ACCELS", "LR_SCHEDULES", "resolve_config", "check_run", "check_inputs",
           "lr_at_epoch", "random_crop_flip", "train_run"]

ACCELS = ("auto", "none", "compile", "cuda_graph")
LR_SCHEDULES = ("step", "cosine")
# every real-valued option ends up in a float32 tensor (learning rates, loss parameters): beyond this it
# would be inf, and the run would fail in torch or diverge, instead of being refused
FLOAT32_MAX = float(np.finfo(np.float32).max)

@dataclass
class TrainConfig:
    """One training run. ``None`` fields take the dataset's recipe value (see :data:`RECIPES`)."""

    dataset: str
    method: str
    seed: int = 0
    imbalance: Optional[float] = None
    data_dir: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    warmup_epochs: Optional[int] = None
    milestones: Optional[tuple] = None
    lr_factors: Optional[tuple] = None
    lr_schedule: Optional[str] = None  # "step" (warm-up, then lr_factors from milestones) or "cosine"
    nesterov: Optional[bool] = None
    norm_weight_decay: Optional[bool] = None  # False: no weight decay on normalisation weights and biases
    backbone_lr_factor: Optional[float] = None  # lr of every parameter but the classifier's, relative to lr
    switch_epoch: Optional[int] = None  # DRW/DRS switch; None: the first milestone (cosine: 80 % of epochs)
    init_weights: Optional[str] = None  # a state dict for the backbone (e.g. torchvision ImageNet weights)
    model: Optional[str] = None
    hidden: int = 128
    augment: Optional[bool] = None
    beta: float = 0.9999
    gamma: float = 1.0
    tau: float = 1.0
    # measured_* methods (cbbench/harness/measured.py): where E_c comes from ("checkpoint", "input", a .npz
    # feature file or a TorchScript encoder), or E_c itself, and options of the estimator
    effective_source: Optional[str] = None
    effective_numbers: Optional[tuple] = None
    effective_options: Optional[dict] = None
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    device: str = "cpu"
    accel: str = "auto"
    backend: str = "auto"
    eval_batch_size: int = 1000
    threads: Optional[int] = None
    workers: Optional[int] = None  # DataLoader workers decoding image files (default: the CPUs, at most 8)
    dataset_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("milestones", "lr_factors", "effective_numbers"):
            d[name] = None if getattr(self, name) is None else list(getattr(self, name))
        return d


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _real(value, name, low=-math.inf, high=math.inf, high_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(value) or value < low or (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    if abs(value) > FLOAT32_MAX:
        raise UsageError(f"{name} {value!r} is beyond float32's range (+-{FLOAT32_MAX:.4g}), the type training "
                         "computes in; pass a smaller value")
    return value


def resolve_device(device) -> torch.device:
    """``device`` as a ``torch.device``, checked; ``auto``: CUDA when available. With several ranks, CUDA
    without an index is the rank's GPU, ``cuda:LOCAL_RANK`` (:func:`cbbench.harness.ddp.rank_device`)."""
    if device in (None, "auto"):
        return rank_device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"bad device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda[:i] or auto, got {device!r}")
    return rank_device(dev)


def _flag(value, name) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def resolve_device_elsewhere(device) -> torch.device:
    """``device`` checked for a run that trains in another process, on a machine chosen later (a Ray task,
    :mod:`cbbench.harness.executors`): ``cpu`` or ``cuda`` without an index (the GPU is the one the task is
    given), not looked for here; the process that trains resolves the config again, on its own devices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"bad device {device!r}: {exc}") from exc
    if dev.type not in ("cpu", "cuda") or dev.index is not None:
        raise UsageError(f"device {device!r}: a run on another machine trains on 'cpu' or on 'cuda', the GPU it is "
                         "given there (no index)")
    return dev


def resolve_config(config: TrainConfig, *, local_device: bool = True) -> TrainConfig:
    """Fill recipe defaults, scale the schedule to ``epochs`` and validate every field. ``local_device=False``:
    the run trains elsewhere (:func:`resolve_device_elsewhere`), so its device is not looked for here."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    get_spec(config.method)
    if not isinstance(config.dataset_options, dict):
        raise ValueError(f"dataset_options must be a dict, got {config.dataset_options!r}")
    check_dataset_options(config.dataset, config.data_dir, config.dataset_options)
    kind = dataset_kind(config.dataset, config.data_dir, config.dataset_options)
    recipe = recipe_for(config.dataset, kind)
    c = dataclasses.replace(config, dataset_options=dict(config.dataset_options))
    epochs = recipe["epochs"] if c.epochs is None else _positive_int(c.epochs, "epochs")
    scale = epochs / recipe["epochs"]
    if c.warmup_epochs is None:
        c.warmup_epochs = int(round(recipe["warmup_epochs"] * scale))
    if c.milestones is None:
        scaled = []
        for m in recipe["milestones"]:
            # strictly increasing after scaling, so short runs keep every lr phase they can
            scaled.append(max(int(m * scale), scaled[-1] + 1 if scaled else 1))
        if epochs >= 2 and scaled:  # both phases of DRW / DRS happen, whatever the epoch count
            scaled[0] = min(scaled[0], epochs - 1)
        c.milestones = tuple(scaled)
    c.epochs = epochs
    c.milestones = tuple(int(m) for m in c.milestones)
    if list(c.milestones) != sorted(set(c.milestones)) or (c.milestones and c.milestones[0] < 0):
        raise ValueError(f"milestones must be strictly increasing epochs >= 0, got {c.milestones!r}")
    if c.lr_factors is None:
        c.lr_factors = recipe["lr_factors"]
    c.lr_factors = tuple(_real(f, "lr_factors", 0.0) for f in c.lr_factors)
    if len(c.lr_factors) != len(c.milestones):
        raise ValueError(f"lr_factors {c.lr_factors!r} need one factor per milestone {c.milestones!r}")
    for name in ("lr_schedule", "nesterov", "norm_weight_decay", "backbone_lr_factor"):
        if getattr(c, name) is None:
            setattr(c, name, recipe[name])
    if c.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {c.lr_schedule!r}")
    if c.lr_schedule == "step" and not c.milestones:
        raise ValueError("a step schedule needs milestones (the first is also the DRW/DRS switch)")
    if c.switch_epoch is None:
        c.switch_epoch = c.milestones[0] if c.milestones else min(int(0.8 * epochs), max(epochs - 1, 0))
    c.switch_epoch = int(_real(c.switch_epoch, "switch_epoch", 0))
    measured.check_config(c, get_spec(c.method).weighting == "measured")
    if get_spec(c.method).switches and c.switch_epoch >= epochs:
        raise ValueError(f"method {c.method!r} switches at epoch {c.switch_epoch} (the first milestone), which a run "
                         f"of {epochs} epochs never reaches: pass more epochs or an earlier switch")
    if isinstance(c.warmup_epochs, bool) or int(c.warmup_epochs) != c.warmup_epochs or c.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be a whole number >= 0, got {c.warmup_epochs!r}")
    for name in ("batch_size", "lr", "weight_decay", "model", "augment"):
        if getattr(c, name) is None:
            setattr(c, name, recipe[name])
    c.batch_size = _positive_int(c.batch_size, "batch_size")
    c.eval_batch_size = _positive_int(c.eval_batch_size, "eval_batch_size")
    c.hidden = _positive_int(c.hidden, "hidden")
    if c.threads is not None:
        c.threads = _positive_int(c.threads, "threads")
    if c.workers is not None:
        if isinstance(c.workers, bool) or not isinstance(c.workers, (int, np.integer)) or c.workers < 0:
            raise ValueError(f"workers must be a whole number >= 0, got {c.workers!r}")
        if kind != "image_files":
            held = "feature vectors" if kind == "tabular" else "images decoded into memory before training"
            raise UsageError(f"--workers does not apply to --dataset {c.dataset}: its data are {held}, and --workers "
                             "sets the processes that decode streamed image files; remove it")
        c.workers = int(c.workers)
    c.seed = int(_real(c.seed, "seed", 0, 2 ** 63 - 1))
    c.lr = _real(c.lr, "lr", 0.0)
    c.momentum = _real(c.momentum, "momentum", 0.0, 1.0, high_open=True)
    c.weight_decay = _real(c.weight_decay, "weight_decay", 0.0)
    c.backbone_lr_factor = _real(c.backbone_lr_factor, "backbone_lr_factor", 0.0)
    c.nesterov, c.norm_weight_decay = _flag(c.nesterov, "nesterov"), _flag(c.norm_weight_decay, "norm_weight_decay")
    if c.nesterov and c.momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    # the largest rate a parameter group gets (lr_at_epoch times its group's factor) is a float32 tensor too
    peak = c.lr * max([1.0, *c.lr_factors]) * max(1.0, c.backbone_lr_factor)
    if peak > FLOAT32_MAX:
        raise UsageError(f"lr {c.lr!r}: the learning rate reaches {peak:.4g} (times lr_factors {list(c.lr_factors)} "
                         f"and backbone_lr_factor {c.backbone_lr_factor:g}), beyond float32's range "
                         f"(+-{FLOAT32_MAX:.4g}), the type the optimizer holds it in; pass a smaller --lr")
    c.beta = _real(c.beta, "beta", 0.0, 1.0, high_open=True)
    c.gamma = _real(c.gamma, "gamma", 0.0)
    c.tau = _real(c.tau, "tau")
    c.ldam_max_margin = _real(c.ldam_max_margin, "ldam_max_margin", 0.0)
    c.ldam_scale = _real(c.ldam_scale, "ldam_scale", 0.0)
    if c.ldam_scale == 0:
        raise ValueError("ldam_scale must be > 0")
    if c.imbalance is not None:
        c.imbalance = _real(c.imbalance, "imbalance", 1.0)
    _check_model(c.model, kind, c.dataset)
    if c.augment and kind == "tabular":
        raise ValueError("augment (crop + flip) applies to image datasets only")
    if c.init_weights is not None:
        c.init_weights = os.fspath(c.init_weights)
        if c.model not in IMAGE_MODELS or c.model == "resnet32":
            raise ValueError(f"init_weights loads an ImageNet ResNet backbone; model {c.model!r} has none")
        if not os.path.isfile(c.init_weights):
            raise FileNotFoundError(f"{c.init_weights}: backbone weights file not found")
    if c.accel not in ACCELS:
        raise ValueError(f"accel must be one of {ACCELS}, got {c.accel!r}")
    device = resolve_device(c.device) if local_device else resolve_device_elsewhere(c.device)
    c.device = str(device)
    parallel = distributed.world_size() > 1
    if c.accel == "auto":
        c.accel = "cuda_graph" if device.type == "cuda" and not parallel else "none"
    if c.accel == "cuda_graph" and device.type != "cuda":
        raise ValueError("accel='cuda_graph' needs a CUDA device")
    if c.accel == "cuda_graph" and parallel:
        raise ValueError("accel='cuda_graph' is not available under data parallelism (the steps run eagerly there); "
                         "use accel 'auto', 'none' or 'compile'")
    if parallel and c.batch_size < distributed.world_size():
        raise ValueError(f"batch_size {c.batch_size} is the global batch, shared by {distributed.world_size()} ranks: "
                         "it must be at least the number of ranks")
    return c


def _check_model(model: str, kind: str, dataset: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    fits = TABULAR_MODELS if kind == "tabular" else IMAGE_MODELS
    if model not in fits:
        raise ValueError(f"model {model!r} does not fit dataset {dataset!r} ({kind} data: {' or '.join(fits)})")


def lr_at_epoch(config: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: linear warm-up ``lr * (epoch+1) / warmup`` over the first
    ``warmup_epochs``; then, for the step schedule, ``lr`` times ``lr_factors[k]`` from ``milestones[k]``
    on (the paper: x0.01 from 160, x0.0001 from 180), for the cosine schedule
    ``lr * (1 + cos(pi * t / T)) / 2`` with t the epochs since the warm-up of T (PyTorch's
    ``CosineAnnealingLR`` to 0, stepped per epoch, as the decoupling code)."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    if config.lr_schedule == "cosine":
        span = max(1, config.epochs - config.warmup_epochs)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))
    factor = 1.0
    for milestone, f in zip(config.milestones, config.lr_factors):
        if epoch >= milestone:
            factor = f
    return config.lr * factor


def _optimizer(model, config: TrainConfig, no_decay, device):
    """SGD with parameter groups by weight decay (``no_decay`` parameters, plus normalisation weights and
    biases when ``norm_weight_decay`` is False, get none) and by learning rate (every parameter but the
    classifier's at ``backbone_lr_factor`` times the rate). Each group's learning rate is a tensor on the
    device, changed in place each epoch (``group["lr_scale"]`` times :func:`lr_at_epoch`): a captured
    step reads it. The fused kernel is one launch on CUDA; on the CPU it is far slower than foreach for
    small models."""
    no_decay_ids = {id(p) for p in no_decay}
    if not config.norm_weight_decay:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
        no_decay_ids.update(id(p) for name, p in model.named_parameters() if name.endswith(".bias"))
    classifier_ids = {id(p) for p in model.classifier.parameters()}
    groups = {}
    for p in model.parameters():
        decays = id(p) not in no_decay_ids
        scale = 1.0 if id(p) in classifier_ids else config.backbone_lr_factor
        groups.setdefault((decays, scale), []).append(p)
    param_groups = [{"params": params, "weight_decay": config.weight_decay if decays else 0.0, "lr_scale": scale,
                     "lr": torch.tensor(lr_at_epoch(config, 0) * scale, device=device)}
                    for (decays, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
    return torch.optim.SGD(param_groups, lr=torch.tensor(0.0), momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov,
                           fused=device.type == "cuda" or None)


class _GraphStep:
    """The whole training step (forward, loss, backward, SGD) captured in one CUDA graph."""

    def __init__(self, model, loss_fn, optimizer, warmup_batches):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.static_x = torch.empty_like(warmup_batches[0][0])
        self.static_y = torch.empty_like(warmup_batches[0][1])
        # a few real steps on a side stream allocate the momentum buffers and pick the cuDNN algorithms
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for x, y in warmup_batches:
                self.static_x.copy_(x)
                self.static_y.copy_(y)
                self.optimizer.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._step()

    def _step(self):
        loss = self.loss_fn(self.model(self.static_x), self.static_y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, x, y):
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss


def _eager_step(model, loss_fn, optimizer):
    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def check_run(config: TrainConfig, data: LongTailedData, *, local_device: bool = True) -> TrainConfig:
    """Everything :func:`train_run` would reject about ``config`` on ``data``, checked without training:
    the resolved config (returned), the data matching it, and the method bound to its class counts.
    ``local_device``: as :func:`resolve_config`'s."""
    config = resolve_config(config, local_device=local_device)
    if data.name != config.dataset:
        raise ValueError(f"data is {data.name!r} but config.dataset is {config.dataset!r}")
    spec = get_spec(config.method)
    _check_model(config.model, data.kind, config.dataset)
    Method(config.method, data.train_counts, beta=config.beta, gamma=config.gamma, tau=config.tau,
           ldam_max_margin=config.ldam_max_margin, ldam_scale=config.ldam_scale, switch_epoch=config.switch_epoch,
           backend=config.backend)
    if spec.weighting == "measured":
        measured.check_data(config, data)
    if spec.sigmoid_family and data.num_classes < 2:
        raise ValueError(f"method {config.method!r}: sigmoid/focal losses need at least 2 classes, got "
                         f"{data.num_classes}")
    if config.accel == "cuda_graph" and len(data.y_train) < config.batch_size:
        raise ValueError(f"accel='cuda_graph' drops partial batches; batch_size {config.batch_size} exceeds the "
                         f"{len(data.y_train)} training examples")
    return config


def check_inputs(data: LongTailedData, config: TrainConfig, progress: bool = True) -> None:
    """Every input file the run reads, checked before its first epoch: streamed image files are decoded
    once (:func:`cbbench.harness.userdata.check_files`, by rank 0 with ``config.workers`` processes; its
    verdict reaches every rank), once per loaded data; the other kinds were read whole when loaded."""
    if data.kind != "image_files" or data.files_checked:
        return
    from .images import default_workers
    from .userdata import check_files

    workers = default_workers() if config.workers is None else config.workers
    on_main(check_files, data, workers=workers, progress=progress and is_main())
    data.files_checked = True


def train_run(config: TrainConfig, data: Optional[LongTailedData] = None, *, progress: bool = True,
              return_model: bool = False):
    """Train ``config.method`` on ``config.dataset`` and return the result dict (the keys of
    ``result.json``: top1_error, balanced_accuracy, per_class_accuracy, many_shot, medium_shot, few_shot,
    train_counts, method, dataset, config, plus seed, train_time_s, train_loss (the mean training loss of
    each epoch), status, diverged_epoch, epochs_completed and data_fingerprint, the identity of the data
    (:mod:`cbbench.harness.fingerprint`)). Streamed image files are all decoded once before the first
    epoch (:func:`check_inputs`). ``data`` skips loading; ``return_model``:
    return ``(result, model)``, the trained model (on its device, outside any DDP wrapper).

    Inside an initialised process group of several ranks, every rank calls it with the same arguments
    and trains its share of each global batch (see the module docstring); every rank returns the same
    metrics, and only rank 0 shows progress bars.

    A run whose training loss becomes non-finite stops at the end of that epoch with ``status``
    ``"diverged"`` and every metric ``None``; otherwise ``status`` is ``"ok"``.

    ``config.threads`` sets torch's intra-op CPU threads for the run (restored afterwards); by default
    tabular models on the CPU use 1 thread: their matrices are tiny, and on shared cores OpenMP's
    spinning threads made them up to 8x slower."""
    config = resolve_config(config)
    if data is None:
        data = load_dataset(config.dataset, data_dir=config.data_dir, imbalance=config.imbalance,
                            progress=progress and is_main(), **config.dataset_options)
    config = check_run(config, data)
    check_inputs(data, config, progress)
    threads = config.threads
    if threads is None and data.kind == "tabular" and torch.device(config.device).type == "cpu":
        threads = 1
    previous = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(config.device)
    try:
        # streams and graphs are created on the current device: make it the training device
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            result, model = _train(config, data, threads or previous[0], progress and is_main())
        return (result, model) if return_model else result
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _train(config: TrainConfig, data: LongTailedData, threads: int, progress: bool) -> dict:
    device = torch.device(config.device)
    counts = data.train_counts
    switch_epoch = config.switch_epoch
    spec = get_spec(config.method)
    world, rank = distributed.world_size(), distributed.rank()
    parallel = world > 1
    if parallel:  # weights come from the whole training set's counts, the same on every rank
        distributed.check_counts_agree(counts)
    torch.manual_seed(config.seed)
    method = Method(config.method, counts, beta=config.beta, gamma=config.gamma, tau=config.tau,
                    ldam_max_margin=config.ldam_max_margin, ldam_scale=config.ldam_scale,
                    switch_epoch=switch_epoch, backend=config.backend, sync_normalizer=parallel,
                    measured_deferred=measured.is_deferred(config))
    schedule = SamplingSchedule(spec.sampling, data.y_train, data.num_classes, config.epochs, beta=config.beta,
                                switch_epoch=switch_epoch)
    in_features = int(np.prod(data.x_train.shape[1:]))
    model = build_model(config.model, in_features, data.num_classes, hidden=config.hidden,
                        normed=spec.normed_classifier)
    if config.init_weights is not None:
        load_backbone_weights(model, config.init_weights)
    no_decay = [init_sigmoid_bias(model, data.num_classes)] if spec.sigmoid_family else []
    inputs = make_inputs(data, config, device)
    streaming = data.kind == "image_files"
    model.to(device)
    if inputs.channels_last:
        model.to(memory_format=torch.channels_last)
    method.loss.to(device)
    measured_weights = measured.MeasuredWeights(config, data, counts) if spec.weighting == "measured" else None
    if measured_weights is not None:
        measured_weights.start(method, device)
    optimizer = _optimizer(model, config, no_decay, device)

    use_graph = config.accel == "cuda_graph"
    sampler = GlobalBatchSampler(schedule, config.batch_size, seed=config.seed, num_replicas=world, rank=rank,
                                 drop_last=use_graph)
    aug_gen = torch.Generator(device=device).manual_seed(config.seed)
    accel_used = config.accel
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_model = model
    if parallel:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.accel == "compile":
        train_model = torch.compile(train_model)
    step = None if use_graph else _eager_step(train_model, method.loss, optimizer)
    n_train = len(data.y_train)

    diverged_epoch, epochs_done, epoch_losses = None, 0, []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(config.epochs), desc=f"{config.dataset} {config.method} seed {config.seed}",
               disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"].fill_(lr_at_epoch(config, epoch) * group["lr_scale"])
        method.start_epoch(epoch)
        if measured_weights is not None:
            measured_weights.at_epoch(epoch, method, model, inputs, device)
        sampler.set_epoch(epoch)
        global_batches = sampler.global_batches()
        shares = [sampler.share(b) for b in global_batches]
        batches = list(torch.cat(shares).to(device, non_blocking=True).split([len(b) for b in shares]))
        loss_sum = torch.zeros((), device=device)
        first = 0
        batch_iter = inputs.epoch_batches(batches, epoch, aug_gen, progress=progress and streaming,
                                          shares=[(rank, world, len(b)) for b in global_batches] if parallel else None)
        if step is None:  # CUDA graph: the first batches are real warm-up steps, then the step is captured
            warm = list(itertools.islice(batch_iter, 3))
            try:
                step = _GraphStep(model, method.loss, optimizer, warm)
            except RuntimeError as exc:
                # train on rather than lose the run; the result records the fallback
                warnings.warn(f"CUDA graph capture failed ({exc}); training eagerly instead", RuntimeWarning)
                accel_used = f"none (cuda_graph capture failed: {str(exc)[:200]})"
                torch.cuda.synchronize(device)
                step = _eager_step(model, method.loss, optimizer)
            first = len(warm)
        for x, y in batch_iter:
            loss_sum += step(x, y)
        # one host read per epoch (the steps themselves never synchronise): a NaN or inf anywhere in the
        # epoch propagates into the sum, and every later step would only compute on NaN weights. Under
        # DDP a rank's synchronised loss is its share times W (cbbench/distributed.py): the mean over the
        # ranks is the global batch's loss, and every rank sees the same value, so all stop together.
        if parallel:
            loss_sum = distributed.all_reduce_sum(loss_sum) / world
        epoch_loss = loss_sum.item() / max(1, len(batches) - first)
        epoch_losses.append(epoch_loss if math.isfinite(epoch_loss) else None)
        epochs_done = epoch + 1
        if not math.isfinite(epoch_loss):
            diverged_epoch = epoch
            bar.close()
            break
        if progress:
            bar.set_postfix(loss=f"{epoch_loss:.4f}", lr=f"{lr_at_epoch(config, epoch):.2g}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - start

    if diverged_epoch is None:
        # the unwrapped model: ranks evaluate different numbers of batches, so no collective per forward.
        # DDP hands rank 0's buffers (BatchNorm statistics) to the others before each forward only, and each
        # rank's last training forward updated its own: make every rank evaluate rank 0's model.
        if parallel:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        model.eval()
        rows = distributed.even_shard(len(data.y_test)) if parallel else range(len(data.y_test))
        with torch.no_grad():
            preds = [method.predict(model(x)).cpu() for x in inputs.test_batches(config.eval_batch_size, rows)]
        preds = torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)
        result = evaluate_distributed(np.asarray(data.y_test)[rows.start:rows.stop], preds, counts)
    else:  # the weights are NaN: no prediction means anything, so no metric is reported
        warnings.warn(f"{config.dataset} {config.method} seed {config.seed}: training loss became non-finite in "
                      f"epoch {diverged_epoch} (lr {lr_at_epoch(config, diverged_epoch):g}); run marked diverged",
                      RuntimeWarning)
        result = no_metrics(counts)
    result.update({"status": "ok" if diverged_epoch is None else "diverged", "diverged_epoch": diverged_epoch,
                   "epochs_completed": epochs_done, "train_loss": epoch_losses})

    cfg = config.to_dict()
    cfg.update({"commit": git_commit(), "n_train": int(n_train),
                "test_counts": [int(c) for c in data.test_counts], "imbalance": data.imbalance,
                "data": data.meta, "drop_last": use_graph, "accel_used": accel_used, "threads_used": threads,
                "torch": torch.__version__, "cuda": torch.version.cuda, "device_name": device_name(device),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "loss_backend": _loss_backend(config.backend, device), "world_size": world,
                "dist_backend": dist.get_backend() if parallel else None})
    result.update({"method": config.method, "dataset": config.dataset, "config": cfg, "seed": config.seed,
                   "beta": config.beta if spec.uses_beta else None, "train_time_s": train_time,
                   "data_fingerprint": data_fingerprint(data)})
    if measured_weights is not None:  # how E_c was obtained (None: the run diverged before the switch)
        result["effective"] = measured_weights.provenance
    return result, model


def _loss_backend(backend: str, device: torch.device) -> str:
    from .. import ops

    return ops.resolve_backend(backend, device)

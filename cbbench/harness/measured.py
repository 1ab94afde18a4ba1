"""Measured class weights in the harness: the ``measured_*`` methods weight class c by ``1 / E_c``, with
``E_c`` measured from features (:func:`cbbench.effective_number_from_features`) or given.

Where the features come from (``TrainConfig.effective_source``):

* ``"checkpoint"`` (default): the run's own model after a warm-up. At ``switch_epoch`` (the epoch DRW
  switches its weights at) the penultimate features of every training example are taken (the input of
  the model's ``classifier``, in eval mode), with a second view of each example: two random crop + flip
  augmentations of an image, or the dataset's ``x_train_aug`` for tabular data (prototypes-LT with
  ``views``, digits-LT with ``views``); without a second view the radius comes from nearest neighbours.
  Until then the loss is unweighted, and it divides by the sum of the applied weights (``weighted_mean``),
  as DRW does;
* ``"input"``: the training inputs themselves (flattened), and their second view where the dataset has one;
* a ``.npz`` file: ``features`` (N, D), optionally ``features_aug`` (N, D) and ``labels`` (N,) (checked
  against the training labels), one row per training example in the dataset's order;
* a TorchScript file (``torch.jit.save``): an encoder applied to the training inputs (and their views).

With a static source (all but ``"checkpoint"``), or ``TrainConfig.effective_numbers`` (E_c given, e.g. an
oracle), the weights are set before the first step and the loss keeps the paper's ``mean``.
``TrainConfig.effective_options`` go to the estimator (``radius``, ``quantile``, ``normalize``, ``order``,
...). The run's result records how E_c was obtained under ``"effective"``. Under data parallelism rank 0
extracts the features and measures; the others receive its result (cbbench/effective.py).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import torch

from .. import distributed
from ..effective import effective_number_from_features
from ..weights import as_real_vector, class_weights
from .errors import DataError, DataFileNotFound

__all__ = ["SOURCES", "OPTION_NAMES", "is_deferred", "check_config", "check_data", "MeasuredWeights"]

SOURCES = ("checkpoint", "input")
OPTION_NAMES = ("radius", "quantile", "normalize", "order", "seed", "block_elements", "density_reference")
_VIEW_SEED = 0xE7F  # the crop/flip generator of the views, apart from the training stream


def is_deferred(config) -> bool:
    """Whether a measured method waits for its own checkpoint (and so switches at ``switch_epoch``)."""
    return config.effective_numbers is None and (config.effective_source or "checkpoint") == "checkpoint"


def check_config(config, measured: bool) -> None:
    """The ``effective_*`` fields of a config, checked (ValueError / FileNotFoundError); normalises them
    in place (``effective_numbers`` to a tuple of floats, ``effective_source`` to a path string). Other
    methods ignore them (as they ignore beta: one comparison grid passes the same options to all)."""
    if not measured:
        return
    if config.effective_numbers is not None:
        if config.effective_source is not None:
            raise ValueError("pass effective_numbers (E_c given) or effective_source (E_c measured), not both")
        values = as_real_vector(config.effective_numbers, "effective_numbers")
        if (values <= 0).any():
            raise ValueError(f"effective_numbers must be > 0, got {values.tolist()[:20]}")
        config.effective_numbers = tuple(float(v) for v in values.tolist())
    source = config.effective_source
    if source is not None:
        source = os.fspath(source)
        if source not in SOURCES:
            if not os.path.isfile(source):
                raise DataFileNotFound(f"effective_source {source!r}: neither {' nor '.join(SOURCES)} nor an existing "
                                       "file (.npz features or a TorchScript encoder)")
        config.effective_source = source
    options = config.effective_options
    if options is not None:
        if not isinstance(options, dict):
            raise ValueError(f"effective_options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"effective_options: unknown option(s) {unknown}; valid: {', '.join(OPTION_NAMES)}")
    if is_deferred(config) and config.switch_epoch >= config.epochs:
        raise ValueError(f"method {config.method!r} measures its weights from its own checkpoint at epoch "
                         f"{config.switch_epoch} (switch_epoch), which a run of {config.epochs} epochs never reaches")


def check_data(config, data) -> None:
    """What the data must give the measured weights of ``config`` (called before training)."""
    if config.effective_numbers is not None and len(config.effective_numbers) != data.num_classes:
        raise ValueError(f"effective_numbers has {len(config.effective_numbers)} values for {data.num_classes} "
                         "classes")
    source = config.effective_source or "checkpoint"
    if config.effective_numbers is None and source in SOURCES and data.kind == "image_files":
        raise ValueError(f"effective_source {source!r} needs the training images in memory; {data.name} streams "
                         "them from disk: pass a .npz feature file (features computed elsewhere) instead")
    if source.endswith(".npz"):
        _file_features(source, data)


def _file_features(path: str, data):
    try:
        with np.load(path) as arrays:
            found = dict(arrays)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as .npz ({exc})") from None
    if "features" not in found:
        raise DataError(f"{path}: no array 'features' (N, D); found {sorted(found)}")
    n = len(data.y_train)
    for key in ("features", "features_aug"):
        if key in found and (found[key].ndim != 2 or len(found[key]) != n):
            raise DataError(f"{path}: {key} must be ({n}, D), one row per training example, got {found[key].shape}")
    if "labels" in found and not np.array_equal(np.asarray(found["labels"]), data.y_train):
        raise DataError(f"{path}: labels differ from the training labels: the rows are not the training examples "
                        "in the dataset's order")
    return found["features"], found.get("features_aug")


class _Penultimate:
    """The input of ``model.classifier`` for every batch, while active."""

    def __init__(self, model):
        self.model, self.captured = model, []
        self.handle = model.classifier.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.captured.append(torch.flatten(args[0], 1).detach())

    def close(self):
        self.handle.remove()


def _embed(forward, batches, device) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for x in batches:
            out.append(forward(x.to(device)))
    return torch.cat(out) if out else torch.empty(0)


class MeasuredWeights:
    """The measured weights of one run: set before training (static source, or given E_c) or at
    ``switch_epoch`` from the run's own model (``"checkpoint"``)."""

    def __init__(self, config, data, counts):
        self.config, self.data = config, data
        self.counts = torch.as_tensor(counts, dtype=torch.float64)
        self.source = config.effective_source or "checkpoint"
        self.deferred = is_deferred(config)
        self.options = dict(config.effective_options or {})
        self.provenance: Optional[dict] = None

    def start(self, method, device) -> None:
        """Before the first step: the weights of a static source or given E_c (no model needed)."""
        if self.deferred:
            return
        if self.config.effective_numbers is not None:
            effective = torch.tensor(self.config.effective_numbers, dtype=torch.float64)
            self._apply(method, effective, {"source": "given", "effective_number": list(self.config.effective_numbers)})
            return
        self._measure(method, lambda: self._static_features(device), device, epoch=None)

    def at_epoch(self, epoch: int, method, model, inputs, device) -> None:
        """At ``switch_epoch``: the features of the run's own model, then the weights."""
        if self.deferred and epoch == self.config.switch_epoch:
            self._measure(method, lambda: self._model_features(model, inputs, device), device, epoch=epoch)

    def _measure(self, method, features, device, epoch) -> None:
        start = time.perf_counter()
        x, aug = features() if distributed.rank() == 0 else (None, None)  # the other ranks receive rank 0's result
        if "radius" in self.options:  # a given radius needs no second view
            aug = None
        labels = None if x is None else torch.as_tensor(self.data.y_train)
        m = effective_number_from_features(x, labels, self.data.num_classes, features_aug=aug, device=device,
                                           **self.options)
        info = {"source": self.source, "epoch": epoch, "views": m.radius_source.startswith("quantile") and
                "views" in m.radius_source, "feature_dim": None if x is None else int(x.shape[1]),
                "seconds_with_features": round(time.perf_counter() - start, 3), **m.to_dict()}
        self._apply(method, m.effective_number, info)

    def _apply(self, method, effective, info) -> None:
        weight = class_weights(self.counts, "measured", effective=effective)
        method.loss.weight.copy_(weight.to(method.loss.weight.device))
        self.provenance = dict(info, weights=[round(float(w), 6) for w in weight.tolist()])

    def _views(self):
        aug = self.data.x_train_aug
        return None if aug is None else torch.as_tensor(aug)

    def _static_features(self, device):
        data = self.data
        if self.source == "input":
            x = torch.as_tensor(data.x_train).flatten(1).float()
            aug = self._views()
            return x, None if aug is None else aug.flatten(1).float()
        if self.source.endswith(".npz"):
            x, aug = _file_features(self.source, data)
            return torch.as_tensor(x), None if aug is None else torch.as_tensor(aug)
        try:
            encoder = torch.jit.load(self.source, map_location=device)
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"{self.source}: not a .npz feature file and not a TorchScript encoder "
                             f"({str(exc).splitlines()[0][:200]})") from None
        encoder.eval()
        return self._views_through(lambda x: torch.flatten(encoder(x), 1), device)

    def _model_features(self, model, inputs, device):
        was_training = model.training
        model.eval()
        hook = _Penultimate(model)

        def forward(x):
            hook.captured.clear()
            model(x)
            return hook.captured[-1]

        try:
            return self._views_through(forward, device, inputs)
        finally:
            hook.close()
            model.train(was_training)

    def _views_through(self, forward, device, inputs=None):
        """``forward`` over the training examples and over their second view (crop + flip for images)."""
        from .inputs import _Normaliser, random_crop_flip

        data, size = self.data, self.config.eval_batch_size
        prepare = inputs.prepare if inputs is not None else _Normaliser(data, device)
        x_all = torch.as_tensor(data.x_train)
        chunks = [x_all[s:s + size] for s in range(0, len(x_all), size)]
        if data.kind == "image":
            gen = torch.Generator(device=device).manual_seed(self.config.seed * 7919 + _VIEW_SEED)

            def view(x):
                return prepare(random_crop_flip(x.to(device), gen))

            first = _embed(lambda x: forward(view(x)), chunks, device)
            second = _embed(lambda x: forward(view(x)), chunks, device)
            return first, second
        x = _embed(lambda x: forward(prepare(x.float())), chunks, device)
        aug = self._views()
        if aug is None:
            return x, None
        return x, _embed(lambda v: forward(prepare(v.float())), [aug[s:s + size] for s in range(0, len(aug), size)],
                         device)

"""Public loss functions: argument checking, then the reference or a fused kernel.

``backend="auto"`` runs the CUDA kernel on CUDA tensors and the Cython kernel on CPU tensors when they
were built, and the pure-PyTorch reference otherwise; the environment variable ``CBBENCH_BACKEND``
overrides ``"auto"``. All backends compute the same numbers (see :mod:`cbbench.reference` for the
formulas and the conventions of each reduction).

Which path a call takes:

* the reference (:mod:`cbbench.reference`) for ``backend="reference"``, under ``torch.func``
  transforms, and when an input other than the logits requires grad (a learnable ``weight``, soft
  targets, offsets or margins): the kernels give the gradient of the logits only;
* the fused op otherwise (:mod:`cbbench.ops`): eager autograd, or the registered op under
  ``torch.compile``; plain 2-D CPU inputs first try the C++ fast path (``cbbench._C``), which runs
  the same kernels and backward in one call and declines everything else.

Target range: the CPU kernels reject a target outside ``[0, C)`` that is not ``ignore_index`` with a
``ValueError`` (as does the reference path for CPU tensors). For CUDA tensors the check would
synchronise the device, so the kernels make that row's loss NaN instead of reading out of bounds.
"""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch

from . import distributed, ops, reference
from .shapes import REDUCTIONS, rows, sample_shape

Tensor = torch.Tensor

__all__ = ["softmax_cross_entropy", "sigmoid_cross_entropy", "sigmoid_focal_loss"]


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_logits(logits, fn: str) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{fn}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{fn}: logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"{fn}: logits must have shape (N, C) or (N, C, d1, ...), got {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"{fn}: logits must have at least one class (C >= 1), got shape {tuple(logits.shape)}")


def _check_same_device(t: Tensor, name: str, logits: Tensor, fn: str) -> None:
    if t.device != logits.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but logits are on {logits.device}")


def _check_class_indices(logits: Tensor, target, fn: str) -> Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    dtype = target.dtype
    if dtype is not torch.int64 and (dtype == torch.bool or target.is_floating_point() or target.is_complex()):
        raise TypeError(f"{fn}: target must hold integer class indices, got dtype {dtype}")
    if target.dim() != logits.dim() - 1 or target.shape != sample_shape(logits):
        raise ValueError(f"{fn}: target shape {tuple(target.shape)} does not match logits shape "
                         f"{tuple(logits.shape)}; expected {sample_shape(logits)}")
    _check_same_device(target, "target", logits, fn)
    return target if dtype is torch.int64 else target.long()


def _check_target_range(logits: Tensor, target: Tensor, ignore_index: int, fn: str) -> None:
    """Host-side range check for the reference path on CPU tensors (the CPU kernels check in their
    own pass; on CUDA it would synchronise; under ``torch.compile`` and ``vmap`` it is data-dependent)."""
    if (target.device.type != "cpu" or target.numel() == 0 or torch.compiler.is_compiling()
            or ops.transforms_active()):
        return
    num_classes = logits.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        value = target[bad][0].item()
        raise ValueError(f"{fn}: target value {value} is out of range for {num_classes} classes "
                         f"(valid: 0..{num_classes - 1} or ignore_index={ignore_index})")


def _check_class_vector(vec, name: str, logits: Tensor, fn: str) -> Optional[Tensor]:
    """A per-class vector (weight, logit_offset, target_margin): (C,) float on the logits' device."""
    if vec is None:
        return None
    if not isinstance(vec, torch.Tensor):
        vec = torch.as_tensor(vec, dtype=torch.float32)
    if not vec.is_floating_point():
        vec = vec.float()
    num_classes = logits.shape[1]
    if vec.dim() != 1 or vec.shape[0] != num_classes:
        raise ValueError(f"{fn}: {name} must have shape ({num_classes},) (one value per class), "
                         f"got {tuple(vec.shape)}")
    _check_same_device(vec, name, logits, fn)
    return vec


def _check_reduction(reduction, fn: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


_INT64 = (-2 ** 63, 2 ** 63 - 1)


def _check_index(value, name: str, fn: str) -> int:
    """An integer (Python or NumPy) in the int64 range: targets are int64, so no other value can match."""
    if type(value) is int and _INT64[0] <= value <= _INT64[1]:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}") from None
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{fn}: {name} must be in the int64 range [-2**63, 2**63 - 1] (targets are int64), "
                         f"got {value}")
    return value


def _check_real(value, name: str, fn: str, *, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}") from exc
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{fn}: {name} must be a finite number in {lb}{low}, {high}{hb}, got {value!r}")
    return value


def _fused_vector(vec: Optional[Tensor]) -> Optional[Tensor]:
    if vec is None or (vec.dtype == torch.float32 and vec.is_contiguous()):
        return vec
    return vec.float().contiguous()


def _takes_reference(backend: str, logits: Tensor, *others: Optional[Tensor]) -> bool:
    """See the module docstring: reference backend, torch.func, or gradients the kernels do not give."""
    if not ops.uses_kernels(backend, logits) or ops.transforms_active():
        return True
    return any(t is not None and t.requires_grad for t in others)


def _rows(x: Tensor) -> Tensor:
    return x if x.dim() == 2 else rows(x)


def _flat(target: Tensor) -> Tensor:
    return target if target.dim() == 1 else target.reshape(-1)


def _finish(loss: Tensor, logits: Tensor, reduction: str) -> Tensor:
    if reduction == "none" and logits.dim() > 2:
        return loss.reshape(sample_shape(logits))
    return loss


# ----------------------------------------------------------------------------------------------
# public losses
# ----------------------------------------------------------------------------------------------
def softmax_cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                          reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0,
                          logit_offset: Optional[Tensor] = None, target_margin: Optional[Tensor] = None,
                          scale: float = 1.0, backend: str = "auto", sync_normalizer: bool = False,
                          process_group=None) -> Tensor:
    """Class-weighted softmax cross-entropy (and Balanced Softmax / logit adjustment / LDAM via options).

    Per sample: ``w_y * CE(z', y)`` with adjusted logits
    ``z'_j = scale * (z_j + logit_offset_j - [j == y] * target_margin_y)`` and, with label smoothing
    ``eps``, the target distribution ``(1 - eps) onehot(y) + eps / C``. ``w_y`` multiplies the whole
    smoothed loss (``nn.CrossEntropyLoss`` instead weights the smoothing term per class).

    ``reduction="mean"`` divides by the number of non-ignored samples (the paper's convention);
    ``"weighted_mean"`` divides by the sum of their weights, like ``nn.CrossEntropyLoss(weight=w)``.
    The loss is float32 for float16/bfloat16/float32 logits (float64 for float64).

    ``sync_normalizer=True`` (data parallel training) divides by the divisor all-reduced over
    ``process_group`` (default: the world), so DDP's gradient equals that of the global batch; see
    :mod:`cbbench.distributed` for what the forward value then is.
    """
    if sync_normalizer:
        return distributed.synchronised(
            softmax_cross_entropy, logits, target, weight, reduction=reduction, ignore_index=ignore_index,
            process_group=process_group, label_smoothing=label_smoothing, logit_offset=logit_offset,
            target_margin=target_margin, scale=scale, backend=backend)
    fast = ops.fast_path_allowed(backend)
    if fast is not None:  # plain 2-D CPU inputs in one C++ call; None: declined, take the checks below
        loss = fast.softmax_cross_entropy(logits, target, weight, logit_offset, target_margin, scale, label_smoothing,
                                          ignore_index, reduction)
        if loss is not None:
            return loss
    fn = "softmax_cross_entropy"
    _check_logits(logits, fn)
    _check_reduction(reduction, fn)
    ignore_index = _check_index(ignore_index, "ignore_index", fn)
    label_smoothing = _check_real(label_smoothing, "label_smoothing", fn, low=0.0, high=1.0)
    scale = _check_real(scale, "scale", fn, low=0.0, low_open=True)
    target = _check_class_indices(logits, target, fn)
    weight = _check_class_vector(weight, "weight", logits, fn)
    logit_offset = _check_class_vector(logit_offset, "logit_offset", logits, fn)
    target_margin = _check_class_vector(target_margin, "target_margin", logits, fn)

    if _takes_reference(backend, logits, weight, logit_offset, target_margin):
        _check_target_range(logits, target, ignore_index, fn)
        return reference.softmax_cross_entropy(logits, target, weight, reduction=reduction, ignore_index=ignore_index,
                                               label_smoothing=label_smoothing, logit_offset=logit_offset,
                                               target_margin=target_margin, scale=scale)
    args = ops.SoftmaxArgs(_rows(logits), _flat(target), _fused_vector(weight), _fused_vector(logit_offset),
                           _fused_vector(target_margin), scale, label_smoothing, ignore_index, reduction,
                           logits.requires_grad and torch.is_grad_enabled())
    return _finish(_fused_call(ops.SOFTMAX_CROSS_ENTROPY, args, fn), logits, reduction)


def _fused_call(fused, args, fn: str) -> Tensor:
    try:
        return ops.call(fused, args)
    except ValueError as exc:  # the CPU kernels' target range check, named after the public function
        if str(exc).startswith("target value"):
            raise ValueError(f"{fn}: {exc}") from None
        raise


def _sigmoid_family(fn: str, logits: Tensor, target: Tensor, weight: Optional[Tensor], *, gamma: Optional[float],
                    alpha: Optional[float], reduction: str, ignore_index: int, backend: str) -> Tensor:
    """The sigmoid / focal losses without normaliser synchronisation."""
    fast = ops.fast_path_allowed(backend)
    if fast is not None:  # as in softmax_cross_entropy
        loss = fast.sigmoid_focal(logits, target, weight, gamma, alpha, ignore_index, reduction)
        if loss is not None:
            return loss
    _check_logits(logits, fn)
    _check_reduction(reduction, fn)
    ignore_index = _check_index(ignore_index, "ignore_index", fn)
    if gamma is not None:
        gamma = _check_real(gamma, "gamma", fn, low=0.0)
    if alpha is not None:
        alpha = _check_real(alpha, "alpha", fn, low=0.0, high=1.0)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(f"{fn}: a floating-point (multi-hot) target must have the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}; integer targets are class indices")
        _check_same_device(target, "target", logits, fn)
    else:
        target = _check_class_indices(logits, target, fn)
    weight = _check_class_vector(weight, "weight", logits, fn)

    if _takes_reference(backend, logits, weight, target):
        if not target.is_floating_point():
            _check_target_range(logits, target, ignore_index, fn)
        return reference.sigmoid_focal_loss(logits, target, weight, gamma=gamma or 0.0, alpha=alpha,
                                            reduction=reduction, ignore_index=ignore_index)
    args = ops.SigmoidFocalArgs(_rows(logits), _rows(target) if target.is_floating_point() else _flat(target),
                                _fused_vector(weight), gamma or 0.0, -1.0 if alpha is None else alpha, ignore_index,
                                gamma is not None, reduction, logits.requires_grad and torch.is_grad_enabled())
    return _finish(_fused_call(ops.SIGMOID_FOCAL, args, fn), logits, reduction)


def sigmoid_cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                          reduction: str = "mean", ignore_index: int = -100, backend: str = "auto",
                          sync_normalizer: bool = False, process_group=None) -> Tensor:
    """Sigmoid (one-vs-all) cross-entropy, ``w_y * sum_j BCE(z_j, onehot(y)_j)`` per sample.

    Integer targets are class indices and ``w_y`` multiplies all C binary terms of the sample (the
    paper's convention); a float target of the logits' shape is multi-hot and ``weight`` then weights
    columns. ``reduction="mean"`` divides by the number of positives (at least 1).
    ``sync_normalizer`` / ``process_group``: as in :func:`softmax_cross_entropy`.
    """
    if sync_normalizer:
        return distributed.synchronised(sigmoid_cross_entropy, logits, target, weight, reduction=reduction,
                                        ignore_index=ignore_index, process_group=process_group, backend=backend)
    return _sigmoid_family("sigmoid_cross_entropy", logits, target, weight, gamma=None, alpha=None,
                           reduction=reduction, ignore_index=ignore_index, backend=backend)


def sigmoid_focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *, gamma: float = 2.0,
                       alpha: Optional[float] = None, reduction: str = "mean", ignore_index: int = -100,
                       backend: str = "auto", sync_normalizer: bool = False, process_group=None) -> Tensor:
    """Sigmoid focal loss ``w_y * sum_j alpha_t (1 - p_t)^gamma BCE(z_j, t_j)``.

    The modulator is computed in log space, ``exp(-gamma * (t z + softplus(-z)))``, so it never
    overflows (the official TensorFlow form gives the hardest positives a modulator of 0 below
    z = -88.7 in float32). ``gamma=0`` equals :func:`sigmoid_cross_entropy`; ``alpha`` is RetinaNet's
    optional positive/negative balance (``None``: off). ``sync_normalizer`` / ``process_group``: as in
    :func:`softmax_cross_entropy`.
    """
    if sync_normalizer:
        return distributed.synchronised(sigmoid_focal_loss, logits, target, weight, reduction=reduction,
                                        ignore_index=ignore_index, process_group=process_group, gamma=gamma,
                                        alpha=alpha, backend=backend)
    return _sigmoid_family("sigmoid_focal_loss", logits, target, weight, gamma=gamma, alpha=alpha,
                           reduction=reduction, ignore_index=ignore_index, backend=backend)

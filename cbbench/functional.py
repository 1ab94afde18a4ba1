"""Public loss functions: argument checking, then the reference or a fused kernel.

``backend="auto"`` runs the CUDA kernel on CUDA tensors and the Cython kernel on CPU tensors when they
were built, and the pure-PyTorch reference otherwise; the environment variable ``CBBENCH_BACKEND``
overrides ``"auto"``. All backends compute the same numbers (see :mod:`cbbench.reference` for the
formulas and the conventions of each reduction).

Which path a call takes: the checks below (the one place the public errors are raised), then

* the op ``torch.ops.cbbench.*`` (:mod:`cbbench.ops`) wherever the kernels of the logits' device are
  built -- eager, ``torch.compile``, ``torch.jit.trace`` and ``torch.func`` alike; its C++ autograd takes
  the op's differentiable composite where the fused kernels cannot serve (forward-mode AD, functorch
  transforms, gradients for inputs other than the logits);
* the reference (:mod:`cbbench.reference`) for ``backend="reference"`` and where no kernels are built.

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

__all__ = ["softmax_cross_entropy", "softmax_focal_loss", "sigmoid_cross_entropy", "sigmoid_focal_loss"]


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
_REAL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_float_tensor(t, name: str, fn: str) -> None:
    """``t`` is a dense floating-point tensor (logits, hidden features, a classifier weight)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    _check_dense(t, name, fn)


def _check_logits(logits, fn: str) -> None:
    if (not isinstance(logits, torch.Tensor) or logits.dtype not in _REAL_FLOATS or logits.layout is not torch.strided
            or logits.is_nested):
        _check_float_tensor(logits, "logits", fn)  # names the problem (other floating dtypes pass)
    if logits.dim() < 2:
        raise ValueError(f"{fn}: logits must have shape (N, C) or (N, C, d1, ...), got {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"{fn}: logits must have at least one class (C >= 1), got shape {tuple(logits.shape)}")


def _check_dense(t: Tensor, name: str, fn: str) -> None:
    if t.layout != torch.strided or t.is_nested:
        kind = "nested" if t.is_nested else str(t.layout).replace("torch.", "")
        hint = ".to_padded_tensor(padding)" if t.is_nested else ".to_dense()"
        raise TypeError(f"{fn}: {name} must be a dense (strided) tensor, got a {kind} tensor; convert it with {hint}")


def _check_same_device(t: Tensor, name: str, logits: Tensor, fn: str) -> None:
    if t.device != logits.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but logits are on {logits.device}")


def _check_class_indices(logits: Tensor, target, fn: str) -> Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    dtype = target.dtype
    if dtype is not torch.int64 and (dtype == torch.bool or target.is_floating_point() or target.is_complex()):
        raise TypeError(f"{fn}: target must hold integer class indices, got dtype {dtype}")
    if target.layout is not torch.strided or target.is_nested:
        _check_dense(target, "target", fn)
    dim = logits.dim()
    if dim == 2:  # the common case, without building the sample shape
        shape_ok = target.dim() == 1 and target.shape[0] == logits.shape[0]
    else:
        shape_ok = target.dim() == dim - 1 and target.shape == sample_shape(logits)
    if not shape_ok:
        raise ValueError(f"{fn}: target shape {tuple(target.shape)} does not match logits shape "
                         f"{tuple(logits.shape)}; expected {sample_shape(logits)}")
    _check_same_device(target, "target", logits, fn)
    return target if dtype is torch.int64 else target.long()


def _check_target_range(logits: Tensor, target: Tensor, ignore_index: int, fn: str) -> None:
    """Host-side range check for the reference path on CPU tensors (the CPU kernels check in their
    own pass, with the same message: kernels/ops/cb_ops.h; on CUDA it would synchronise; under
    ``torch.compile`` it is data-dependent). The fused heads run it on every CPU call, before the first
    chunk's matmul."""
    if target.device.type != "cpu" or target.numel() == 0 or torch.compiler.is_compiling():
        return
    num_classes = logits.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    try:
        found = bool(bad.any())
    except RuntimeError:  # vmap: data-dependent control flow is refused; the reference's gather then checks
        return
    if found:
        value = target[bad][0].item()
        raise ValueError(f"{fn}: target value {value} is out of range for {num_classes} classes "
                         f"(valid: 0..{num_classes - 1} or ignore_index={ignore_index})")


def _check_class_vector(vec, name: str, logits: Tensor, fn: str) -> Optional[Tensor]:
    """A per-class vector (weight, logit_offset, target_margin): (C,) float on the logits' device."""
    if vec is None:
        return None
    if not isinstance(vec, torch.Tensor):
        try:
            vec = torch.as_tensor(vec, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{fn}: {name} must be a tensor or a sequence of numbers (one per class), got "
                            f"{type(vec).__name__}") from exc
    if vec.dtype not in _REAL_FLOATS:
        if vec.is_complex():
            raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {vec.dtype}")
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
    if type(value) is float and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high) and -math.inf < value < math.inf:
        return value  # the common case; everything else takes the checks below
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise TypeError(f"{fn}: {name} is a tensor that requires grad, but it is taken as a plain number, so "
                        f"its gradient would silently be lost; pass a number (or {name}.detach())")
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}") from exc
    # comparisons, not math.isfinite: under torch.compile a float argument that changed between calls
    # is a SymFloat, which math.isfinite cannot trace (fullgraph=True would fail); NaN fails them all
    ok = -math.inf < value < math.inf and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{fn}: {name} must be a finite number in {lb}{low}, {high}{hb}, got {value!r}")
    return value


def _check_alpha(alpha, fn: str) -> Optional[float]:
    """RetinaNet's alpha: a number in [0, 1], or ``None`` / ``-1`` (torchvision's "ignore") for none."""
    if alpha is None:
        return None
    try:
        off = float(alpha) == -1.0
    except (TypeError, ValueError):
        off = False  # _check_real names the bad value
    return None if off else _check_real(alpha, "alpha", fn, low=0.0, high=1.0)


def _check_class_alpha(alpha, logits: Tensor, fn: str) -> Optional[Tensor]:
    """The softmax focal loss's alpha: ``None``, a number >= 0 (the same for every class) or one value per
    class, as a (C,) tensor on the logits' device."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) or (isinstance(alpha, torch.Tensor) and alpha.dim() == 0):
        value = _check_real(alpha, "alpha", fn, low=0.0)
        return torch.full((logits.shape[1],), value, dtype=torch.float32, device=logits.device)
    return _check_class_vector(alpha, "alpha", logits, fn)


def _check_sample_weight(sample_weight, logits: Tensor, fn: str) -> Optional[Tensor]:
    """One real weight per sample, of the sample shape (N,) or (N, d1, ...), on the logits' device."""
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, torch.Tensor):
        try:
            sample_weight = torch.as_tensor(sample_weight, dtype=torch.float32, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{fn}: sample_weight must be a tensor or a sequence of numbers (one per sample), got "
                            f"{type(sample_weight).__name__}") from exc
    _check_dense(sample_weight, "sample_weight", fn)
    if sample_weight.is_complex() or sample_weight.dtype == torch.bool:
        raise TypeError(f"{fn}: sample_weight must hold real numbers, got dtype {sample_weight.dtype}")
    if not sample_weight.is_floating_point():
        sample_weight = sample_weight.float()
    if tuple(sample_weight.shape) != sample_shape(logits):
        raise ValueError(f"{fn}: sample_weight must have the sample shape {sample_shape(logits)} (one weight per "
                         f"sample), got {tuple(sample_weight.shape)}")
    _check_same_device(sample_weight, "sample_weight", logits, fn)
    return sample_weight


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
                          scale: float = 1.0, sample_weight: Optional[Tensor] = None, backend: str = "auto",
                          sync_normalizer: bool = False, process_group=None) -> Tensor:
    """Class-weighted softmax cross-entropy (and Balanced Softmax / logit adjustment / LDAM via options).

    Per sample: ``w_y * CE(z', y)`` with adjusted logits
    ``z'_j = scale * (z_j + logit_offset_j - [j == y] * target_margin_y)`` and, with label smoothing
    ``eps``, the target distribution ``(1 - eps) onehot(y) + eps / C``. ``w_y`` multiplies the whole
    smoothed loss (``nn.CrossEntropyLoss`` instead weights the smoothing term per class).

    ``sample_weight`` (one per sample: (N,) or (N, d1, ...)) multiplies each sample's loss after its class
    weight (importance weights, curriculum). ``reduction="mean"`` divides by the number of non-ignored
    samples (the paper's convention; sample weights do not change it); ``"weighted_mean"`` divides by the
    sum of the applied weights ``s_i w_{y_i}``, like ``nn.CrossEntropyLoss(weight=w)``. The loss is float32
    for float16/bfloat16/float32 logits (float64 for float64).

    ``sync_normalizer=True`` (data parallel training) divides by the divisor all-reduced over
    ``process_group`` (default: the world), so DDP's gradient equals that of the global batch; see
    :mod:`cbbench.distributed` for what the forward value then is.
    """
    if sync_normalizer:
        return distributed.synchronised(
            softmax_cross_entropy, logits, target, weight, reduction=reduction, ignore_index=ignore_index,
            process_group=process_group, label_smoothing=label_smoothing, logit_offset=logit_offset,
            target_margin=target_margin, scale=scale, sample_weight=sample_weight, backend=backend)
    return _softmax_family("softmax_cross_entropy", logits, target, weight, reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=label_smoothing, logit_offset=logit_offset,
                           target_margin=target_margin, scale=scale, gamma=None, alpha=None,
                           sample_weight=sample_weight, backend=backend)


def softmax_focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *, gamma: float = 2.0,
                       alpha=None, reduction: str = "mean", ignore_index: int = -100,
                       logit_offset: Optional[Tensor] = None, target_margin: Optional[Tensor] = None,
                       scale: float = 1.0, sample_weight: Optional[Tensor] = None, backend: str = "auto",
                       sync_normalizer: bool = False, process_group=None) -> Tensor:
    """Softmax focal loss (Lin et al. on the softmax; LDAM-DRW's ``FocalLoss``), per sample
    ``-w_y alpha_y (1 - p_y)^gamma log p_y`` with ``p = softmax(z')`` on the adjusted logits of
    :func:`softmax_cross_entropy` (``logit_offset``, ``target_margin``, ``scale``).

    ``alpha``: ``None`` (none), a number, or one value per class (>= 0); it multiplies the sample's loss
    but, unlike ``weight``, never the ``"weighted_mean"`` divisor. ``(1 - p_y)^gamma`` is computed in log
    space (``exp(gamma * log(-expm1(log p_y)))``): finite, with finite gradients, for every gamma >= 0
    including gamma < 1 as ``p_y -> 1``. ``gamma=0`` equals :func:`softmax_cross_entropy` (times alpha).
    No label smoothing. ``sample_weight``, reductions, ``sync_normalizer``: as in :func:`softmax_cross_entropy`.
    """
    if sync_normalizer:
        return distributed.synchronised(
            softmax_focal_loss, logits, target, weight, reduction=reduction, ignore_index=ignore_index,
            process_group=process_group, gamma=gamma, alpha=alpha, logit_offset=logit_offset,
            target_margin=target_margin, scale=scale, sample_weight=sample_weight, backend=backend)
    return _softmax_family("softmax_focal_loss", logits, target, weight, reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=0.0, logit_offset=logit_offset,
                           target_margin=target_margin, scale=scale, gamma=gamma, alpha=alpha,
                           sample_weight=sample_weight, backend=backend)


def _op_takes(backend: str, logits, *tensors):
    """The module whose functions call the ops eagerly (:func:`cbbench.ops.eager_module`) where the op may
    take these arguments as they are, its own checks (kernels/ops/cb_ops.h) standing in for the tensor
    checks below until one of them fails: 2-D logits on the fused kernels, every tensor an exact
    ``torch.Tensor`` or ``None`` (a subclass's ``__torch_function__`` is honoured by ``torch.ops`` only, and
    other values need the conversions of the checks), outside a ``torch.compile`` trace (which traces the
    checks once, at no cost per call); else ``None``."""
    if type(logits) is not Tensor or logits.dim() != 2 or torch.compiler.is_compiling():
        return None
    for t in tensors:
        if t is not None and type(t) is not Tensor:
            return None
    return ops.eager_module_for(backend, logits)


# The errors the op raises for arguments the checks refuse (or convert): after one of them the call is
# checked in full, which raises the public error, and made again with the checked arguments.
_OP_ERRORS = (TypeError, ValueError, RuntimeError, NotImplementedError)


def _softmax_family(fn: str, logits: Tensor, target: Tensor, weight: Optional[Tensor], *, reduction: str,
                    ignore_index: int, label_smoothing: float, logit_offset, target_margin, scale: float, gamma,
                    alpha, sample_weight, backend: str) -> Tensor:
    """Softmax cross-entropy (``gamma`` None) or softmax focal, without normaliser synchronisation."""
    _check_reduction(reduction, fn)
    ignore_index = _check_index(ignore_index, "ignore_index", fn)
    label_smoothing = _check_real(label_smoothing, "label_smoothing", fn, low=0.0, high=1.0)
    scale = _check_real(scale, "scale", fn, low=0.0, low_open=True)
    focal = gamma is not None
    if focal:
        gamma = _check_real(gamma, "gamma", fn, low=0.0)
    eager = _op_takes(backend, logits, target, weight, logit_offset, target_margin, alpha, sample_weight)
    if eager is not None:
        try:
            return eager.softmax_cross_entropy(logits, target, weight, logit_offset, target_margin, scale,
                                               label_smoothing, gamma or 0.0, alpha, sample_weight, ignore_index,
                                               reduction)
        except _OP_ERRORS:
            pass  # checked in full below
    _check_logits(logits, fn)
    target = _check_class_indices(logits, target, fn)
    weight = _check_class_vector(weight, "weight", logits, fn)
    if logit_offset is not None:
        logit_offset = _check_class_vector(logit_offset, "logit_offset", logits, fn)
    if target_margin is not None:
        target_margin = _check_class_vector(target_margin, "target_margin", logits, fn)
    if alpha is not None:
        alpha = _check_class_alpha(alpha, logits, fn)
    if sample_weight is not None:
        sample_weight = _check_sample_weight(sample_weight, logits, fn)

    if not ops.uses_kernels(backend, logits):
        _check_target_range(logits, target, ignore_index, fn)
        options = dict(reduction=reduction, ignore_index=ignore_index, logit_offset=logit_offset,
                       target_margin=target_margin, scale=scale, sample_weight=sample_weight)
        if focal:
            return reference.softmax_focal_loss(logits, target, weight, gamma=gamma, alpha=alpha, **options)
        return reference.softmax_cross_entropy(logits, target, weight, label_smoothing=label_smoothing, **options)
    try:
        loss = ops.softmax_cross_entropy(
            _rows(logits), _flat(target), weight, logit_offset, target_margin, scale, label_smoothing,
            gamma or 0.0, alpha, None if sample_weight is None else _flat(sample_weight), ignore_index, reduction)
    except ValueError as exc:
        raise _named(exc, fn) from None
    return _finish(loss, logits, reduction)


def _named(exc: ValueError, fn: str) -> ValueError:
    """The kernels' target range error (``ValueError: target value ...``) named after the public function."""
    return ValueError(f"{fn}: {exc}") if str(exc).startswith("target value") else exc


def _sigmoid_family(fn: str, logits: Tensor, target: Tensor, weight: Optional[Tensor], *, gamma: Optional[float],
                    alpha: Optional[float], reduction: str, ignore_index: int, sample_weight, backend: str) -> Tensor:
    """The sigmoid / focal losses without normaliser synchronisation."""
    _check_reduction(reduction, fn)
    ignore_index = _check_index(ignore_index, "ignore_index", fn)
    if gamma is not None:
        gamma = _check_real(gamma, "gamma", fn, low=0.0)
    alpha = _check_alpha(alpha, fn)
    eager = _op_takes(backend, logits, target, weight, sample_weight)
    if eager is not None:
        try:
            return eager.sigmoid_focal(logits, target, weight, gamma or 0.0, -1.0 if alpha is None else alpha,
                                       sample_weight, ignore_index, gamma is not None, reduction)
        except _OP_ERRORS:
            pass  # checked in full below
    _check_logits(logits, fn)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(f"{fn}: a floating-point (multi-hot) target must have the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}; integer targets are class indices")
        _check_dense(target, "target", fn)
        _check_same_device(target, "target", logits, fn)
    else:
        target = _check_class_indices(logits, target, fn)
    weight = _check_class_vector(weight, "weight", logits, fn)
    sample_weight = _check_sample_weight(sample_weight, logits, fn)

    if not ops.uses_kernels(backend, logits):
        if not target.is_floating_point():
            _check_target_range(logits, target, ignore_index, fn)
        return reference.sigmoid_focal_loss(logits, target, weight, gamma=gamma or 0.0, alpha=alpha,
                                            reduction=reduction, ignore_index=ignore_index,
                                            sample_weight=sample_weight)
    try:
        loss = ops.sigmoid_focal(_rows(logits), _rows(target) if target.is_floating_point() else _flat(target), weight,
                                 gamma or 0.0, -1.0 if alpha is None else alpha,
                                 None if sample_weight is None else _flat(sample_weight), ignore_index,
                                 gamma is not None, reduction)
    except ValueError as exc:
        raise _named(exc, fn) from None
    return _finish(loss, logits, reduction)


def sigmoid_cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                          reduction: str = "mean", ignore_index: int = -100, sample_weight: Optional[Tensor] = None,
                          backend: str = "auto", sync_normalizer: bool = False, process_group=None) -> Tensor:
    """Sigmoid (one-vs-all) cross-entropy, ``w_y * sum_j BCE(z_j, onehot(y)_j)`` per sample.

    Integer targets are class indices and ``w_y`` multiplies all C binary terms of the sample (the
    paper's convention); a float target of the logits' shape is multi-hot and ``weight`` then weights
    columns. ``reduction="mean"`` divides by the number of positives (at least 1).
    ``sample_weight``, ``sync_normalizer`` / ``process_group``: as in :func:`softmax_cross_entropy`.
    """
    if sync_normalizer:
        return distributed.synchronised(sigmoid_cross_entropy, logits, target, weight, reduction=reduction,
                                        ignore_index=ignore_index, process_group=process_group,
                                        sample_weight=sample_weight, backend=backend)
    return _sigmoid_family("sigmoid_cross_entropy", logits, target, weight, gamma=None, alpha=None,
                           reduction=reduction, ignore_index=ignore_index, sample_weight=sample_weight,
                           backend=backend)


def sigmoid_focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *, gamma: float = 2.0,
                       alpha: Optional[float] = None, reduction: str = "mean", ignore_index: int = -100,
                       sample_weight: Optional[Tensor] = None, backend: str = "auto", sync_normalizer: bool = False,
                       process_group=None) -> Tensor:
    """Sigmoid focal loss ``w_y * sum_j alpha_t (1 - p_t)^gamma BCE(z_j, t_j)``.

    The modulator is computed in log space, ``exp(-gamma * (t z + softplus(-z)))``, so it never
    overflows (the official TensorFlow form gives the hardest positives a modulator of 0 below
    z = -88.7 in float32). ``gamma=0`` equals :func:`sigmoid_cross_entropy`; ``alpha`` is RetinaNet's
    optional positive/negative balance, ``alpha t + (1 - alpha)(1 - t)`` (``None`` or ``-1``, as in
    ``torchvision.ops.sigmoid_focal_loss``: off). ``sample_weight``, ``sync_normalizer`` / ``process_group``:
    as in :func:`softmax_cross_entropy`.
    """
    if sync_normalizer:
        return distributed.synchronised(sigmoid_focal_loss, logits, target, weight, reduction=reduction,
                                        ignore_index=ignore_index, process_group=process_group, gamma=gamma,
                                        alpha=alpha, sample_weight=sample_weight, backend=backend)
    return _sigmoid_family("sigmoid_focal_loss", logits, target, weight, gamma=gamma, alpha=alpha,
                           reduction=reduction, ignore_index=ignore_index, sample_weight=sample_weight,
                           backend=backend)


# ----------------------------------------------------------------------------------------------
# classifier head + loss, chunked over rows (cbbench/linear.py): the (M, C) logits never exist
# ----------------------------------------------------------------------------------------------
from . import linear as _linear  # noqa: E402  (imports cbbench.ops and cbbench.distributed, never this module)

__all__ += ["linear_softmax_cross_entropy", "linear_softmax_focal_loss", "linear_sigmoid_cross_entropy",
            "linear_sigmoid_focal_loss"]


def _check_linear(hidden, linear_weight, linear_bias, fn: str):
    """``hidden`` (*, H), ``linear_weight`` (C, H), ``linear_bias`` (C,) or ``None``, one dtype and
    device; returns the rows (M, H) and a stand-in for the (M, C) logits (their shape, dtype and
    device, no memory) for the loss checks above."""
    _check_float_tensor(hidden, "hidden", fn)
    _check_float_tensor(linear_weight, "linear_weight", fn)
    if hidden.dim() < 1:
        raise ValueError(f"{fn}: hidden must have shape (*, H), got a 0-dim tensor")
    if linear_weight.dim() != 2 or linear_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{fn}: linear_weight must have shape (C, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got {tuple(linear_weight.shape)}")
    if linear_weight.shape[0] == 0:
        raise ValueError(f"{fn}: linear_weight must have at least one class (C >= 1), got {tuple(linear_weight.shape)}")
    others = [(linear_weight, "linear_weight")]
    if linear_bias is not None:
        if not isinstance(linear_bias, torch.Tensor):
            raise TypeError(f"{fn}: linear_bias must be a torch.Tensor or None, got {type(linear_bias).__name__}")
        if tuple(linear_bias.shape) != (linear_weight.shape[0],):
            raise ValueError(f"{fn}: linear_bias must have shape ({linear_weight.shape[0]},), got "
                             f"{tuple(linear_bias.shape)}")
        others.append((linear_bias, "linear_bias"))
    try:  # under autocast the head computes in autocast's dtype
        autocast = torch.is_autocast_enabled(hidden.device.type)
    except RuntimeError:  # a device type autocast does not know (meta): no autocast there
        autocast = False
    for t, name in others:
        if t.dtype != hidden.dtype and not autocast:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype} but hidden has {hidden.dtype}")
        if t.device != hidden.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but hidden is on {hidden.device}")
    rows_h = hidden.reshape(math.prod(hidden.shape[:-1]), hidden.shape[-1])  # not -1: H may be 0
    stand_in = hidden.new_empty(()).expand(rows_h.shape[0], linear_weight.shape[0])
    return rows_h, stand_in


def _check_chunking(chunk_size, memory_budget, fn: str):
    if chunk_size is not None:
        chunk_size = _check_index(chunk_size, "chunk_size", fn)
        if chunk_size < 1:
            raise ValueError(f"{fn}: chunk_size must be >= 1 (rows per chunk), got {chunk_size}")
    if memory_budget is not None:
        memory_budget = _check_index(memory_budget, "memory_budget", fn)
        if memory_budget < 1:
            raise ValueError(f"{fn}: memory_budget must be >= 1 (bytes per chunk), got {memory_budget}")
    return chunk_size, memory_budget


def _linear_target(hidden: Tensor, target, num_classes: int, stand_in: Tensor, fn: str, *, multi_hot_ok: bool):
    """Class indices of ``hidden``'s leading shape, flattened to (M,); or (sigmoid family) a float
    multi-hot target of shape (*, C), flattened to (M, C)."""
    if isinstance(target, torch.Tensor):
        _check_dense(target, "target", fn)  # before the reshapes below, which sparse tensors refuse
    lead = tuple(hidden.shape[:-1])
    if multi_hot_ok and isinstance(target, torch.Tensor) and target.is_floating_point():
        if tuple(target.shape) != lead + (num_classes,):
            raise ValueError(f"{fn}: a floating-point (multi-hot) target must have shape {lead + (num_classes,)} "
                             f"(hidden's leading shape and C), got {tuple(target.shape)}; integer targets are "
                             "class indices")
        _check_same_device(target, "target", stand_in, fn)
        return target.reshape(-1, num_classes)
    if isinstance(target, torch.Tensor) and tuple(target.shape) != lead:
        raise ValueError(f"{fn}: target shape {tuple(target.shape)} does not match hidden shape "
                         f"{tuple(hidden.shape)}; expected {lead}")
    return _check_class_indices(stand_in, target.reshape(-1) if isinstance(target, torch.Tensor) else target, fn)


def _linear_unfused_only(backend: str, stand_in: Tensor, tensors, others) -> bool:
    """Whether a head takes ``linear`` + the loss instead of the chunks (:func:`cbbench.linear.unfused_only`):
    no kernels for the device, or a feature the chunked autograd does not have."""
    return not ops.uses_kernels(backend, stand_in) or _linear.unfused_only(tensors, others)


def _linear_call(loss: "_linear.HeadLoss", hidden: Tensor, rows_h: Tensor, linear_weight: Tensor, linear_bias,
                 chunk_size, memory_budget) -> Tensor:
    rows_h, linear_weight, linear_bias = _linear.autocast_inputs(rows_h, linear_weight, linear_bias)
    plan = _linear.make_plan(loss, rows_h, linear_weight, chunk_size=chunk_size, memory_budget=memory_budget)
    # no kernel range error to rename here: the heads check CPU targets before the first chunk
    return _linear_finish(_linear.linear_loss(plan, rows_h, linear_weight, linear_bias), hidden, loss.reduction)


def _linear_unfused(loss_fn, hidden: Tensor, rows_h: Tensor, linear_weight: Tensor, linear_bias, target: Tensor,
                    weight, reduction: str, **options) -> Tensor:
    """``linear`` then the loss, on rows (the logits of (*, H) hidden are (*, C), not (N, C, d1, ...))."""
    logits = torch.nn.functional.linear(rows_h, linear_weight, linear_bias)
    loss = loss_fn(logits, target, weight, reduction=reduction, **options)
    return _linear_finish(loss, hidden, reduction)


def _linear_finish(loss: Tensor, hidden: Tensor, reduction: str) -> Tensor:
    """Per-row losses of ``"none"`` in ``hidden``'s leading shape (already so for 2-D hidden)."""
    if reduction != "none" or hidden.dim() == 2:
        return loss
    return loss.reshape(hidden.shape[:-1])


def _linear_synchronised(public_fn, hidden, linear_weight, target, weight, *, linear_bias, reduction, ignore_index,
                         process_group, fn: str, **options) -> Tensor:
    """``sync_normalizer=True`` for a head: :func:`cbbench.distributed.synchronised` over the stand-in
    logits (it needs their device and the flat target only)."""
    _, stand_in = _check_linear(hidden, linear_weight, linear_bias, fn)
    flat = target  # not a tensor: the loss below raises the error before the divisor is needed
    if isinstance(target, torch.Tensor):
        flat = target.reshape(-1, linear_weight.shape[0]) if target.is_floating_point() else target.reshape(-1)

    def local(_logits, _target, w, **kw):
        return public_fn(hidden, linear_weight, target, w, linear_bias=linear_bias, **kw)

    return distributed.synchronised(local, stand_in, flat, weight, reduction=reduction, ignore_index=ignore_index,
                                    process_group=process_group, **options)


def linear_softmax_cross_entropy(hidden: Tensor, linear_weight: Tensor, target: Tensor,
                                 weight: Optional[Tensor] = None, *, linear_bias: Optional[Tensor] = None,
                                 reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0,
                                 logit_offset: Optional[Tensor] = None, target_margin: Optional[Tensor] = None,
                                 scale: float = 1.0, sample_weight: Optional[Tensor] = None,
                                 chunk_size: Optional[int] = None, memory_budget: Optional[int] = None,
                                 backend: str = "auto", sync_normalizer: bool = False, process_group=None) -> Tensor:
    """:func:`softmax_cross_entropy` of the logits ``hidden @ linear_weight.T + linear_bias``, without
    materialising them: the rows run in chunks (``cbbench/linear.py``), each chunk's logits are
    computed, turned into loss and gradient by the fused kernel and multiplied straight back into the
    gradients of ``hidden``, ``linear_weight`` and ``linear_bias``.

    ``hidden`` (*, H), ``linear_weight`` (C, H), ``linear_bias`` (C,) or ``None``, ``target`` and
    ``sample_weight`` of ``hidden``'s leading shape; every other argument as in
    :func:`softmax_cross_entropy` (``"none"`` returns the leading shape). ``chunk_size`` (rows) or
    ``memory_budget`` (bytes of one chunk's buffer, which holds its logits and then their gradient) choose
    the chunks; by default a chunk is 1/12 of the logits, within 16 to 96 MiB
    (:func:`cbbench.linear.chunking`). Deterministic, and on CUDA free of host synchronisation.
    ``torch.func``, forward-mode AD, ``torch.compile``, learnable ``weight`` / ``logit_offset`` /
    ``target_margin`` / ``sample_weight`` and ``backend="reference"`` take plain ``linear`` +
    :func:`softmax_cross_entropy` (logits materialised), as do higher-order gradients.
    """
    fn = "linear_softmax_cross_entropy"
    if sync_normalizer:
        return _linear_synchronised(
            linear_softmax_cross_entropy, hidden, linear_weight, target, weight, linear_bias=linear_bias,
            reduction=reduction, ignore_index=ignore_index, process_group=process_group, fn=fn,
            label_smoothing=label_smoothing, logit_offset=logit_offset, target_margin=target_margin, scale=scale,
            sample_weight=sample_weight, chunk_size=chunk_size, memory_budget=memory_budget, backend=backend)
    return _linear_softmax_family(fn, hidden, linear_weight, target, weight, linear_bias=linear_bias,
                                  reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  logit_offset=logit_offset, target_margin=target_margin, scale=scale, gamma=None,
                                  alpha=None, sample_weight=sample_weight, chunk_size=chunk_size,
                                  memory_budget=memory_budget, backend=backend)


def linear_softmax_focal_loss(hidden: Tensor, linear_weight: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                              *, linear_bias: Optional[Tensor] = None, gamma: float = 2.0, alpha=None,
                              reduction: str = "mean", ignore_index: int = -100,
                              logit_offset: Optional[Tensor] = None, target_margin: Optional[Tensor] = None,
                              scale: float = 1.0, sample_weight: Optional[Tensor] = None,
                              chunk_size: Optional[int] = None, memory_budget: Optional[int] = None,
                              backend: str = "auto", sync_normalizer: bool = False, process_group=None) -> Tensor:
    """:func:`softmax_focal_loss` of ``hidden @ linear_weight.T + linear_bias`` without the logits; the
    head's arguments and the chunking as in :func:`linear_softmax_cross_entropy`."""
    fn = "linear_softmax_focal_loss"
    if sync_normalizer:
        return _linear_synchronised(
            linear_softmax_focal_loss, hidden, linear_weight, target, weight, linear_bias=linear_bias,
            reduction=reduction, ignore_index=ignore_index, process_group=process_group, fn=fn, gamma=gamma,
            alpha=alpha, logit_offset=logit_offset, target_margin=target_margin, scale=scale,
            sample_weight=sample_weight, chunk_size=chunk_size, memory_budget=memory_budget, backend=backend)
    return _linear_softmax_family(fn, hidden, linear_weight, target, weight, linear_bias=linear_bias,
                                  reduction=reduction, ignore_index=ignore_index, label_smoothing=0.0,
                                  logit_offset=logit_offset, target_margin=target_margin, scale=scale, gamma=gamma,
                                  alpha=alpha, sample_weight=sample_weight, chunk_size=chunk_size,
                                  memory_budget=memory_budget, backend=backend)


def _linear_sample_weight(sample_weight, hidden: Tensor, stand_in: Tensor, fn: str) -> Optional[Tensor]:
    """Sample weights of ``hidden``'s leading shape, flattened to the rows (M,)."""
    if isinstance(sample_weight, torch.Tensor) and tuple(sample_weight.shape) == tuple(hidden.shape[:-1]):
        sample_weight = sample_weight.reshape(-1)
    return _check_sample_weight(sample_weight, stand_in, fn)


def _linear_softmax_family(fn: str, hidden: Tensor, linear_weight: Tensor, target: Tensor, weight, *, linear_bias,
                           reduction: str, ignore_index: int, label_smoothing: float, logit_offset, target_margin,
                           scale: float, gamma, alpha, sample_weight, chunk_size, memory_budget,
                           backend: str) -> Tensor:
    rows_h, stand_in = _check_linear(hidden, linear_weight, linear_bias, fn)
    _check_reduction(reduction, fn)
    ignore_index = _check_index(ignore_index, "ignore_index", fn)
    label_smoothing = _check_real(label_smoothing, "label_smoothing", fn, low=0.0, high=1.0)
    scale = _check_real(scale, "scale", fn, low=0.0, low_open=True)
    if gamma is not None:
        gamma = _check_real(gamma, "gamma", fn, low=0.0)
    chunk_size, memory_budget = _check_chunking(chunk_size, memory_budget, fn)
    target = _linear_target(hidden, target, linear_weight.shape[0], stand_in, fn, multi_hot_ok=False)
    weight = _check_class_vector(weight, "weight", stand_in, fn)
    logit_offset = _check_class_vector(logit_offset, "logit_offset", stand_in, fn)
    target_margin = _check_class_vector(target_margin, "target_margin", stand_in, fn)
    alpha = _check_class_alpha(alpha, stand_in, fn)
    sample_weight = _linear_sample_weight(sample_weight, hidden, stand_in, fn)
    _check_target_range(stand_in, target, ignore_index, fn)

    if _linear_unfused_only(backend, stand_in, (hidden, linear_weight, linear_bias),
                            (weight, logit_offset, target_margin, alpha, sample_weight)):
        options = dict(ignore_index=ignore_index, logit_offset=logit_offset, target_margin=target_margin, scale=scale,
                       sample_weight=sample_weight, backend=backend)
        if gamma is None:
            return _linear_unfused(softmax_cross_entropy, hidden, rows_h, linear_weight, linear_bias, target, weight,
                                   reduction, label_smoothing=label_smoothing, **options)
        return _linear_unfused(softmax_focal_loss, hidden, rows_h, linear_weight, linear_bias, target, weight,
                               reduction, gamma=gamma, alpha=alpha, **options)
    loss = _linear.HeadLoss.softmax(target, weight, sample_weight, reduction, ignore_index, logit_offset=logit_offset,
                                    target_margin=target_margin, scale=scale, label_smoothing=label_smoothing,
                                    gamma=gamma, alpha=alpha)
    return _linear_call(loss, hidden, rows_h, linear_weight, linear_bias, chunk_size, memory_budget)


def _linear_sigmoid_family(fn: str, hidden: Tensor, linear_weight: Tensor, target: Tensor, weight: Optional[Tensor], *,
                           linear_bias, gamma: Optional[float], alpha: Optional[float], reduction: str,
                           ignore_index: int, sample_weight, chunk_size, memory_budget, backend: str) -> Tensor:
    rows_h, stand_in = _check_linear(hidden, linear_weight, linear_bias, fn)
    _check_reduction(reduction, fn)
    ignore_index = _check_index(ignore_index, "ignore_index", fn)
    if gamma is not None:
        gamma = _check_real(gamma, "gamma", fn, low=0.0)
    alpha = _check_alpha(alpha, fn)
    chunk_size, memory_budget = _check_chunking(chunk_size, memory_budget, fn)
    target = _linear_target(hidden, target, linear_weight.shape[0], stand_in, fn, multi_hot_ok=True)
    weight = _check_class_vector(weight, "weight", stand_in, fn)
    sample_weight = _linear_sample_weight(sample_weight, hidden, stand_in, fn)
    if not target.is_floating_point():
        _check_target_range(stand_in, target, ignore_index, fn)

    if _linear_unfused_only(backend, stand_in, (hidden, linear_weight, linear_bias), (weight, target, sample_weight)):
        loss_fn = sigmoid_cross_entropy if gamma is None else sigmoid_focal_loss
        extra = {} if gamma is None else {"gamma": gamma, "alpha": alpha}
        return _linear_unfused(loss_fn, hidden, rows_h, linear_weight, linear_bias, target, weight, reduction,
                               ignore_index=ignore_index, sample_weight=sample_weight, backend=backend, **extra)
    loss = _linear.HeadLoss.sigmoid(target, weight, sample_weight, reduction, ignore_index, gamma=gamma, alpha=alpha)
    return _linear_call(loss, hidden, rows_h, linear_weight, linear_bias, chunk_size, memory_budget)


def linear_sigmoid_cross_entropy(hidden: Tensor, linear_weight: Tensor, target: Tensor,
                                 weight: Optional[Tensor] = None, *, linear_bias: Optional[Tensor] = None,
                                 reduction: str = "mean", ignore_index: int = -100,
                                 sample_weight: Optional[Tensor] = None, chunk_size: Optional[int] = None,
                                 memory_budget: Optional[int] = None, backend: str = "auto",
                                 sync_normalizer: bool = False, process_group=None) -> Tensor:
    """:func:`sigmoid_cross_entropy` of ``hidden @ linear_weight.T + linear_bias`` without the logits;
    the head's arguments and the chunking as in :func:`linear_softmax_cross_entropy`. A float target
    of shape (*, C) is multi-hot (``weight`` per column)."""
    fn = "linear_sigmoid_cross_entropy"
    if sync_normalizer:
        return _linear_synchronised(
            linear_sigmoid_cross_entropy, hidden, linear_weight, target, weight, linear_bias=linear_bias,
            reduction=reduction, ignore_index=ignore_index, process_group=process_group, fn=fn,
            sample_weight=sample_weight, chunk_size=chunk_size, memory_budget=memory_budget, backend=backend)
    return _linear_sigmoid_family(fn, hidden, linear_weight, target, weight, linear_bias=linear_bias, gamma=None,
                                  alpha=None, reduction=reduction, ignore_index=ignore_index,
                                  sample_weight=sample_weight, chunk_size=chunk_size, memory_budget=memory_budget,
                                  backend=backend)


def linear_sigmoid_focal_loss(hidden: Tensor, linear_weight: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                              *, linear_bias: Optional[Tensor] = None, gamma: float = 2.0,
                              alpha: Optional[float] = None, reduction: str = "mean", ignore_index: int = -100,
                              sample_weight: Optional[Tensor] = None, chunk_size: Optional[int] = None,
                              memory_budget: Optional[int] = None, backend: str = "auto",
                              sync_normalizer: bool = False, process_group=None) -> Tensor:
    """:func:`sigmoid_focal_loss` of ``hidden @ linear_weight.T + linear_bias`` without the logits;
    the head's arguments and the chunking as in :func:`linear_softmax_cross_entropy`."""
    fn = "linear_sigmoid_focal_loss"
    if sync_normalizer:
        return _linear_synchronised(
            linear_sigmoid_focal_loss, hidden, linear_weight, target, weight, linear_bias=linear_bias,
            reduction=reduction, ignore_index=ignore_index, process_group=process_group, fn=fn, gamma=gamma,
            alpha=alpha, sample_weight=sample_weight, chunk_size=chunk_size, memory_budget=memory_budget,
            backend=backend)
    return _linear_sigmoid_family(fn, hidden, linear_weight, target, weight, linear_bias=linear_bias, gamma=gamma,
                                  alpha=alpha, reduction=reduction, ignore_index=ignore_index,
                                  sample_weight=sample_weight, chunk_size=chunk_size, memory_budget=memory_budget,
                                  backend=backend)

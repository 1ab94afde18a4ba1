"""Per-class weights from whole-training-set class counts.

The class-balanced weight of Cui et al. (CVPR 2019) is the inverse of the *effective number* of
samples, ``E(n) = (1 - beta^n) / (1 - beta)``, normalised so that the weights sum to the number of
classes. ``1 - beta^n`` is computed as ``-expm1(n * log(beta))`` in float64, so beta within
1e-12 of 1 and counts up to 1e9 keep full precision.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

CountsLike = Union[Sequence[int], np.ndarray, torch.Tensor]

__all__ = ["as_counts", "effective_number", "class_balanced_weights", "class_weights", "log_prior", "ldam_margins",
           "SCHEMES"]

SCHEMES = ("none", "inverse", "sqrt_inverse", "cb", "measured")
EMPTY_POLICIES = ("raise", "zero")


def as_counts(counts: CountsLike, name: str = "counts") -> torch.Tensor:
    """Validate class counts and return them as a float64 CPU tensor of shape (C,).

    Counts must be a non-empty 1-D sequence of finite, non-negative whole numbers.
    """
    if isinstance(counts, torch.Tensor):
        if counts.device.type == "meta":
            raise ValueError(f"{name} is a tensor on the meta device, which holds no values; pass the real counts")
        t = counts.detach().to("cpu")
    else:
        try:
            arr = np.asarray(counts)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a 1-D sequence of class counts, got {type(counts).__name__}") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one count per class), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must have at least one class")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()[:10]}")
    if (t < 0).any():
        bad = torch.nonzero(t < 0).flatten().tolist()
        raise ValueError(f"{name} must be non-negative; negative at class index {bad[:10]}")
    if (t != torch.round(t)).any():
        bad = torch.nonzero(t != torch.round(t)).flatten().tolist()
        raise ValueError(f"{name} must be whole numbers; non-integer at class index {bad[:10]}")
    return t


def _real(value, name: str, what: str = "a real number") -> float:
    """``value`` (a Python / NumPy number or a one-element tensor) as a float; TypeError otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be {what}, got {value!r}") from exc


def _check_beta(beta: float) -> float:
    beta = _real(beta, "beta", "a real number in [0, 1)")
    if not (0.0 <= beta < 1.0):  # also rejects NaN
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    return beta


def _one_minus_beta_pow(n: torch.Tensor, beta: float) -> torch.Tensor:
    """``1 - beta**n`` without cancellation (beta in [0, 1))."""
    if beta == 0.0:
        # 0**0 = 1 by convention, so an empty class has 1 - beta^0 = 0.
        return (n > 0).to(torch.float64)
    return -torch.expm1(n * math.log(beta))


def effective_number(counts: CountsLike, beta: float) -> torch.Tensor:
    """Effective number of samples per class, ``(1 - beta^n) / (1 - beta)`` (float64, shape (C,)).

    ``beta = 0`` gives 1 for every non-empty class; ``beta -> 1`` tends to ``n``.
    """
    n = as_counts(counts)
    beta = _check_beta(beta)
    return _one_minus_beta_pow(n, beta) / (1.0 - beta)


def _normalise(raw: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Scale so that the present classes' weights sum to their number; absent ones get 0."""
    raw = torch.where(present, raw, torch.zeros_like(raw))
    total = raw.sum()
    return (raw * (present.sum() / total)).to(torch.float32)


def _empty_mask(n: torch.Tensor, empty: str, who: str, *, why_not_empty: str = "") -> torch.Tensor:
    """The non-empty classes. ``why_not_empty``: for callers without an ``empty`` option, why an
    empty class cannot be handled (then the error does not suggest ``empty='zero'``)."""
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
    present = n > 0
    if not present.any():
        raise ValueError(f"{who}: every class has zero samples")
    if empty == "raise" and not present.all():
        bad = torch.nonzero(~present).flatten().tolist()
        remedy = (why_not_empty or "it would get infinite weight; pass empty='zero' to give empty classes "
                  "weight 0 and normalise over the others")
        raise ValueError(f"{who}: class(es) {bad[:20]} have zero training samples: {remedy}")
    return present


def class_balanced_weights(counts: CountsLike, beta: float, *, empty: str = "raise") -> torch.Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_c)`` normalised to sum to C (float32, (C,)).

    ``empty="raise"`` (default) rejects classes with zero samples; ``empty="zero"`` gives them weight 0
    and normalises the others to sum to the number of non-empty classes.
    """
    n = as_counts(counts)
    beta = _check_beta(beta)
    present = _empty_mask(n, empty, "class_balanced_weights")
    # (1 - beta) cancels in the normalisation; 1 / (1 - beta^n) alone keeps full range.
    denom = _one_minus_beta_pow(n, beta)
    raw = 1.0 / torch.where(present, denom, torch.ones_like(denom))
    return _normalise(raw, present)


def class_weights(counts: CountsLike, scheme: str = "cb", *, beta: float = 0.9999, power: float = 1.0,
                  empty: str = "raise", effective=None) -> torch.Tensor:
    """Per-class weights (float32, (C,), summing to C) under a named re-weighting scheme.

    ``"none"``: all ones. ``"inverse"``: ``n^-power`` (power 1 is inverse frequency).
    ``"sqrt_inverse"``: ``n^-1/2``. ``"cb"``: :func:`class_balanced_weights` with ``beta``.
    ``"measured"``: ``1 / E_c`` with ``effective`` the per-class effective numbers measured from data
    (:func:`cbbench.effective_number_from_features`, its result or its ``effective_number``), > 0 for
    every class with samples (an empty class's value is not read).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if effective is not None and scheme != "measured":
        raise ValueError(f"effective is the input of scheme='measured', not of scheme={scheme!r}")
    if scheme == "cb":
        return class_balanced_weights(counts, beta, empty=empty)
    n = as_counts(counts)
    if scheme == "measured":
        return _measured_weights(n, effective, empty)
    if scheme == "none":
        return torch.ones(n.numel(), dtype=torch.float32)
    if scheme == "sqrt_inverse":
        power = 0.5
    power = _real(power, "power")
    if not math.isfinite(power) or power < 0:
        raise ValueError(f"power must be a finite number >= 0, got {power!r}")
    present = _empty_mask(n, empty, f"class_weights(scheme={scheme!r})")
    raw = torch.where(present, n, torch.ones_like(n)).pow(-power)
    return _normalise(raw, present)


def _measured_weights(n: torch.Tensor, effective, empty: str) -> torch.Tensor:
    if effective is None:
        raise ValueError("scheme='measured' needs effective= (the per-class effective numbers measured from data, "
                         "e.g. cbbench.effective_number_from_features(...))")
    if hasattr(effective, "effective_number"):  # the measurement itself
        effective = effective.effective_number
    e = as_real_vector(effective, "effective")
    if e.numel() != n.numel():
        raise ValueError(f"effective has {e.numel()} values for {n.numel()} classes")
    present = _empty_mask(n, empty, "class_weights(scheme='measured')")
    bad = present & ~(e > 0)
    if bad.any():
        idx = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"class_weights(scheme='measured'): effective must be > 0 for every class with samples; "
                         f"class(es) {idx[:20]} have {e[idx[:20]].tolist()}")
    raw = 1.0 / torch.where(present, e, torch.ones_like(e))
    return _normalise(raw, present)


def as_real_vector(values, name: str) -> torch.Tensor:
    """A 1-D vector of finite real numbers as a float64 CPU tensor (TypeError / ValueError otherwise)."""
    if isinstance(values, torch.Tensor):
        if values.device.type == "meta":
            raise ValueError(f"{name} is a tensor on the meta device, which holds no values")
        t = values.detach().to("cpu")
    else:
        try:
            arr = np.asarray(values)
        except Exception as exc:
            raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}") from exc
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per class), got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()[:10]}")
    return t


def log_prior(counts: CountsLike) -> torch.Tensor:
    """``log(n_c / sum n)`` (float32, (C,)): the logit adjustment of Menon et al. (tau = 1).

    Every class needs at least one sample (``log 0`` would be ``-inf``).
    """
    n = as_counts(counts)
    _empty_mask(n, "raise", "log_prior", why_not_empty="its log prior would be log 0 = -inf; every class needs "
                "at least one training sample (drop empty classes from the label set)")
    return (torch.log(n) - torch.log(n.sum())).to(torch.float32)


def ldam_margins(counts: CountsLike, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM per-class margins ``Delta_c ~ n_c^(-1/4)``, scaled so the largest is ``max_margin`` (float32)."""
    n = as_counts(counts)
    _empty_mask(n, "raise", "ldam_margins", why_not_empty="its margin n^(-1/4) would be infinite; every class "
                "needs at least one training sample (drop empty classes from the label set)")
    max_margin = _real(max_margin, "max_margin")
    if not math.isfinite(max_margin) or max_margin < 0:
        raise ValueError(f"max_margin must be a finite number >= 0, got {max_margin!r}")
    raw = n.pow(-0.25)
    return (raw * (max_margin / raw.max())).to(torch.float32)

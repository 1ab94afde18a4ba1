"""The effective number of samples measured from features: the volume each class's data cover.

Cui et al. (CVPR 2019) model a class as ``N_c`` unit-volume prototypes; after ``n`` draws the expected
number covered is ``N_c (1 - (1 - 1/N_c)^n)`` = ``(1 - beta^n) / (1 - beta)`` with
``beta = (N_c - 1) / N_c`` (docs/design.md, "Math"). The paper never measures ``N_c``: it tunes one beta
per dataset. :func:`effective_number_from_features` measures the covered volume instead:

1. features are L2-normalised (``normalize=True``), so the measure ignores the length of a feature
   vector, and exact duplicates (equal rows) are merged -- a repeated sample adds nothing;
2. the unit radius ``r`` is a quantile of the distance between two views (augmentations) of the same
   sample, which the paper counts as one sample (``features_aug``; default quantile 0.99); without a
   second view, a quantile of the distance of each sample to its nearest distinct neighbour in the
   largest class (default 0.99), which assumes that class holds near-duplicates; or ``radius``;
3. per class, a greedy radius cover: samples are taken from the densest (most neighbours within ``r``)
   to the sparsest, and each opens a new centre unless it lies within ``r`` of one. The number of
   centres is the observed effective number ``E_c``. Taking dense samples first puts a centre in the
   middle of each group of near-duplicates, so one centre covers the group (in input order, an edge
   sample of a group opens a centre and the far side of the group opens more);
4. the occupancy curve is inverted per class (``N_c`` with ``N_c (1 - (1 - 1/N_c)^n_c) = E_c``,
   ``beta_c = 1 - 1/N_c``) and fitted across classes by least squares in ``log E`` (one dataset beta, to
   set beside a tuned one).

Not single-linkage or connected components (chains of near points merge a whole class as the noise
grows); not Chao1 (unstable while ``n << N``); not a kernel (Vendi / log-det) volume (its level moves
with the kernel width).

The result does not depend on the order of the samples, on exact duplicates, or (with the default
normalisation) on the scale of the features. Distances are computed in blocks of at most
``max(block_elements, 256)`` entries (torch matrix products, CPU or GPU), and the features are
normalised as they are gathered, class by class: memory is linear in the number of samples (the
features given, plus one class's rows and O(N) indices). Time is ``O(D sum_c n_c min(n_c, R))`` for the
density (``R`` = ``density_reference``) plus ``O(D sum_c n_c E_c)`` for the cover: quadratic in the size of
a class whose samples are all distinct.

Under ``torch.distributed`` (more than one rank) the measurement is made once, on rank ``src``, and
broadcast: every rank returns rank ``src``'s result (pass the same data on every rank; the other ranks'
arrays are not read).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from .weights import as_counts

__all__ = ["METHODS", "ORDERS", "MeasuredEffectiveNumber", "effective_number_from_features", "prototypes_for",
           "fit_dataset_beta", "expected_distinct"]

METHODS = ("cover",)
ORDERS = ("density", "random")
AUG_QUANTILE = 0.99  # views of one sample: nearly all of them must fall within r of each other
# nearest distinct neighbours: the nearest of a sample's near-duplicates is closer than a typical one, so a
# high quantile; on prototypes-LT development data (data seed 100, not the validation seeds) the median gave
# E ~2.2x the truth, 0.9 ~1.7x, 0.99 ~1.2x. Needs most samples of the largest class to have a near-duplicate.
NN_QUANTILE = 0.99
DEFAULT_BLOCK_ELEMENTS = 1 << 22  # 4 M distances per block: 16 MiB in float32
DEFAULT_DENSITY_REFERENCE = 8192


@dataclass
class MeasuredEffectiveNumber:
    """What :func:`effective_number_from_features` measured (CPU tensors, float64 unless stated).

    ``effective_number`` (C,): centres of the cover per class (0 for a class without samples).
    ``counts`` (C,): samples per class; ``distinct`` (C,): distinct (normalised) feature vectors.
    ``radius``: the unit radius used, in the units of the (normalised) features; ``radius_source`` says
    where it came from. ``centres``: per class, the indices (int64, into the rows given) of the
    samples that are the cover's centres. ``prototypes`` (C,): ``N_c`` fitted to the occupancy curve
    (``inf`` where every sample is its own centre, ``nan`` where a class has fewer than 2 samples);
    ``beta`` (C,): ``1 - 1/N_c``. ``dataset_beta``: the one beta whose ``(1 - beta^n) / (1 - beta)``
    fits ``E_c`` across classes best (least squares in ``log E``, classes with >= 2 samples).
    """

    effective_number: torch.Tensor
    counts: torch.Tensor
    distinct: torch.Tensor
    radius: float
    radius_source: str
    centres: List[torch.Tensor]
    prototypes: torch.Tensor
    beta: torch.Tensor
    dataset_beta: Optional[float]
    method: str = "cover"
    normalize: bool = True
    order: str = "density"
    seconds: float = 0.0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.counts.numel())

    def weights(self, empty: str = "raise") -> torch.Tensor:
        """Per-class weights ``1 / E_c`` with the normalisation and empty-class policy of
        :func:`cbbench.class_weights` (scheme ``"measured"``)."""
        from .weights import class_weights

        return class_weights(self.counts, "measured", effective=self.effective_number, empty=empty)

    def to_dict(self, centres: bool = False) -> dict:
        """A JSON-serialisable summary (provenance of weights); ``centres=True`` adds the centre indices."""
        def floats(t):  # JSON has no inf / nan: "inf" (every sample its own centre), None (fewer than 2 samples)
            return [float(v) if math.isfinite(v) else ("inf" if v > 0 else None) for v in t.tolist()]

        out = {"method": self.method, "normalize": self.normalize, "order": self.order, "radius": self.radius,
               "radius_source": self.radius_source, "counts": [int(v) for v in self.counts.tolist()],
               "distinct": [int(v) for v in self.distinct.tolist()],
               "effective_number": [int(v) for v in self.effective_number.tolist()],
               "prototypes": floats(self.prototypes), "beta": floats(self.beta), "dataset_beta": self.dataset_beta,
               "seconds": round(self.seconds, 3), "device": self.device, **self.extra}
        if centres:
            out["centres"] = [c.tolist() for c in self.centres]
        return out


def expected_distinct(n, prototypes) -> np.ndarray:
    """``N (1 - (1 - 1/N)^n)``: prototypes covered on average by ``n`` uniform draws among ``N`` (float64;
    ``N = inf`` gives ``n``)."""
    n = np.asarray(n, dtype=np.float64)
    big_n = np.asarray(prototypes, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        finite = big_n * -np.expm1(n * np.log1p(-1.0 / big_n))
    return np.where(np.isinf(big_n), n, np.where(big_n == 1.0, np.minimum(n, 1.0), finite))


def prototypes_for(effective, counts) -> np.ndarray:
    """``N_c`` solving ``N (1 - (1 - 1/N)^n_c) = E_c`` per class (float64): ``inf`` when ``E_c = n_c >= 2``,
    1 when ``E_c = 1 < n_c``, ``nan`` when ``n_c < 2`` (one draw says nothing about ``N``) or ``E_c`` is
    outside ``[1, n_c]``."""
    e = np.atleast_1d(np.asarray(effective, dtype=np.float64))
    n = np.atleast_1d(np.asarray(counts, dtype=np.float64))
    out = np.full(e.shape, np.nan)
    valid = (n >= 2) & (e >= 1) & (e <= n)
    out[valid & (e >= n)] = math.inf
    out[valid & (e <= 1) & (e < n)] = 1.0
    solve = valid & (e > 1) & (e < n)
    if solve.any():
        es, ns = e[solve], n[solve]
        # E(N) increases in N from 1 (N = 1) to n (N -> inf): bracket log N, then bisect to float64 resolution
        lo = np.log(es)
        hi = lo + 1.0
        while True:
            short = expected_distinct(ns, np.exp(hi)) < es
            if not short.any():
                break
            hi = np.where(short, hi + 2.0 * (hi - lo) + 1.0, hi)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = expected_distinct(ns, np.exp(mid)) < es
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo < 1e-13):
                break
        out[solve] = np.exp(0.5 * (lo + hi))
    return out


def _log_cb_effective(n: np.ndarray, beta: float) -> np.ndarray:
    """``log((1 - beta^n) / (1 - beta))``, stable for beta near 0 and 1."""
    if beta <= 0.0:
        return np.zeros_like(n)
    return np.log(-np.expm1(n * math.log(beta))) - math.log1p(-beta)


def fit_dataset_beta(effective, counts) -> Optional[float]:
    """The beta in [0, 1) minimising ``sum_c (log E_c - log((1 - beta^n_c) / (1 - beta)))^2`` over the
    classes with ``n_c >= 2`` (``None`` when there is none). Searched on ``t = -log10(1 - beta)`` in
    [0, 12]: a grid, then golden-section refinement around the best grid point."""
    e = np.asarray(effective, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    keep = (n >= 2) & (e >= 1)
    if not keep.any():
        return None
    log_e, n = np.log(e[keep]), n[keep]

    def loss(t):
        beta = 0.0 if t <= 0 else -math.expm1(-t * math.log(10.0))
        return float(np.sum((log_e - _log_cb_effective(n, beta)) ** 2))

    grid = np.linspace(0.0, 12.0, 1201)
    values = [loss(t) for t in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = loss(b)
    t = min((grid[best], values[best]), (0.5 * (lo + hi), loss(0.5 * (lo + hi))), key=lambda tv: tv[1])[0]
    return 0.0 if t <= 0 else float(-math.expm1(-t * math.log(10.0)))


# --------------------------------------------------------------------------------------------------
# input checks


def _as_features(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array of shape (N, D), got {type(x).__name__}")
    if x.is_sparse or x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {x.layout}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature, got shape {tuple(x.shape)}")
    return x.detach()


def _as_labels(labels, n: int, num_classes: int) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        if not (np.issubdtype(labels.dtype, np.integer)):
            raise TypeError(f"labels must be whole numbers (an integer array), got dtype {labels.dtype}")
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch tensor or numpy array of shape (N,), got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"labels must have shape ({n},) (one per feature row), got {tuple(labels.shape)}")
    labels = labels.detach().to("cpu", torch.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()[:10]
        raise ValueError(f"labels must be in [0, {num_classes}); out of range at row(s) {bad.tolist()} "
                         f"(values {labels[bad].tolist()})")
    return labels


def _whole(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _fraction(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# distances in blocks


class _Rows:
    """Feature rows on the compute device with their squared norms, for blocked squared distances."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.sq = (x * x).sum(dim=1)

    def __len__(self):
        return self.x.shape[0]

    def take(self, idx: torch.Tensor) -> "_Rows":
        r = _Rows.__new__(_Rows)
        r.x, r.sq = self.x[idx], self.sq[idx]
        return r


def _sq_dist(a: _Rows, b: _Rows) -> torch.Tensor:
    """(len a, len b) squared Euclidean distances, ``|a|^2 + |b|^2 - 2 a.b`` by one matrix product."""
    d = torch.addmm(a.sq[:, None] + b.sq[None, :], a.x, b.x.T, alpha=-2.0)
    return d.clamp_min_(0.0)


def _block_rows(cols: int, budget: int) -> int:
    return max(1, budget // max(cols, 1))


def _density(rows: _Rows, reference: _Rows, r2: float, budget: int):
    """Per row: neighbours among ``reference`` within squared distance ``r2``, and the sum of their
    squared distances (the tie-break: at equal counts, the more central row first)."""
    m = len(rows)
    count = torch.empty(m, dtype=torch.int64, device=rows.x.device)
    spread = torch.empty(m, dtype=torch.float64, device=rows.x.device)
    step = _block_rows(len(reference), budget)
    for s in range(0, m, step):
        d = _sq_dist(rows.take(torch.arange(s, min(s + step, m), device=rows.x.device)), reference)
        near = d <= r2
        count[s:s + step] = near.sum(dim=1)
        spread[s:s + step] = torch.where(near, d, torch.zeros_like(d)).sum(dim=1, dtype=torch.float64)
    return count, spread


def _nearest_distinct(rows: _Rows, queries: torch.Tensor, budget: int) -> torch.Tensor:
    """Distance from each query row (indices into ``rows``, distinct vectors) to its nearest other row."""
    out = torch.empty(len(queries), dtype=torch.float64, device=rows.x.device)
    step = _block_rows(len(rows), budget)
    for s in range(0, len(queries), step):
        q = queries[s:s + step]
        d = _sq_dist(rows.take(q), rows)
        d[torch.arange(len(q), device=d.device), q] = math.inf
        out[s:s + step] = d.min(dim=1).values.to(torch.float64)
    return out.sqrt()


def _cover(rows: _Rows, order: torch.Tensor, r2: float, budget: int) -> torch.Tensor:
    """Greedy radius cover in ``order``: a row opens a centre unless within squared distance ``r2`` of
    one. Returns the centres' indices into ``rows``, in the order they opened."""
    m = len(rows)
    device = rows.x.device
    centre_idx = torch.empty(m, dtype=torch.int64, device=device)
    centres = _Rows.__new__(_Rows)
    centres.x = torch.empty_like(rows.x)
    centres.sq = torch.empty_like(rows.sq)
    found = 0
    block = int(min(1024, max(16, math.isqrt(budget))))  # the in-block candidate matrix is block^2
    for s in range(0, m, block):
        idx = order[s:s + block]
        blk = rows.take(idx)
        covered = torch.zeros(len(idx), dtype=torch.bool, device=device)
        step = _block_rows(len(idx), budget)
        for c in range(0, found, step):
            part = _Rows.__new__(_Rows)
            part.x, part.sq = centres.x[c:min(c + step, found)], centres.sq[c:min(c + step, found)]
            covered |= (_sq_dist(blk, part) <= r2).any(dim=1)
        cand = torch.nonzero(~covered).flatten()
        if not len(cand):
            continue
        near = (_sq_dist(blk.take(cand), blk.take(cand)) <= r2).cpu().numpy()
        alive = np.ones(len(cand), dtype=bool)
        opened = []
        for i in range(len(cand)):  # in order: a candidate still uncovered opens a centre
            if alive[i]:
                opened.append(i)
                alive &= ~near[i]
        new = cand[torch.as_tensor(opened, dtype=torch.int64, device=device)]
        centre_idx[found:found + len(new)] = idx[new]
        centres.x[found:found + len(new)] = blk.x[new]
        centres.sq[found:found + len(new)] = blk.sq[new]
        found += len(new)
    return centre_idx[:found]


class _Features:
    """Feature rows as given (on the compute device), L2-normalised on the fly when gathered: no
    normalised copy of all N rows is kept (memory linear in N with a small constant)."""

    def __init__(self, x: torch.Tensor, name: str, normalize: bool, budget: int):
        self.x, self.name, self.normalize = x, name, normalize
        self.step = _block_rows(x.shape[1], max(budget, x.shape[1]))
        self.norms = None
        bad, zero = [], []
        for s in range(0, len(x), self.step):
            block = x[s:s + self.step]
            bad += (s + torch.nonzero(~torch.isfinite(block).all(dim=1)).flatten()).tolist()
            if normalize and not bad:
                zero += (s + torch.nonzero((block == 0).all(dim=1)).flatten()).tolist()
        if bad:
            raise ValueError(f"{name} must be finite; NaN or inf in row(s) {bad[:10]}")
        if zero:
            raise ValueError(f"{name}: row(s) {zero[:10]} are all zero and cannot be L2-normalised; drop them or "
                             "pass normalize=False")
        if normalize:
            self.norms = torch.cat([x[s:s + self.step].norm(dim=1) for s in range(0, len(x), self.step)]) \
                if len(x) else x.new_empty(0)

    def __len__(self):
        return self.x.shape[0]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The (normalised) rows ``idx``, a new tensor."""
        out = self.x[idx]
        return out / self.norms[idx, None] if self.normalize else out

    def hashes(self, salt: int) -> np.ndarray:
        """(N, 2) uint64 hashes of the bytes of every row as given (-0.0 counted as 0.0), in blocks: equal
        rows hash equally wherever they are, whatever their position or the block they fall in."""
        width = 8 if self.x.element_size() == 8 else 4
        rng = np.random.RandomState(salt)
        mult = rng.randint(1, 2 ** 62, size=(2, self.x.shape[1]), dtype=np.int64).astype(np.uint64) * 2 + 1
        out = np.empty((len(self.x), 2), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for s in range(0, len(self.x), self.step):
                block = (self.x[s:s + self.step] + 0.0).cpu().numpy()
                words = block.view(np.uint64 if width == 8 else np.uint32).astype(np.uint64)
                out[s:s + self.step, 0] = (words * mult[0]).sum(axis=1)  # wraps modulo 2^64
                out[s:s + self.step, 1] = ((words ^ (words >> np.uint64(7))) * mult[1]).sum(axis=1)
        return out


def _unique_rows(*views: _Features):
    """Distinct rows (a row: its values in every one of ``views``, e.g. a sample and its second view):
    the index of one row of each, in a canonical order that does not depend on the order of the rows (a
    pseudo-random order: sorted by hashes of the rows' bytes), and, per row, the position of its distinct
    row in that list. Rows with equal hashes are compared in full, so only truly equal rows merge."""
    keys = np.concatenate([v.hashes(salt) for salt, v in enumerate(views)], axis=1)
    order = np.lexsort(keys.T[::-1])
    keys = keys[order]
    n = len(order)
    equal = np.zeros(max(n - 1, 0), dtype=bool)
    candidates = np.nonzero(np.all(keys[1:] == keys[:-1], axis=1))[0]
    if len(candidates):
        device = views[0].x.device
        left = torch.as_tensor(order[candidates], device=device)
        right = torch.as_tensor(order[candidates + 1], device=device)
        same = torch.ones(len(candidates), dtype=torch.bool, device=device)
        for v in views:
            for s in range(0, len(candidates), v.step):
                same[s:s + v.step] &= (v.x[left[s:s + v.step]] == v.x[right[s:s + v.step]]).all(dim=1)
        equal[candidates] = same.cpu().numpy()
    new_group = np.concatenate([[True], ~equal]) if n else np.zeros(0, dtype=bool)
    first = order[new_group]
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(new_group) - 1
    return first, inverse


def _density_order(count: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Densest first; at equal counts the smaller spread (the more central); then the canonical order."""
    keys = (np.arange(len(count)), spread.cpu().numpy(), -count.cpu().numpy())
    return torch.as_tensor(np.lexsort(keys))


# --------------------------------------------------------------------------------------------------
# the measurement


def effective_number_from_features(features, labels, num_classes: int, *, method: str = "cover",
                                   radius: Optional[float] = None, features_aug=None,
                                   quantile: Optional[float] = None, normalize: bool = True,
                                   order: str = "density", seed: int = 0, device=None,
                                   block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                                   density_reference: int = DEFAULT_DENSITY_REFERENCE,
                                   src: int = 0, group=None) -> MeasuredEffectiveNumber:
    """Measure each class's effective number of samples from its features (see the module docstring).

    ``features`` (N, D) and ``labels`` (N,) in ``[0, num_classes)``: tensors (any device) or numpy
    arrays. ``features_aug`` (N, D): a second view of every row (e.g. another augmentation of the same
    image), used only to set the radius. ``radius``: the unit radius itself (in normalised-feature
    units when ``normalize``); otherwise ``quantile`` of the view distances (default 0.99) or of the
    nearest-distinct-neighbour distances in the largest class (default 0.99). ``order``: ``"density"``
    (default) or ``"random"`` (a seeded shuffle of the distinct rows, for comparison). ``device``:
    where the distances are computed (default: the features' device). Classes without samples get
    ``E_c = 0``; :meth:`MeasuredEffectiveNumber.weights` then applies the empty-class policy.
    """
    from . import distributed

    if distributed.world_size(group) > 1:
        return _measure_once_and_broadcast(features, labels, num_classes, src, group, method=method, radius=radius,
                                           features_aug=features_aug, quantile=quantile, normalize=normalize,
                                           order=order, seed=seed, device=device, block_elements=block_elements,
                                           density_reference=density_reference)
    return _measure(features, labels, num_classes, method=method, radius=radius, features_aug=features_aug,
                    quantile=quantile, normalize=normalize, order=order, seed=seed, device=device,
                    block_elements=block_elements, density_reference=density_reference)


def _measure_once_and_broadcast(features, labels, num_classes, src, group, **options):
    """Rank ``src`` measures; every rank gets its result, or raises the error it raised."""
    from . import distributed

    outcome = None
    if distributed.rank(group) == src:
        try:
            outcome = ("ok", _measure(features, labels, num_classes, **options))
        except (ValueError, TypeError) as exc:
            outcome = ("error", type(exc).__name__, str(exc))
        except BaseException as exc:  # the other ranks must not wait for a broadcast that never comes
            distributed.broadcast_object(("error", "RuntimeError", f"rank {src} failed: {type(exc).__name__}: {exc}"),
                                         src=src, group=group)
            raise
    outcome = distributed.broadcast_object(outcome, src=src, group=group)
    if outcome[0] == "ok":
        return outcome[1]
    raise {"ValueError": ValueError, "TypeError": TypeError}.get(outcome[1], RuntimeError)(outcome[2])


def _measure(features, labels, num_classes, *, method, radius, features_aug, quantile, normalize, order, seed,
             device, block_elements, density_reference) -> MeasuredEffectiveNumber:
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    num_classes = _whole(num_classes, "num_classes", 1)
    budget = _whole(block_elements, "block_elements", 1)
    density_reference = _whole(density_reference, "density_reference", 1)
    seed = _whole(seed, "seed", 0)
    x = _as_features(features, "features")
    n = x.shape[0]
    y = _as_labels(labels, n, num_classes)
    aug = None
    if features_aug is not None:
        aug = _as_features(features_aug, "features_aug")
        if aug.shape != x.shape:
            raise ValueError(f"features_aug must have the shape of features {tuple(x.shape)} (a second view of "
                             f"every row), got {tuple(aug.shape)}")
    if radius is not None and (features_aug is not None or quantile is not None):
        raise ValueError("pass radius, or a way to derive it (features_aug and/or quantile), not both")
    if quantile is not None:
        quantile = _fraction(quantile, "quantile")
    if radius is not None:
        try:
            radius = float(radius)
        except (TypeError, ValueError):
            raise TypeError(f"radius must be a number >= 0, got {radius!r}") from None
        if not math.isfinite(radius) or radius < 0:
            raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    dev = torch.device(device) if device is not None else x.device
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    x = _Features(x.to(dev, dtype), "features", bool(normalize), budget)
    if aug is not None:
        aug = _Features(aug.to(dev, dtype), "features_aug", bool(normalize), budget)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)

    # distinct rows, per class, in a canonical order (independent of the input order)
    first, _ = _unique_rows(x)
    distinct_label = y.numpy()[first]
    per_class = [first[distinct_label == c] for c in range(num_classes)]  # indices into the rows given
    distinct = torch.tensor([len(p) for p in per_class], dtype=torch.int64)

    radius, source = _radius(radius, quantile, x, per_class, aug, budget, density_reference, counts)
    r2 = radius * radius
    rng = np.random.RandomState(seed)
    centres, effective = [], torch.zeros(num_classes, dtype=torch.float64)
    for c, members in enumerate(per_class):
        if not len(members):
            centres.append(torch.empty(0, dtype=torch.int64))
            continue
        cls = _Rows(x.rows(torch.as_tensor(members, device=dev)))
        if order == "random":
            local = _cover(cls, torch.as_tensor(rng.permutation(len(members)), device=dev), r2, budget)
        else:
            ref_idx = torch.arange(len(members), device=dev)
            if len(members) > density_reference:  # an evenly spaced subset of the canonical order
                ref_idx = torch.linspace(0, len(members) - 1, density_reference, device=dev).round().long()
            count, spread = _density(cls, cls.take(ref_idx), r2, budget)
            local = _cover(cls, _density_order(count, spread).to(dev), r2, budget)
        effective[c] = len(local)
        centres.append(torch.as_tensor(members[local.cpu().numpy()], dtype=torch.int64))
    present = counts.numpy()
    protos = prototypes_for(effective.numpy(), present)
    with np.errstate(divide="ignore"):
        betas = np.where(np.isnan(protos), np.nan, 1.0 - 1.0 / protos)
    dataset_beta = fit_dataset_beta(effective.numpy(), present)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return MeasuredEffectiveNumber(effective, counts, distinct, float(radius), source, centres,
                                   torch.from_numpy(protos), torch.from_numpy(betas), dataset_beta, method,
                                   bool(normalize), order, time.perf_counter() - start, str(dev))


def _radius(radius, quantile, x: _Features, per_class, aug: Optional[_Features], budget, reference, counts):
    """The unit radius and a sentence saying where it came from."""
    if radius is not None:
        return radius, "given"
    if aug is not None:
        q = AUG_QUANTILE if quantile is None else quantile
        keep, _ = _unique_rows(x, aug)  # a duplicated sample (both views) counts once
        keep = torch.as_tensor(keep, device=x.x.device)
        d = torch.cat([(x.rows(keep[s:s + x.step]) - aug.rows(keep[s:s + x.step])).norm(dim=1).to(torch.float64)
                       for s in range(0, len(keep), x.step)])
        return float(np.quantile(d.cpu().numpy(), q)), (f"quantile {q:g} of the distance between two views of a "
                                                        f"sample ({len(keep)} distinct pairs)")
    q = NN_QUANTILE if quantile is None else quantile
    # the largest class (by samples) with at least two distinct feature vectors
    ranked = sorted(range(len(per_class)), key=lambda c: (-counts[c].item(), c))
    for c in ranked:
        members = per_class[c]
        if len(members) >= 2:
            break
    else:
        raise ValueError("cannot derive a radius: no class has two distinct feature vectors; pass radius= or "
                         "features_aug=")
    cls = _Rows(x.rows(torch.as_tensor(members, device=x.x.device)))
    queries = torch.arange(len(members), device=x.x.device)
    if len(members) > reference:
        queries = torch.linspace(0, len(members) - 1, reference, device=x.x.device).round().long()
    d = _nearest_distinct(cls, queries, budget)
    return float(np.quantile(d.cpu().numpy(), q)), (f"quantile {q:g} of the nearest-distinct-neighbour distances in "
                                               f"class {c} (the largest, {len(members)} distinct samples)")

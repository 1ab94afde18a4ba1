"""Benchmark cases (loss x shape x dtype x device) and their inputs.

Every implementation of a case computes the same number: softmax with PyTorch's weighted-mean
reduction (``sum_i w_{y_i} l_i / sum_i w_{y_i}``, the quantity ``F.cross_entropy(weight=w)`` and Liger
compute), sigmoid, focal and softmax focal with the paper's mean (sum / N, LDAM-DRW's ``FocalLoss``). Class weights are the
class-balanced weights (beta 0.9999) of a long-tailed count vector with imbalance factor 100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Tuple

import torch

from ..harness.datasets import long_tailed_counts
from ..weights import class_balanced_weights

LOSSES = ("softmax", "sigmoid", "focal", "softmax_focal")
LOSS_TITLES = {"softmax": "CB softmax CE", "sigmoid": "CB sigmoid CE", "focal": "CB focal",
               "softmax_focal": "CB softmax focal"}
REDUCTION = {"softmax": "weighted_mean", "sigmoid": "mean", "focal": "mean", "softmax_focal": "mean"}
FOCAL_GAMMA = 2.0
CB_BETA = 0.9999
IMBALANCE = 100.0

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


@dataclass(frozen=True)
class Case:
    loss: str
    n: int
    c: int
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def shape(self) -> str:
        return f"{self.n}x{self.c}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    def label(self) -> str:
        return f"{self.loss} {self.shape} {DTYPE_SHORT[self.dtype]} {self.device}"


def parse_shape(text: str) -> Tuple[int, int]:
    """``"8192x1000"`` -> ``(8192, 1000)``."""
    try:
        n, c = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"shape must look like NxC (e.g. 8192x1000), got {text!r}") from exc
    if n < 1 or c < 1:
        raise ValueError(f"shape must have N >= 1 and C >= 1, got {text!r}")
    return n, c


# ----------------------------------------------------------------------------------------------
# The case table: every shape any benchmark times, and which sets it belongs to.
#   main          `make bench` (`cbbench bench`): the training-size shapes and one large shape per loss
#   full          `cbbench bench --full` and the speed runner (`python -m cbbench.bench.speed`) by default
#   quick         `cbbench bench --quick` and `python -m cbbench.bench.speed --quick`: a smoke run
#   asv           the asv speed suite (benchmarks/bench_speed.py)
#   memory        the asv memory suite (benchmarks/bench_memory.py)
#   micro         the pytest-benchmark micro-benchmarks (benchmarks/micro)
# The GPU shapes are those of the peer table in docs/design.md ("Performance model"); the CPU ones are
# sized for a 2-core machine and include the training-size shapes (N 8-256, C 10-1000) where per-call
# overhead, not the kernel, decides.
# ----------------------------------------------------------------------------------------------
SETS = ("quick", "main", "full", "asv", "memory", "micro")


@dataclass(frozen=True)
class TableRow:
    loss: str
    shape: str
    dtype: str
    device: str
    sets: FrozenSet[str]


def _rows(device: str, loss: str, entries) -> List[TableRow]:
    rows = []
    for shape, dtype, sets in entries:
        names = frozenset(sets.split())
        unknown = names - set(SETS)
        if unknown:
            raise ValueError(f"unknown case set(s) {sorted(unknown)} for {loss} {shape}")
        rows.append(TableRow(loss, shape, dtype, device, names))
    return rows


CASE_TABLE: Tuple[TableRow, ...] = tuple(
    _rows("cpu", "softmax", [
        ("8x10", "float32", "quick main full asv micro"),
        ("128x10", "float32", "quick full asv micro"),
        ("128x100", "float32", "quick main full asv micro"),
        ("256x1000", "float32", "quick main full asv micro"),
        ("8192x1000", "float32", "quick main full asv memory micro"),
        ("65536x10", "float32", "full"),
        ("1024x8142", "float32", "full"),
        ("8192x1000", "bfloat16", "full"),
    ])
    + _rows("cpu", "sigmoid", [
        ("128x100", "float32", "full asv"),
        ("8192x1000", "float32", "quick main full asv memory micro"),
        ("16384x80", "float32", "full"),
    ])
    + _rows("cpu", "focal", [
        ("128x100", "float32", "full asv"),
        ("8192x1000", "float32", "quick main full asv memory micro"),
        ("16384x80", "float32", "full"),
        ("2048x1203", "float32", "full"),
    ])
    + _rows("cpu", "softmax_focal", [
        ("256x1000", "float32", "full asv micro"),
        ("8192x1000", "float32", "full asv memory micro"),
    ])
    + _rows("cuda", "softmax", [
        ("256x1000", "float32", "quick main full asv micro"),
        ("65536x1000", "float32", "quick main full asv memory micro"),
        ("16384x8142", "float32", "full asv"),
        ("4096x131072", "float32", "full asv"),
        ("65536x1000", "bfloat16", "quick main full asv"),
        ("65536x1000", "float16", "full"),
    ])
    + _rows("cuda", "sigmoid", [
        ("1048576x80", "float32", "quick main full asv memory micro"),
        ("16384x1203", "bfloat16", "full asv"),
    ])
    + _rows("cuda", "focal", [
        ("1048576x80", "float32", "quick main full asv memory micro"),
        ("16384x1203", "float32", "full"),
        ("16384x1203", "bfloat16", "quick main full asv"),
    ])
    + _rows("cuda", "softmax_focal", [
        ("65536x1000", "float32", "full asv memory micro"),
        ("65536x1000", "bfloat16", "full asv"),
    ])
)
DEVICES = ("cpu", "cuda")


def suite(device: str, quick: bool = False, losses=LOSSES, *, set_name: Optional[str] = None) -> List[Case]:
    """The cases of ``device`` ("cpu" or "cuda") in one set of :data:`CASE_TABLE`: ``set_name``, or
    "quick" / "full" by ``quick``; in the table's order, for ``losses``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    name = set_name or ("quick" if quick else "full")
    if name not in SETS:
        raise ValueError(f"set_name must be one of {SETS}, got {name!r}")
    losses = tuple(losses)
    for loss in losses:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return [Case(row.loss, *parse_shape(row.shape), row.dtype, device)
            for loss in losses for row in CASE_TABLE
            if row.device == device and row.loss == loss and name in row.sets]


def case_id(case: Case) -> str:
    """The short name of a case as benchmark parameters show it: ``"8192x1000 fp32"``."""
    return f"{case.shape} {DTYPE_SHORT[case.dtype]}"


def parse_case_id(text: str, loss: str, device: str) -> Case:
    """Inverse of :func:`case_id` for ``loss`` on ``device``."""
    shape, _, dtype = text.partition(" ")
    names = {short: name for name, short in DTYPE_SHORT.items()}
    if dtype not in names:
        raise ValueError(f"case must look like 'NxC fp32|bf16|fp16|fp64', got {text!r}")
    return Case(loss, *parse_shape(shape), names[dtype], device)


def long_tail_counts(num_classes: int, imbalance: float = IMBALANCE, n_max: int = 5000) -> torch.Tensor:
    """The long-tailed CIFAR profile of the harness, :func:`cbbench.harness.datasets.long_tailed_counts`
    (``int(n_max * (1/IF)^(i/(C-1)))`` per class), as an int64 tensor."""
    return torch.tensor(long_tailed_counts(n_max, num_classes, imbalance), dtype=torch.int64)


@dataclass
class Inputs:
    logits: torch.Tensor   # (N, C) leaf of the case's dtype, requires grad
    target: torch.Tensor   # (N,) int64 class indices
    weight: torch.Tensor   # (C,) float32 class-balanced weights


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Random logits (std 2), uniform targets and class-balanced weights on the case's device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = torch.device(case.device)
    # generated on the host for reproducibility across devices, at float32, then moved and cast
    logits = (2.0 * torch.randn(case.n, case.c, generator=gen)).to(device=device, dtype=case.torch_dtype)
    target = torch.randint(0, case.c, (case.n,), generator=gen).to(device)
    weight = class_balanced_weights(long_tail_counts(case.c), CB_BETA).to(device=device, dtype=torch.float32)
    return Inputs(logits.requires_grad_(True), target, weight)


# ----------------------------------------------------------------------------------------------
# Fused classifier heads (cbbench/bench/linear.py, benchmarks/bench_linear.py): hidden (N, H), C classes,
# "NxHxC". "full" holds the shapes of the targets (N 8192, H 1024, C 32000 and iNaturalist's
# C 8142), "quick" the same comparisons at a size a test run affords, "main" the one `make bench` times
# (the default of `cbbench bench`), "asv" the asv tracks.
# ----------------------------------------------------------------------------------------------
HEAD_SETS = ("quick", "main", "full", "asv")
HEAD_TABLE: Tuple[Tuple[str, str, str, str, str], ...] = (
    # loss, NxHxC, dtype, device, sets
    ("softmax", "8192x1024x32000", "float32", "cpu", "full"),
    ("sigmoid", "8192x1024x32000", "float32", "cpu", "full"),
    ("focal", "8192x1024x32000", "float32", "cpu", "full"),
    ("softmax", "8192x1024x8142", "float32", "cpu", "full asv"),
    ("focal", "8192x1024x8142", "float32", "cpu", "full"),
    ("softmax", "2048x512x8142", "float32", "cpu", "quick asv"),
    ("focal", "2048x512x8142", "float32", "cpu", "quick asv"),
    ("softmax", "1024x256x32000", "float32", "cpu", "quick"),
    ("softmax", "1024x256x8142", "float32", "cpu", "main"),
    ("focal", "1024x256x8142", "float32", "cpu", "main"),
    ("softmax", "16384x4096x131072", "bfloat16", "cuda", "quick main full asv"),
    ("softmax", "8192x1024x32000", "float32", "cuda", "quick main full asv"),
    ("focal", "8192x1024x32000", "bfloat16", "cuda", "full asv"),
)


@dataclass(frozen=True)
class HeadCase:
    loss: str
    n: int
    h: int
    c: int
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def shape(self) -> str:
        return f"{self.n}x{self.h}x{self.c}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def logits_bytes(self) -> int:
        """What the (N, C) logits would take (their gradient takes as much again)."""
        return self.n * self.c * torch.empty((), dtype=self.torch_dtype).element_size()

    def label(self) -> str:
        return f"{self.loss} {self.shape} {DTYPE_SHORT[self.dtype]} {self.device}"


def parse_head_shape(text: str) -> Tuple[int, int, int]:
    """``"8192x1024x32000"`` -> ``(8192, 1024, 32000)``."""
    try:
        n, h, c = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"shape must look like NxHxC (e.g. 8192x1024x32000), got {text!r}") from exc
    if n < 0 or h < 1 or c < 1:
        raise ValueError(f"shape must have N >= 0, H >= 1 and C >= 1, got {text!r}")
    return n, h, c


def head_suite(device: str, set_name: str, losses=LOSSES) -> List[HeadCase]:
    """The head cases of ``device`` in one of :data:`HEAD_SETS`, in the table's order."""
    if set_name not in HEAD_SETS:
        raise ValueError(f"set_name must be one of {HEAD_SETS}, got {set_name!r}")
    return [HeadCase(loss, *parse_head_shape(shape), dtype, dev) for loss, shape, dtype, dev, sets in HEAD_TABLE
            if dev == device and loss in losses and set_name in sets.split()]


def head_case_id(case: HeadCase) -> str:
    """``"softmax 8192x1024x32000 fp32"`` (the device is the benchmark class's)."""
    return f"{case.loss} {case.shape} {DTYPE_SHORT[case.dtype]}"


def parse_head_case_id(text: str, device: str) -> HeadCase:
    """Inverse of :func:`head_case_id` on ``device``."""
    names = {short: name for name, short in DTYPE_SHORT.items()}
    parts = text.split()
    if len(parts) != 3 or parts[0] not in LOSSES or parts[2] not in names:
        raise ValueError(f"case must look like '<loss> NxHxC fp32|bf16|fp16|fp64', got {text!r}")
    return HeadCase(parts[0], *parse_head_shape(parts[1]), names[parts[2]], device)


@dataclass
class HeadInputs:
    hidden: torch.Tensor         # (N, H) leaf, requires grad
    linear_weight: torch.Tensor  # (C, H) leaf, requires grad
    linear_bias: torch.Tensor    # (C,) leaf, requires grad
    target: torch.Tensor         # (N,) int64
    weight: torch.Tensor         # (C,) float32 class-balanced weights


def make_head_inputs(case: HeadCase, seed: int = 0) -> HeadInputs:
    """Random features (std 1), a classifier of ``nn.Linear``'s scale (logits of std ~1), uniform
    targets and the class-balanced weights of :func:`make_inputs`, on the case's device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device, dtype = torch.device(case.device), case.torch_dtype

    def leaf(*shape, std):
        return (std * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype).requires_grad_(True)

    hidden = leaf(case.n, case.h, std=1.0)
    linear_weight = leaf(case.c, case.h, std=case.h ** -0.5)
    linear_bias = leaf(case.c, std=0.1)
    target = torch.randint(0, case.c, (case.n,), generator=gen).to(device)
    weight = class_balanced_weights(long_tail_counts(case.c), CB_BETA).to(device=device, dtype=torch.float32)
    return HeadInputs(hidden, linear_weight, linear_bias, target, weight)

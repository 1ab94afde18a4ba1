"""Benchmark cases (loss x shape x dtype x device) and their inputs.

Every implementation of a case computes the same number: softmax with PyTorch's weighted-mean
reduction (``sum_i w_{y_i} l_i / sum_i w_{y_i}``, the quantity ``F.cross_entropy(weight=w)`` and Liger
compute), sigmoid and focal with the paper's mean (sum / number of positives = N). Class weights are the
class-balanced weights (beta 0.9999) of a long-tailed count vector with imbalance factor 100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

LOSSES = ("softmax", "sigmoid", "focal")
LOSS_TITLES = {"softmax": "CB softmax CE", "sigmoid": "CB sigmoid CE", "focal": "CB focal"}
REDUCTION = {"softmax": "weighted_mean", "sigmoid": "mean", "focal": "mean"}
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


# (shape, dtype) per loss and device; "quick" is a subset of "full". The GPU shapes are the ones of the
# peer table in DESIGN §6; the CPU ones are sized for a 2-core machine.
SUITES: Dict[str, Dict[str, Dict[str, List[Tuple[str, str]]]]] = {
    "cpu": {
        "quick": {
            "softmax": [("256x1000", "float32"), ("8192x1000", "float32")],
            "sigmoid": [("8192x1000", "float32")],
            "focal": [("8192x1000", "float32")],
        },
        "full": {
            "softmax": [("256x1000", "float32"), ("8192x1000", "float32"), ("65536x10", "float32"),
                        ("1024x8142", "float32"), ("8192x1000", "bfloat16")],
            "sigmoid": [("8192x1000", "float32"), ("16384x80", "float32")],
            "focal": [("8192x1000", "float32"), ("16384x80", "float32"), ("2048x1203", "float32")],
        },
    },
    "cuda": {
        "quick": {
            "softmax": [("256x1000", "float32"), ("65536x1000", "float32"), ("65536x1000", "bfloat16")],
            "sigmoid": [("1048576x80", "float32")],
            "focal": [("1048576x80", "float32"), ("16384x1203", "bfloat16")],
        },
        "full": {
            "softmax": [("256x1000", "float32"), ("65536x1000", "float32"), ("16384x8142", "float32"),
                        ("4096x131072", "float32"), ("65536x1000", "bfloat16"), ("65536x1000", "float16")],
            "sigmoid": [("1048576x80", "float32"), ("16384x1203", "bfloat16")],
            "focal": [("1048576x80", "float32"), ("16384x1203", "float32"), ("16384x1203", "bfloat16")],
        },
    },
}


def suite(device: str, quick: bool = False, losses=LOSSES) -> List[Case]:
    """The cases of the standard suite for ``device`` ("cpu" or "cuda")."""
    if device not in SUITES:
        raise ValueError(f"device must be one of {tuple(SUITES)}, got {device!r}")
    table = SUITES[device]["quick" if quick else "full"]
    cases = []
    for loss in losses:
        for shape, dtype in table[loss]:
            n, c = parse_shape(shape)
            cases.append(Case(loss, n, c, dtype, device))
    return cases


def long_tail_counts(num_classes: int, imbalance: float = IMBALANCE, n_max: int = 5000) -> torch.Tensor:
    """The long-tailed CIFAR profile of the harness, :func:`cbbench.harness.datasets.long_tailed_counts`
    (``int(n_max * (1/IF)^(i/(C-1)))`` per class), as an int64 tensor."""
    # imported here: the harness imports cbbench.bench lazily, and the speed cases need only this function
    from ..harness.datasets import long_tailed_counts

    return torch.tensor(long_tailed_counts(n_max, num_classes, imbalance), dtype=torch.int64)


@dataclass
class Inputs:
    logits: torch.Tensor   # (N, C) leaf of the case's dtype, requires grad
    target: torch.Tensor   # (N,) int64 class indices
    weight: torch.Tensor   # (C,) float32 class-balanced weights


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Random logits (std 2), uniform targets and class-balanced weights on the case's device."""
    from ..weights import class_balanced_weights

    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = torch.device(case.device)
    # generated on the host for reproducibility across devices, at float32, then moved and cast
    logits = (2.0 * torch.randn(case.n, case.c, generator=gen)).to(device=device, dtype=case.torch_dtype)
    target = torch.randint(0, case.c, (case.n,), generator=gen).to(device)
    weight = class_balanced_weights(long_tail_counts(case.c), CB_BETA).to(device=device, dtype=torch.float32)
    return Inputs(logits.requires_grad_(True), target, weight)

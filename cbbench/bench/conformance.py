"""The class-balanced loss implementations on the held test vectors: inputs where ports commonly go
wrong, each with what is right, evaluated for cbbench and for the published peer (the ``balanced-loss``
package, when installed), for the report.

* **empty class** (the vector of ``tests/test_weights.py::test_empty_class_policies``): counts
  ``[10, 0, 3]``, beta 0.99. The class-balanced weight of a class without samples is infinite; right is
  a clear error (cbbench's default; ``empty="zero"`` gives that class weight 0), wrong is a NaN loss.
* **hardest positive** (``tests/test_reference.py::test_focal_hardest_positive_keeps_its_bce``): one
  class, logit -100 for a positive label, focal gamma 2, summed. The modulator ``(1 - p_t)^gamma`` is 1,
  so the loss is the binary cross-entropy, 100; the official form of the modulator,
  ``exp(-gamma*t*z - gamma*log(1 + exp(-z)))``, overflows in float32 and zeroes it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List

import torch

from .. import functional as cbf
from ..weights import class_balanced_weights
from .providers import balanced_loss_module, installed

EMPTY_COUNTS = [10, 0, 3]
EMPTY_BETA = 0.99
HARDEST_LOGIT = -100.0
HARDEST_GAMMA = 2.0
HARDEST_LOSS = 100.0  # BCE(-100, 1) = softplus(100) + ... = 100 to float32 precision


@dataclass
class Outcome:
    vector: str
    implementation: str
    result: str      # what the implementation gave, in words
    correct: bool


def _empty_class_inputs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, len(EMPTY_COUNTS), generator=gen)
    target = torch.tensor([0, 2, 0, 2])  # the empty class has no sample, as in a real training set
    return logits, target


def cbbench_empty_class() -> Outcome:
    logits, target = _empty_class_inputs()
    try:
        weight = class_balanced_weights(EMPTY_COUNTS, EMPTY_BETA)
        loss = float(cbf.softmax_cross_entropy(logits, target, weight))
    except ValueError as exc:  # "class_balanced_weights: class(es) [1] have zero training samples: ..."
        reason = str(exc).split(":")[1].strip() if str(exc).count(":") >= 2 else str(exc)
        return Outcome("empty class", "cbbench", f"raises ValueError ({reason})", True)
    return Outcome("empty class", "cbbench", f"loss {loss:.4g}", False)


def balanced_loss_empty_class() -> Outcome:
    logits, target = _empty_class_inputs()
    with warnings.catch_warnings():  # numpy's divide-by-zero warnings on the way to the NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        loss = float(balanced_loss_module("softmax", EMPTY_COUNTS, beta=EMPTY_BETA)(logits, target))
    return Outcome("empty class", "balanced-loss", "NaN loss" if math.isnan(loss) else f"loss {loss:.4g}",
                   False)


def _hardest_inputs():
    return torch.tensor([[HARDEST_LOGIT]]), torch.tensor([0])


def cbbench_hardest_positive() -> Outcome:
    z, y = _hardest_inputs()
    loss = float(cbf.sigmoid_focal_loss(z, y, gamma=HARDEST_GAMMA, reduction="sum"))
    return Outcome("hardest positive", "cbbench", f"loss {loss:.6g}", math.isclose(loss, HARDEST_LOSS, rel_tol=1e-5))


def balanced_loss_hardest_positive() -> Outcome:
    z, y = _hardest_inputs()
    # one class, one sample: its weight is 1 and the paper's mean divides by the one positive
    loss = float(balanced_loss_module("focal", [5], gamma=HARDEST_GAMMA)(z, y))
    return Outcome("hardest positive", "balanced-loss", f"loss {loss:.6g}",
                   math.isclose(loss, HARDEST_LOSS, rel_tol=1e-5))


EXPECTED: Dict[str, str] = {
    "empty class": f"counts {EMPTY_COUNTS}, beta {EMPTY_BETA}: a clear error (or weight 0 with empty=\"zero\")",
    "hardest positive": f"focal gamma {HARDEST_GAMMA:g}, logit {HARDEST_LOGIT:g} of a positive: loss {HARDEST_LOSS:g}",
}


def evaluate() -> List[Outcome]:
    """Every implementation on every held vector (the peer only when installed)."""
    outcomes = [cbbench_empty_class(), cbbench_hardest_positive()]
    if installed("balanced_loss"):
        outcomes += [balanced_loss_empty_class(), balanced_loss_hardest_positive()]
    return outcomes


def format_table(outcomes: List[Outcome]) -> str:
    """Markdown: vector, what is right, implementation, its result, whether it is right."""
    lines = ["| held vector | right answer | implementation | result | right? |", "|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.vector} | {EXPECTED[o.vector]} | {o.implementation} | {o.result} | "
                     f"{'yes' if o.correct else 'no'} |")
    return "\n".join(lines)

"""How many operators one loss call issues, forward and backward separately.

Counted with a :class:`torch.utils._python_dispatch.TorchDispatchMode`, which sees every operator that
reaches the dispatcher below autograd: ATen ops (allocations, views, reductions, ``.item()`` reads as
``aten._local_scalar_dense``) and registered custom ops. Work done inside an extension that does not go
through the dispatcher (a Cython kernel called from Python) is not an operator and is not counted. At
training-size shapes (N 8-256) these ops, not the kernel, set the time of a call.

``torch.compile``-d callables are not counted: under an active dispatch mode Dynamo runs the function
eagerly, so the count would be the eager one.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the operators dispatched while it is active, by overload name (``aten.sum.default``)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


@dataclass
class OpCount:
    """Operators of one forward (the loss) and one backward (``autograd.grad`` of it w.r.t. the logits)."""

    forward: Dict[str, int] = field(default_factory=dict)
    backward: Dict[str, int] = field(default_factory=dict)

    @property
    def n_forward(self) -> int:
        return sum(self.forward.values())

    @property
    def n_backward(self) -> int:
        return sum(self.backward.values())


def count_ops(loss_fn: Callable[[], torch.Tensor], wrt: torch.Tensor) -> OpCount:
    """Count the operators of ``loss_fn()`` and of the gradient of its result with respect to ``wrt``.
    Call it once untimed first if the function does one-off work (a lazy import, a cached constant)."""
    with OpCounter() as fwd:
        loss = loss_fn()
    with OpCounter() as bwd:
        torch.autograd.grad(loss, wrt)
    return OpCount(dict(fwd.ops), dict(bwd.ops))

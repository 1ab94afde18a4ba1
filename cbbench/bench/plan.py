"""What ``cbbench bench`` runs at each level, in one place: ``quick`` (a smoke run), ``main`` (the default,
``make bench``: the answer in about two minutes on 2 CPU cores) and ``full`` (``--full``: the complete sweep).

| | quick | main (default) | full |
|---|---|---|---|
| loss speed: cases (``CASE_TABLE`` set) | quick | main | full |
| loss speed: implementations | cbbench's kernels, eager, compile; the reference up to 256x1000 | the same | every one |
| loss speed: timed | fwd+bwd | fwd+bwd | fwd+bwd and fwd |
| fused heads (``HEAD_TABLE`` set) | -- | main: speed | full: speed and memory |
| accuracy on the dataset (26 methods) | 3 seeds, half the epochs | 3 seeds | 3 seeds |
| beta experiment (digits-LT, prototypes-LT) | softmax family, half the epochs | softmax family | every family |

The estimates (``*_S``) are seconds on the reference machine (2 cores, quiet): they weigh the steps of
the progress bar (:mod:`cbbench.bench.progress`), whose time left follows the pace measured as it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .linear import IMPLS as HEAD_IMPLEMENTATIONS
from .providers import IMPLEMENTATIONS, MODES
from .timing import FULL, MAIN, QUICK, TimingPolicy

LEVELS = ("quick", "main", "full")
# cbbench's kernels, the reference they fall back to, and the two peers every user has
CORE_IMPLS = ("reference", "cpu", "cuda", "cuda_graph", "eager", "compile")
CORE_HEAD_IMPLS = ("fused", "unfused", "eager", "compile")


@dataclass(frozen=True)
class Level:
    name: str
    speed_set: str                     # a set of cbbench.bench.cases.CASE_TABLE
    impls: Tuple[str, ...]             # speed implementations (cbbench.bench.providers)
    modes: Tuple[str, ...]             # timed modes
    policy: TimingPolicy
    head_set: Optional[str]            # a set of cbbench.bench.cases.HEAD_TABLE, or None: no heads
    head_impls: Tuple[str, ...]        # cbbench.bench.linear implementations
    head_repeats: int                  # timed rounds per head case
    head_memory: bool                  # the heads' extra memory, each in a fresh process
    half_epochs: bool                  # the accuracy and beta phases at half the recipes' epochs
    beta_losses: Tuple[str, ...]       # the loss families of the beta experiment
    # the pure-PyTorch reference is timed up to this many logits (the training-size shapes, where the claim
    # that it is slower than plain PyTorch is decided); None: at every shape
    reference_max_elements: Optional[int] = None

    def skip(self, case, impl: str) -> Optional[str]:
        """Why ``impl`` is not timed on ``case`` at this level, or ``None``."""
        if impl == "reference" and self.reference_max_elements is not None \
                and case.n * case.c > self.reference_max_elements:
            return (f"timed up to {self.reference_max_elements} logits in the {self.name} job; "
                    "cbbench bench --full times it at every shape")
        return None


LEVEL = {
    "quick": Level("quick", "quick", CORE_IMPLS, ("fwd_bwd",), QUICK, None, (), 0, False, True, ("softmax",),
                   256 * 1000),
    "main": Level("main", "main", CORE_IMPLS, ("fwd_bwd",), MAIN, "main", CORE_HEAD_IMPLS, 2, False, False,
                  ("softmax",), 256 * 1000),
    "full": Level("full", "full", IMPLEMENTATIONS, MODES, FULL, "full", tuple(HEAD_IMPLEMENTATIONS), 3, True, False,
                  ("softmax", "sigmoid", "focal")),
}

# estimated seconds per step on the reference machine (quiet, 2 cores)
SPEED_CASE_S = {"quick": 3.0, "main": 5.0, "full": 14.0}
FIRST_COMPILE_S = 10.0   # torch.compile's one-time start in a process
HEAD_CASE_S = {"main": 5.0, "full": 150.0}
ACCURACY_METHOD_S = 1.0  # 3 seeds of one method on digits-LT
BETA_DATASET_S = {"digits-lt": 5.0, "prototypes-lt": 14.0}
REPORT_S = 6.0


def level(name: str) -> Level:
    if name not in LEVEL:
        raise ValueError(f"level must be one of {LEVELS}, got {name!r}")
    return LEVEL[name]

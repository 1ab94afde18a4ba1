"""cbbench: class-balanced losses (Cui et al., CVPR 2019) — fused CPU/CUDA kernels, a pure-PyTorch
reference, and a benchmark suite for speed and long-tail accuracy.

Importing cbbench never initialises CUDA and never fails because a compiled kernel is missing: where the
installed package has none built against this torch it compiles them once (:mod:`cbbench.jit`), or says
loudly that the losses run the pure-PyTorch reference (:class:`KernelsMissingWarning`).
"""
from . import functional, nn, ops, reference
from .jit import KernelsMissingWarning
from .nn import (BalancedSoftmaxLoss, ClassBalancedLinearLoss, ClassBalancedLoss, LDAMLoss, LogitAdjustedLoss,
                 SigmoidCrossEntropyLoss, SigmoidFocalLoss, SoftmaxCrossEntropyLoss, SoftmaxFocalLoss)
from .effective import MeasuredEffectiveNumber, effective_number_from_features
from .weights import class_balanced_weights, class_weights, effective_number, ldam_margins, log_prior

__version__ = "0.1.0"

__all__ = [
    "functional",
    "nn",
    "ops",
    "reference",
    "KernelsMissingWarning",
    "effective_number",
    "effective_number_from_features",
    "MeasuredEffectiveNumber",
    "class_balanced_weights",
    "class_weights",
    "log_prior",
    "ldam_margins",
    "ClassBalancedLoss",
    "ClassBalancedLinearLoss",
    "SoftmaxCrossEntropyLoss",
    "SoftmaxFocalLoss",
    "SigmoidCrossEntropyLoss",
    "SigmoidFocalLoss",
    "BalancedSoftmaxLoss",
    "LogitAdjustedLoss",
    "LDAMLoss",
]

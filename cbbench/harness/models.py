"""Models: logistic regression and an MLP for tabular data, ResNet-32 (CIFAR variant) for images.

Every model names its last layer ``classifier``. LDAM uses a cosine classifier (:class:`NormedLinear`,
as in the LDAM code): its logits lie in [-1, 1] and the loss scales them by s = 30.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "NormedLinear", "LogisticRegression", "MLP", "ResNet32", "build_model", "init_sigmoid_bias"]

MODELS = ("logistic", "mlp", "resnet32")


class NormedLinear(nn.Module):
    """Cosine classifier ``normalize(x) @ normalize(W)`` (no bias)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def _classifier(in_features: int, num_classes: int, normed: bool) -> nn.Module:
    return NormedLinear(in_features, num_classes) if normed else nn.Linear(in_features, num_classes)


class LogisticRegression(nn.Module):
    def __init__(self, in_features: int, num_classes: int, normed: bool = False):
        super().__init__()
        self.classifier = _classifier(in_features, num_classes, normed)

    def forward(self, x):
        return self.classifier(x)


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, normed: bool = False):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = _classifier(hidden, num_classes, normed)

    def forward(self, x):
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """3x3-3x3 residual block; the downsampling shortcut is option A of He et al. (subsample + zero
    channels, no parameters), as in the CIFAR ResNets of the CB and LDAM code."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            half = self.pad // 2
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, half, self.pad - half))
        return F.relu(out + shortcut)


class ResNet32(nn.Module):
    """ResNet-32 for 32x32 images: 3 stages x 5 basic blocks (16, 32, 64 channels), global pooling."""

    def __init__(self, num_classes: int, normed: bool = False, blocks_per_stage: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks_per_stage):
                layers.append(_BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.classifier = _classifier(64, num_classes, normed)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def build_model(name: str, in_features: int, num_classes: int, *, hidden: int = 128, normed: bool = False) -> nn.Module:
    """A model of :data:`MODELS`; ``in_features`` is ignored by ResNet-32 (3x32x32 input)."""
    if name == "logistic":
        return LogisticRegression(in_features, num_classes, normed)
    if name == "mlp":
        return MLP(in_features, num_classes, hidden, normed)
    if name == "resnet32":
        return ResNet32(num_classes, normed)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def init_sigmoid_bias(model: nn.Module, num_classes: int) -> nn.Parameter:
    """Set the classifier bias to ``-log(C - 1)`` (prior 1/C per sigmoid, Cui et al. / RetinaNet) and
    return it, so the caller can exclude it from weight decay."""
    bias = getattr(model.classifier, "bias", None)
    if bias is None:
        raise ValueError("sigmoid/focal losses need a classifier with a bias")
    if num_classes < 2:
        raise ValueError(f"sigmoid/focal losses need at least 2 classes, got {num_classes}")
    with torch.no_grad():
        bias.fill_(-math.log(num_classes - 1))
    return bias

"""Models: logistic regression and an MLP for tabular data (and precomputed features), ResNet-32 (CIFAR
variant) for small images, and the ImageNet ResNets of the large-scale long-tail recipes: ResNet-10 (OLTR),
ResNet-50 (Cui et al. on iNaturalist; Kang et al.), ResNeXt-50 32x4d (Kang et al. on ImageNet-LT) and
ResNet-152 (OLTR / Kang et al. on Places-LT), in plain torch.

Every model names its last layer ``classifier``. LDAM uses a cosine classifier (:class:`NormedLinear`,
as in the LDAM code): its logits lie in [-1, 1] and the loss scales them by s = 30. The ImageNet ResNets
use torchvision's module names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``downsample``), so a
torchvision-format state dict loads into them (:func:`load_backbone_weights`; its ``fc`` is left out).
"""
from __future__ import annotations

import math
import pickle

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "TABULAR_MODELS", "IMAGE_MODELS", "NormedLinear", "LogisticRegression", "MLP", "ResNet32",
           "ResNet", "build_model", "init_sigmoid_bias", "load_backbone_weights"]

TABULAR_MODELS = ("logistic", "mlp")
# (block, blocks per stage, groups, width per group) of the ImageNet ResNets
_IMAGENET_RESNETS = {
    "resnet10": ("basic", (1, 1, 1, 1), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnext50": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
}
IMAGE_MODELS = ("resnet32",) + tuple(_IMAGENET_RESNETS)
MODELS = TABULAR_MODELS + IMAGE_MODELS


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


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride, downsample, groups, base_width):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """1x1 - 3x3 (stride, groups) - 1x1 bottleneck with the stride on the 3x3 (torchvision's ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_planes, planes, stride, downsample, groups, base_width):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ImageNet ResNet / ResNeXt (He et al. 2016; Xie et al. 2017): 7x7 stem, max-pool, four stages,
    global average pooling (adaptive, so any crop size of at least 32 works) and the classifier."""

    def __init__(self, block: str, layers, num_classes: int, *, groups: int = 1, width_per_group: int = 64,
                 normed: bool = False):
        super().__init__()
        block_cls = _Basic if block == "basic" else _Bottleneck
        self.groups, self.base_width, self.in_planes = groups, width_per_group, 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block_cls, 64, layers[0], 1)
        self.layer2 = self._stage(block_cls, 128, layers[1], 2)
        self.layer3 = self._stage(block_cls, 256, layers[2], 2)
        self.layer4 = self._stage(block_cls, 512, layers[3], 2)
        self.classifier = _classifier(512 * block_cls.expansion, num_classes, normed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block_cls, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.in_planes != planes * block_cls.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, planes * block_cls.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block_cls.expansion))
        layers = [block_cls(self.in_planes, planes, stride, downsample, self.groups, self.base_width)]
        self.in_planes = planes * block_cls.expansion
        layers += [block_cls(self.in_planes, planes, 1, None, self.groups, self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(name: str, in_features: int, num_classes: int, *, hidden: int = 128, normed: bool = False) -> nn.Module:
    """A model of :data:`MODELS`; ``in_features`` is ignored by the image models."""
    if name == "logistic":
        return LogisticRegression(in_features, num_classes, normed)
    if name == "mlp":
        return MLP(in_features, num_classes, hidden, normed)
    if name == "resnet32":
        return ResNet32(num_classes, normed)
    if name in _IMAGENET_RESNETS:
        block, layers, groups, width = _IMAGENET_RESNETS[name]
        return ResNet(block, layers, num_classes, groups=groups, width_per_group=width, normed=normed)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def load_backbone_weights(model: nn.Module, path: str) -> list:
    """Load a state dict (a torchvision ``resnet50-*.pth``, or ``torch.save(model.state_dict())`` of a
    model of the same kind) into ``model``, all but its classifier (``fc.*`` / ``classifier.*`` are
    left out: the classes differ). Returns the names loaded; raises ValueError naming the file when it
    is unreadable, holds no state dict, or its tensors do not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: cannot read backbone weights ({str(exc).splitlines()[0][:200]}); expected a "
                         "state dict saved with torch.save") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    backbone = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    missing = sorted(set(own) - set(backbone))
    unexpected = sorted(set(backbone) - set(own))
    wrong = [k for k in set(own) & set(backbone) if own[k].shape != backbone[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: the weights do not fit this model ({len(missing)} missing, e.g. {missing[:3]}; "
                         f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}; shape mismatch: {sorted(wrong)[:3]})")
    model.load_state_dict(backbone, strict=False)
    return sorted(backbone)


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

"""Training recipes: the default settings of each dataset, and the published recipes of the
large-scale long-tail benchmarks.

A recipe fills every :class:`~cbbench.harness.train.TrainConfig` field left ``None``. Verified against
the authors' code (file named in each entry):

* CIFAR-10/100-LT, Cui et al. 2019 (and the LDAM code): ResNet-32, batch 128, 200 epochs, SGD 0.9, lr 0.1
  with a 5-epoch linear warm-up, x0.01 at 160 and x0.0001 at 180, weight decay 2e-4, pad-4 crop + flip.
* iNaturalist 2018, Cui et al. 2019 (richardaecn/class-balanced-loss, ``tpu/run_inat2018.sh`` and
  ``tpu/models/official/resnet/resnet_main.py``): ResNet-50, batch 1024, 90 epochs (38,454 steps),
  base lr 0.4 per 256 images scaled to the batch (1.6), linear warm-up over 5 epochs, x0.1 at 30, x0.01
  at 60, x0.001 at 80, Nesterov momentum 0.9, weight decay 1e-4 on all but batch-norm parameters and the
  classifier bias, 224-pixel random resized crops + flip, iNaturalist channel statistics; CB focal with
  beta 0.999, gamma 0.5.
* ImageNet-LT, Kang et al. 2020 (facebookresearch/classifier-balancing, ``config/ImageNet_LT/
  feat_uniform.yaml``): ResNeXt-50 32x4d, batch 512, 90 epochs, SGD 0.9, lr 0.2 with cosine decay to 0
  (per epoch, no warm-up), weight decay 5e-4, random resized crop + flip + colour jitter 0.4. Their
  iNaturalist 2018 recipe (``config/iNaturalist18/feat_unifrom.yaml``) is the same with ResNet-50 and
  weight decay 1e-4; ``--model resnet50`` gives the ResNet-50 variant on ImageNet-LT.
* Places-LT, OLTR stage 1 (zhmiao/OpenLongTailRecognition-OLTR, ``config/Places_LT/stage_1.py``): an
  ImageNet-pre-trained ResNet-152 fine-tuned for 30 epochs, batch 128, lr 0.1 for the classifier and 0.001
  for the backbone, x0.1 every 10 epochs, weight decay 5e-4. The pre-trained weights are not shipped:
  pass a torchvision ``resnet152`` state dict as ``init_weights`` (``--init-weights``), or the run trains
  from scratch, which is not the published setting.
* ``features`` (a head on frozen features): the classifier stage of Kang et al. (cRT, ``config/ImageNet_LT/
  cls_crt.yaml``): 10 epochs, batch 512, lr 0.2, cosine, weight decay 5e-4, on a linear head.

``folder`` / ``list`` data of small images (at most 64 pixels) take the CIFAR recipe; of larger images
the ImageNet-LT one with ResNet-50.
"""
from __future__ import annotations

__all__ = ["RECIPES", "recipe_for"]

_CIFAR = dict(model="resnet32", epochs=200, batch_size=128, lr=0.1, weight_decay=2e-4, warmup_epochs=5,
              milestones=(160, 180), lr_factors=(0.01, 0.0001), augment=True)
_KANG_IMAGENET_LT = dict(model="resnext50", epochs=90, batch_size=512, lr=0.2, weight_decay=5e-4, warmup_epochs=0,
                         milestones=(), lr_factors=(), lr_schedule="cosine", augment=True)

# Per-dataset defaults. Tabular: the CIFAR schedule's shape (decays at 80% and 90% of the epochs) with
# gentler decays, x0.1 and x0.01: x0.01 leaves a small model's deferred (DRW/DRS) phase too little
# learning rate to move at all. digits: weight decay 5e-3 keeps the MLP from interpolating its 331
# examples, where any re-weighting stops mattering (Byrd & Lipton 2019). prototypes-lt: the shortest
# schedule after which plain softmax no longer improves (balanced accuracy ~72 % at 30 and at 60 epochs;
# 10 epochs of batch 128 at lr 0.05 stopped at ~50 %), chosen on softmax alone, before looking at any
# weighted method.
RECIPES = {
    "cifar10-lt": _CIFAR,
    "cifar100-lt": _CIFAR,
    "digits-lt": dict(model="mlp", epochs=40, batch_size=32, lr=0.05, weight_decay=5e-3, warmup_epochs=1,
                      milestones=(32, 36), lr_factors=(0.1, 0.01), augment=False),
    "synthetic-lt": dict(model="logistic", epochs=20, batch_size=64, lr=0.05, weight_decay=1e-4, warmup_epochs=1,
                         milestones=(16, 18), lr_factors=(0.1, 0.01), augment=False),
    "prototypes-lt": dict(model="mlp", epochs=30, batch_size=256, lr=0.2, weight_decay=5e-4, warmup_epochs=1,
                          milestones=(24, 27), lr_factors=(0.1, 0.01), augment=False),
    "features": dict(model="logistic", epochs=10, batch_size=512, lr=0.2, weight_decay=5e-4, warmup_epochs=0,
                     milestones=(), lr_factors=(), lr_schedule="cosine", augment=False),
    "imagenet-lt": _KANG_IMAGENET_LT,
    "inat2018": dict(model="resnet50", epochs=90, batch_size=1024, lr=1.6, weight_decay=1e-4, warmup_epochs=5,
                     milestones=(30, 60, 80), lr_factors=(0.1, 0.01, 0.001), nesterov=True,
                     norm_weight_decay=False, augment=True),
    "places-lt": dict(model="resnet152", epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, warmup_epochs=0,
                      milestones=(10, 20), lr_factors=(0.1, 0.01), backbone_lr_factor=0.01, augment=True),
    "small-images": _CIFAR,
    "large-images": dict(_KANG_IMAGENET_LT, model="resnet50"),
}

# the fields a recipe may leave out, and their value then
OPTIONAL_DEFAULTS = dict(lr_schedule="step", nesterov=False, norm_weight_decay=True, backbone_lr_factor=1.0)


def recipe_for(dataset: str, kind: str) -> dict:
    """The recipe of ``dataset`` whose examples are of ``kind`` (folder and list data: by image size)."""
    if dataset in ("folder", "list"):
        name = "small-images" if kind == "image" else "large-images"
    else:
        name = dataset
    return {**OPTIONAL_DEFAULTS, **RECIPES[name]}

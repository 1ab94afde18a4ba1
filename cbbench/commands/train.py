"""``cbbench train``: train one long-tail method on one dataset and write DIR/result.json."""
from __future__ import annotations

import argparse
import json
import os

from ..harness.datasets import DATASETS, DEFAULT_IMBALANCE
from ..harness.methods import METHODS
from ..harness.models import MODELS
from ..harness.train import ACCELS

_DATASET_HELP = ("digits-lt: scikit-learn's bundled digits, long-tailed train split (default imbalance "
                 f"{DEFAULT_IMBALANCE['digits-lt']:g}, so every class keeps >= 2 images), balanced test split; "
                 "synthetic-lt: overlapping Gaussians; prototypes-lt: classes of 100 prototypes each (near-duplicate "
                 "examples, so the effective number is far below n; counts 2000 ... 20); cifar10-lt / cifar100-lt: "
                 "need --data-dir with the python pickles (cifar-10-batches-py / cifar-100-python), default "
                 "imbalance 100; folder: --data-dir with train/<class>/* and test/<class>/* (or val/); list: "
                 "--train-list and --eval-list ('relative/path label' lines, or iNaturalist json) with --data-dir "
                 "the image root; features: --features FILE.npz; imagenet-lt, places-lt, inat2018: the published "
                 "list files (--lists-dir, default --data-dir) and images under --data-dir")
TORCHRUN_NOTE = (" Data parallel: torchrun --nproc_per_node=N -m cbbench ... trains each run on N processes (gloo "
                  "on the CPU, NCCL on CUDA, one GPU per process) on the same global batches as one process "
                  "(--batch-size is the global batch); rank 0 writes the results.")
# command-line options that go to the dataset loader (cbbench.harness.userdata), as dataset_options
_DATASET_OPTIONS = ("train_list", "eval_list", "lists_dir", "features", "eval_split", "images", "crop", "views")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``compare``; None means the dataset's recipe default."""
    parser.add_argument("--dataset", required=True, choices=DATASETS, help=_DATASET_HELP)
    parser.add_argument("--data-dir", default=None,
                        help="CIFAR: the folder holding the python pickles; folder: the image folder; list and "
                             "presets: the root the list files' paths start from")
    data = parser.add_argument_group("your own data and the large-scale benchmarks")
    data.add_argument("--train-list", default=None, help="list: training list file (.txt lines 'path label', or "
                      "an iNaturalist train2018.json)")
    data.add_argument("--eval-list", default=None, help="list: evaluation list file (.txt or .json)")
    data.add_argument("--lists-dir", default=None, help="presets: folder of the published list files "
                      "(default: --data-dir)")
    data.add_argument("--features", default=None, help="features: .npz with x_train, y_train, x_test, y_test")
    data.add_argument("--eval-split", choices=("test", "val"), default=None,
                      help="folder and presets: the split to evaluate on (default: test where there is one)")
    data.add_argument("--images", choices=("auto", "memory", "stream"), default=None,
                      help="folder and list: decode the images once into memory (CIFAR size) or stream them from "
                           "disk through DataLoader workers; auto (default): memory when the first image is at most "
                           "64 pixels a side")
    data.add_argument("--crop", type=int, default=None, help="streamed images: crop size (default 224; test "
                      "images are resized to 256/224 of it first)")
    data.add_argument("--views", action="store_const", const=True, default=None,
                      help="prototypes-lt, digits-lt: also draw a second view of every training example (measured_* "
                           "methods take the unit radius from it)")
    data.add_argument("--workers", type=int, default=None,
                      help="streamed images: DataLoader worker processes (default: the CPUs, at most 8)")
    data.add_argument("--init-weights", default=None,
                      help="ImageNet ResNets: a state dict for the backbone (e.g. torchvision's resnet152 "
                           "weights for the Places-LT recipe)")
    parser.add_argument("--imbalance", type=float, default=None,
                        help="imbalance factor n_max / n_min (default: " + ", ".join(
                            f"{k} {v:g}" for k, v in DEFAULT_IMBALANCE.items()) + "; your own data: used as they "
                        "are unless given, then cut with the CB/LDAM rule)")
    parser.add_argument("--beta", type=float, default=0.9999, help="class-balanced beta (default 0.9999)")
    parser.add_argument("--gamma", type=float, default=1.0, help="focal gamma (default 1.0)")
    parser.add_argument("--tau", type=float, default=1.0, help="logit-adjustment tau (default 1.0)")
    parser.add_argument("--effective-source", default=None,
                        help="measured_* methods: where the effective numbers are measured: checkpoint (default: "
                             "the run's own model at the switch epoch), input (the training inputs), a .npz with "
                             "features [features_aug, labels] (one row per training example) or a TorchScript "
                             "encoder file")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs (default: the recipe's; CIFAR 200); warm-up, lr decays and the DRW/DRS "
                             "switch scale with it")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's); under torchrun the global batch, of "
                        "which each process trains its share")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (default: the recipe's)")
    parser.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: the recipe's)")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="model (default: the recipe's: mlp for digits, logistic for synthetic and features, "
                             "resnet32 for CIFAR-size images, resnet50 / resnext50 / resnet152 for the large ones)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--accel", choices=ACCELS, default="auto",
                        help="auto: whole-step CUDA graph on CUDA, plain eager on CPU; compile: torch.compile")
    parser.add_argument("--backend", choices=("auto", "reference", "cpu", "cuda"), default="auto",
                        help="loss backend (default auto: the fused kernels where built)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def training_overrides(args) -> dict:
    overrides = {"beta": args.beta, "gamma": args.gamma, "tau": args.tau, "accel": args.accel,
                 "backend": args.backend}
    for name in ("data_dir", "batch_size", "lr", "weight_decay", "model", "workers", "init_weights",
                 "effective_source"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    options = {name: getattr(args, name) for name in _DATASET_OPTIONS if getattr(args, name) is not None}
    if options:
        overrides["dataset_options"] = options
    return overrides


def run(args) -> int:
    from ..harness.compare import atomic_write, check_writable
    from ..harness.ddp import is_main, on_main
    from ..harness.train import TrainConfig, resolve_config, train_run

    config = TrainConfig(args.dataset, args.method, seed=args.seed, imbalance=args.imbalance, epochs=args.epochs,
                         device=args.device, **training_overrides(args))
    resolve_config(config)
    on_main(check_writable, args.out)  # before training, not after it (rank 0 writes, under torchrun)
    result = train_run(config, progress=not args.no_progress)
    if not is_main():
        return 0
    path = os.path.join(args.out, "result.json")
    atomic_write(path, json.dumps(result, indent=1))
    head = f"{args.dataset} {args.method} seed {args.seed}"
    if result["status"] == "diverged":
        print(f"{head}: DIVERGED (training loss non-finite in epoch {result['diverged_epoch']}; no metrics), "
              f"{result['train_time_s']:.1f} s -> {path}")
    else:
        print(f"{head}: top-1 error {result['top1_error']:.2f}%, balanced accuracy {result['balanced_accuracy']:.2f}%, "
              f"{result['train_time_s']:.1f} s -> {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train one long-tail method, write OUT/result.json",
                                   description=__doc__ + TORCHRUN_NOTE)
    add_training_arguments(parser)
    parser.add_argument("--method", required=True, choices=METHODS, metavar="METHOD",
                        help="one of: " + ", ".join(METHODS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.set_defaults(func=run, data_parallel=True)

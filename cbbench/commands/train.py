"""``cbbench train``: train one long-tail method on one dataset and write DIR/result.json."""
from __future__ import annotations

import argparse
import json
import os

from ..harness.datasets import CLI_DATASET_OPTIONS, DATASETS, DEFAULT_IMBALANCE
from ..harness.errors import OutputError, UsageError
from ..harness.methods import METHODS, get_spec
from ..harness.models import MODELS
from ..harness.train import ACCELS, TrainConfig

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
_DATASET_OPTIONS = CLI_DATASET_OPTIONS
# options of the loss that only some methods use: the option and the MethodSpec property naming those methods;
# given for methods that all ignore it, the option is refused (check_method_options)
METHOD_OPTIONS = {"beta": "uses_beta", "gamma": "uses_gamma", "tau": "uses_tau"}


def _default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


def _users(option: str) -> list:
    return [m for m in METHODS if getattr(get_spec(m), METHOD_OPTIONS[option])]


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
    parser.add_argument("--beta", type=float, default=None, help=f"class-balanced beta (default {_default('beta')}); "
                        f"for the methods that use it: {', '.join(_users('beta'))}")
    parser.add_argument("--gamma", type=float, default=None, help=f"focal gamma (default {_default('gamma')}); for "
                        f"the methods that use it: {', '.join(_users('gamma'))}")
    parser.add_argument("--tau", type=float, default=None, help=f"logit-adjustment tau (default {_default('tau')}); "
                        f"for the methods that use it: {', '.join(_users('tau'))}")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none at all: loading, "
                        "checking, training)")


def check_method_options(args, methods) -> None:
    """UsageError for ``--beta`` / ``--gamma`` / ``--tau`` given while none of ``methods`` uses it."""
    for option, uses in METHOD_OPTIONS.items():
        if getattr(args, option) is not None and not any(getattr(get_spec(m), uses) for m in methods):
            chosen = f"method {methods[0]}" if len(methods) == 1 else f"methods {', '.join(methods)}"
            raise UsageError(f"--{option} does not apply: the {chosen} do{'es' if len(methods) == 1 else ''} not use "
                             f"it (it changes {', '.join(_users(option))}); remove --{option}")


def training_overrides(args) -> dict:
    overrides = {"accel": args.accel, "backend": args.backend}
    for name in ("beta", "gamma", "tau", "data_dir", "batch_size", "lr", "weight_decay", "model", "workers",
                 "init_weights", "effective_source"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    options = {name: getattr(args, name) for name in _DATASET_OPTIONS if getattr(args, name) is not None}
    if options:
        overrides["dataset_options"] = options
    return overrides


def run(args) -> int:
    from ..harness.ddp import is_main
    from ..harness.output import atomic_write, main_folder_lock
    from ..harness.train import resolve_config, train_run

    check_method_options(args, [args.method])
    config = TrainConfig(args.dataset, args.method, seed=args.seed, imbalance=args.imbalance, epochs=args.epochs,
                         device=args.device, **training_overrides(args))
    resolve_config(config)
    # the folder is checked writable and locked before training, not after it (rank 0 writes, under torchrun)
    with main_folder_lock(args.out):
        result = train_run(config, progress=not args.no_progress)
        if not is_main():
            return 0
        path = os.path.join(args.out, "result.json")
        text = json.dumps(result, indent=1)
        try:
            atomic_write(path, text)
        except OutputError as exc:  # the disk filled up during training: the result is not lost with it
            print(text)
            raise OutputError(f"{exc} (the run's result is printed on stdout instead)") from None
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

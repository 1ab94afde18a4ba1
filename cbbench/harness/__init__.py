"""The long-tail accuracy harness: long-tailed datasets (built in, your own image folders, list files
and features, and the ImageNet-LT / Places-LT / iNaturalist 2018 presets), re-weighting / re-sampling /
logit-adjustment methods, training (CPU and CUDA), metrics, method comparisons and the beta experiment,
with tables and plots.

Python API (used by the asv accuracy benchmarks and the report)::

    from cbbench.harness import METHODS, DATASETS, run_comparison, train_run, TrainConfig
    runs = run_comparison("digits-lt", ["softmax", "cb_focal"], seeds=3, out_dir="out")
    runs = run_comparison("folder", ["softmax", "cb_focal"], 3, "out", data_dir="my_images")
    # every run a Ray task on a cluster (pip install 'cbbench[ray]'), results written here
    runs = run_comparison("cifar10-lt", METHODS, 3, "out", data_dir="cifar", device="cuda",
                          executor=RayExecutor(address="auto", gpus_per_run=0.25))
"""
from .compare import run_comparison
from .datasets import DATASETS, DEFAULT_IMBALANCE, load_dataset, long_tailed_counts
from .executors import RayExecutor
from .methods import METHODS
from .train import TrainConfig, train_run
from .userdata import PRESETS

__all__ = ["DATASETS", "DEFAULT_IMBALANCE", "METHODS", "PRESETS", "RayExecutor", "TrainConfig", "load_dataset",
           "long_tailed_counts", "run_comparison", "train_run"]

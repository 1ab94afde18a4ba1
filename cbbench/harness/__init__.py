"""The long-tail accuracy harness: long-tailed datasets, re-weighting / re-sampling / logit-adjustment
methods, training (CPU and CUDA), metrics, and method comparisons with tables and plots.

Python API (used by the asv accuracy benchmarks and the report)::

    from cbbench.harness import METHODS, DATASETS, run_comparison, train_run, TrainConfig
    runs = run_comparison("digits-lt", ["softmax", "cb_focal"], seeds=3, out_dir="out")
"""
from .compare import run_comparison
from .datasets import DATASETS, DEFAULT_IMBALANCE, load_dataset, long_tailed_counts
from .methods import METHODS
from .train import TrainConfig, train_run

__all__ = ["DATASETS", "DEFAULT_IMBALANCE", "METHODS", "TrainConfig", "load_dataset", "long_tailed_counts",
           "run_comparison", "train_run"]

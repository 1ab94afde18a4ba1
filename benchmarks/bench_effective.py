"""The measured effective number (cbbench/effective.py) at the size of its target: 100,000 samples x 512
features x 1,000 classes (<= 60 s on the 2-core CPU), time and memory.

The data are prototypes-LT-like: class c holds P_c prototypes (10 ... 200, log-uniform, independent of
its count), counts long-tailed 466 ... 4 (IF 100, 99,807 samples), every sample a prototype plus noise,
and a second view of every sample (fresh noise) for the radius. ``time_`` benchmarks: with views (the
default estimator) and without (radius from nearest neighbours); ``track_peak_rss`` is the rise of the
resident memory during one measurement at a quarter, a half and all of the samples (same classes):
linear memory in N means it doubles with N, no faster.
"""
import math

import numpy as np
import torch

from cbbench.effective import effective_number_from_features
from cbbench.harness.datasets import long_tailed_counts

from .bench_memory import peak_rss_rise_mib, proc_peak_rss_unavailable

NUM_CLASSES, DIM, N_MAX, IMBALANCE = 1000, 512, 466, 100.0


def make_data(fraction: float = 1.0, seed: int = 0):
    """(features, labels, second views) float32, classes in label order; ``fraction`` keeps that share of
    every class's samples (at least one)."""
    rng = np.random.RandomState(seed)
    counts = np.maximum(1, (np.asarray(long_tailed_counts(N_MAX, NUM_CLASSES, IMBALANCE)) * fraction).astype(int))
    prototypes = np.exp(rng.uniform(math.log(10), math.log(200), size=NUM_CLASSES)).astype(int)
    y = np.repeat(np.arange(NUM_CLASSES), counts)
    offsets = np.concatenate([[0], np.cumsum(prototypes)[:-1]])
    centres = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
    points = centres[np.repeat(np.arange(NUM_CLASSES), prototypes)] + \
        1.5 * rng.normal(size=(int(prototypes.sum()), DIM)).astype(np.float32)
    which = offsets[y] + (rng.random_sample(len(y)) * prototypes[y]).astype(int)
    x = points[which] + 0.3 * rng.normal(size=(len(y), DIM)).astype(np.float32)
    aug = points[which] + 0.3 * rng.normal(size=(len(y), DIM)).astype(np.float32)
    return x, y, aug


class MeasuredEffectiveNumber:
    """Time of one measurement of 99,807 x 512 x 1,000 classes on the CPU (``threads`` torch threads)."""
    params = [["views", "no_views"], [1, 2]]
    param_names = ["radius", "threads"]
    timeout = 600
    number = 1
    repeat = 3
    warmup_time = 0

    def setup_cache(self):
        return make_data()

    def setup(self, data, radius, threads):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        x, y, aug = data
        self.args = (torch.from_numpy(x), torch.from_numpy(y), NUM_CLASSES)
        self.aug = torch.from_numpy(aug) if radius == "views" else None

    def teardown(self, data, radius, threads):
        torch.set_num_threads(self.previous)

    def time_measure(self, data, radius, threads):
        effective_number_from_features(*self.args, features_aug=self.aug)


class MeasuredEffectiveNumberMemory:
    """Rise of the resident memory during one measurement (with views) at a share of the samples."""
    params = [[0.25, 0.5, 1.0]]
    param_names = ["fraction"]
    timeout = 600

    def setup(self, fraction):
        reason = proc_peak_rss_unavailable()
        if reason is not None:
            raise NotImplementedError(reason)
        x, y, aug = make_data(fraction)
        self.args = (torch.from_numpy(x), torch.from_numpy(y), NUM_CLASSES)
        self.aug = torch.from_numpy(aug)

    def track_peak_rss(self, fraction):
        return peak_rss_rise_mib(lambda: effective_number_from_features(*self.args, features_aug=self.aug))

    track_peak_rss.unit = "MiB"

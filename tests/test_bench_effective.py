"""The asv benchmark of the measured effective number (benchmarks/bench_effective.py) at a small share of
its size, and the import-time promise: the library imports no plotting or scikit-learn code."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module():
    sys.path.insert(0, str(ROOT))
    try:
        import benchmarks.bench_effective as bench
        yield bench
    finally:
        sys.path.remove(str(ROOT))


def test_benchmark_data_are_the_target_shape(module):
    x, y, aug = module.make_data(fraction=0.02)
    counts = np.bincount(y, minlength=module.NUM_CLASSES)
    assert x.shape[1] == 512 and x.shape == aug.shape and len(counts) == 1000 and counts.min() >= 1
    assert x.dtype == np.float32 and counts[0] == int(466 * 0.02)
    assert module.MeasuredEffectiveNumber.params == [["views", "no_views"], [1, 2]]


def test_benchmark_runs_and_restores_the_threads(module):
    import torch

    data = module.make_data(fraction=0.02)
    before = torch.get_num_threads()
    bench = module.MeasuredEffectiveNumber()
    bench.setup(data, "views", 1)
    assert torch.get_num_threads() == 1
    bench.time_measure(data, "views", 1)
    bench.teardown(data, "views", 1)
    assert torch.get_num_threads() == before


def test_importing_cbbench_loads_no_plotting_or_sklearn():
    code = ("import sys, cbbench, cbbench.effective; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'sklearn', 'scipy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr

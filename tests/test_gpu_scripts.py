"""The GPU-only scripts keep to the kernel contract, checked without a GPU.

``scripts/sanitizer_cases.py`` calls the CUDA module directly (that is what compute-sanitizer needs),
so a change of the contract in ``cbbench/ops.py`` could leave it calling with stale arguments, which
would only show on a GPU machine. Here its float32/float64 cases run against the CPU kernels, which
implement the same contract (half types and the CUDA-only in-place rescale are left out).
"""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cbbench import ops

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(ops.kernel_module("cpu") is None, reason="cbbench._cpu is not built")


@pytest.fixture
def sanitizer_cases_on_cpu(monkeypatch):
    spec = importlib.util.spec_from_file_location("sanitizer_cases", ROOT / "scripts" / "sanitizer_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cpu = ops.kernel_module("cpu")
    monkeypatch.setattr(module, "DEV", "cpu")
    monkeypatch.setattr(module, "ops", SimpleNamespace(kernel_module=lambda device_type: cpu))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    return module


def test_sanitizer_cases_follow_the_kernel_contract(sanitizer_cases_on_cpu):
    skip = ("float16", "bfloat16", " bf16", " f16", "scaled_grad", "autograd")
    ran = []
    for name, run in sanitizer_cases_on_cpu.cases(quick=False):
        if any(word in name for word in skip):
            continue
        assert run(), f"sanitizer case {name!r} gave a wrong result on the CPU kernels"
        ran.append(name)
    assert len(ran) >= 25 and any("f64" in name for name in ran) and any("multi-hot" in name for name in ran)

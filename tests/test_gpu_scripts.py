"""The GPU-only scripts keep to the kernel contract, checked without a GPU.

``scripts/sanitizer_cases.py`` calls the CUDA module directly (that is what compute-sanitizer needs),
so a change of the contract in ``cbbench/ops.py`` could leave it calling with stale arguments, which
would only show on a GPU machine. Here its float32/float64 cases run against the CPU kernels, which
implement the same contract (half types, the CUDA-only in-place rescale and the CUDA-graph captures are
left out) -- including the review's masked-class triggers, checked against the reference.
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
    skip = ("float16", "bfloat16", " bf16", " f16", "scaled_grad", "autograd", "graph capture")
    ran = []
    for name, run in sanitizer_cases_on_cpu.cases(quick=False):
        if any(word in name for word in skip):
            continue
        assert run(), f"sanitizer case {name!r} gave a wrong result on the CPU kernels"
        ran.append(name)
    assert len(ran) >= 25 and any("f64" in name for name in ran) and any("multi-hot" in name for name in ran)
    assert any("softmax focal" in name for name in ran) and any("sample-weighted" in name for name in ran)
    masked = [name for name in ran if "masked" in name]
    assert len(masked) >= 18 and any("offset" in name for name in masked), masked


def test_masked_triggers_fail_without_their_mask(sanitizer_cases_on_cpu):
    """The masked cases check something: the mask really puts -inf at the start of every vector (so
    at every thread's first element on every softmax path) and moves the targets off it."""
    z = torch.zeros(3, 37)
    y = torch.tensor([0, 4, 36])
    masked_z, moved_y, masked = sanitizer_cases_on_cpu.mask_vector_starts(z, y, keep_last=False)
    assert masked_z[:, 0:36:4].isneginf().all() and not masked_z[:, 36].isneginf().any()
    assert not masked_z[torch.arange(3), moved_y].isneginf().any() and moved_y.tolist() == [3, 7, 36]
    z64 = torch.zeros(2, 9, dtype=torch.float64)  # 2-element vectors: every even column
    assert sanitizer_cases_on_cpu.mask_vector_starts(z64, torch.tensor([0, 1]), keep_last=True)[2].tolist() == \
        [True, False] * 4 + [False]

"""The CUDA review's triggers (issue 17), through the public API, on a GPU.

1. Masked classes at the start of every thread's share and every chunk, on every softmax plan: the
   split path used to give NaN rows for a row whose thread starts on a -inf logit (the review's
   trigger: fp32 (4, 150001), ``z[:, 0] = -inf`` or ``logit_offset[0] = -inf``, targets != 0).
2. Each plan captured into a CUDA graph *without* an eager warm-up, in a fresh process (so the capture
   is the plan's first launch and the cluster probes have not run): the probes must not run inside
   the capture (the launch takes the split path until an uncaptured call has made them).
3. A build with ``CBBENCH_CUDA_ARCH`` set to an older architecture than this GPU's (and
   ``TORCH_CUDA_ARCH_LIST`` the same): the module must embed PTX and run here (before the fix the
   variable replaced torch's list and embedded no PTX: "no kernel image"). Slow: builds the extension.

Every test is marked ``cuda`` and skipped without a GPU or without ``cbbench._cuda``. The host-side
counterpart of (1), the same device functions run on the CPU, is ``make cuda-check``
(kernels/cuda/harness/device_math_check.cu, tests/test_cuda_build.py).
"""
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from cbbench import functional as F
from cbbench import ops
from cuda_support import CUDA_MARKS

ROOT = Path(__file__).resolve().parents[1]
SANITIZER_CASES = ROOT / "scripts" / "sanitizer_cases.py"


pytestmark = CUDA_MARKS

DEV = "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float64: 1e-10}


def _sanitizer_cases():
    """scripts/sanitizer_cases.py as a module: the one source of the masking pattern and of the class
    counts that select each softmax plan."""
    spec = importlib.util.spec_from_file_location("sanitizer_cases", SANITIZER_CASES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _sanitizer_cases()
# group (two shapes), block, cluster on sm_90 (split elsewhere), cluster<8> / split, split
PLAN_CLASSES = list(CASES.PLAN_CLASSES)


def _plan(c, dtype):
    return ops.kernel_module("cuda").softmax_plan(c, torch.empty(0, device=DEV, dtype=dtype))


def _loss_and_grad(z, y, backend, **kwargs):
    leaf = z.detach().clone().requires_grad_(True)
    loss = F.softmax_cross_entropy(leaf, y, reduction="none", backend=backend, **kwargs)
    loss.sum().backward()
    return loss.detach(), leaf.grad


def _check_against_reference(z, y, dtype, **kwargs):
    """Kernel vs the float64 reference on the same values; the expected values' special entries (an
    +inf loss with smoothing and a masked class) must match exactly."""
    got_loss, got_grad = _loss_and_grad(z, y, "cuda", **kwargs)
    ref_kwargs = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    want_loss, want_grad = _loss_and_grad(z.double(), y, "reference", **ref_kwargs)
    assert torch.isfinite(want_grad).all() and not torch.isnan(want_loss).any()
    tol = TOL[dtype]
    torch.testing.assert_close(got_loss.double(), want_loss, rtol=tol, atol=tol)  # inf == inf
    torch.testing.assert_close(got_grad.double(), want_grad.to(dtype).double(), rtol=tol,
                               atol=tol * want_grad.abs().max().item())


@pytest.mark.parametrize("c", [150001, 131072, 20000])
def test_review_trigger_masked_first_class(c):
    """fp32 (4, C), z[:, 0] = -inf or logit_offset[0] = -inf, targets != 0: finite rows (every plan
    that takes rows this long: split, and cluster on sm_90)."""
    g = torch.Generator(device=DEV).manual_seed(c)
    z = torch.randn(4, c, generator=g, device=DEV) * 3
    y = torch.randint(1, c, (4,), generator=g, device=DEV)
    masked = z.clone()
    masked[:, 0] = float("-inf")
    _check_against_reference(masked, y, torch.float32)
    offset = torch.randn(c, generator=g, device=DEV)
    offset[0] = float("-inf")
    _check_against_reference(z, y, torch.float32, logit_offset=offset)
    # with smoothing the mean of the logits is -inf: an +inf loss, a finite gradient
    _check_against_reference(z, y, torch.float32, logit_offset=offset, label_smoothing=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("c", PLAN_CLASSES)
@pytest.mark.parametrize("pattern", ["vector_starts", "all_but_last", "offset"])
def test_masked_chunk_starts_on_every_plan(c, dtype, pattern):
    """-inf at the first element of every 16-byte vector (so of every thread's share and every CTA /
    split chunk), or at all but the last, or through logit_offset; the targets on unmasked classes."""
    g = torch.Generator(device=DEV).manual_seed(c)
    n = 5 if c > 2000 else 64
    z = (torch.randn(n, c, generator=g, device=DEV) * 3).to(dtype)
    y = torch.randint(0, c, (n,), generator=g, device=DEV)
    y[1] = -100
    masked_z, y, mask = CASES.mask_vector_starts(z, y, keep_last=pattern == "all_but_last")
    assert mask[: c // 2].any(), "nothing masked"
    plan = _plan(c, dtype)
    if pattern == "offset":
        offset = torch.randn(c, generator=g, device=DEV).masked_fill(mask, float("-inf"))
        _check_against_reference(z, y, dtype, logit_offset=offset)
    else:
        _check_against_reference(masked_z, y, dtype)
    assert plan == _plan(c, dtype)


def test_every_plan_is_reached():
    kinds = {_plan(c, torch.float32).rstrip("0123456789x") for c in PLAN_CLASSES}
    assert {"group", "block", "split"} <= kinds, kinds
    if torch.cuda.get_device_capability()[0] >= 9:
        assert "cluster" in kinds, kinds


def test_capture_without_warmup_for_each_plan():
    """Fresh process: each plan's first launch is inside torch.cuda.graph (fwd + bwd of the public API),
    replayed on new data and checked against the reference; then captured again after an eager call:
    bitwise the eager result (scripts/sanitizer_cases.py graph_case)."""
    res = subprocess.run([sys.executable, str(SANITIZER_CASES), "--only", "graph capture without warm-up"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert out.count("ok   graph capture") >= len(PLAN_CLASSES), out[-4000:]


def _older_arch():
    """An architecture older than this GPU's that nvcc still supports: the build must JIT its PTX."""
    major, minor = torch.cuda.get_device_capability()
    return "80" if major >= 9 else "75"


@pytest.mark.slow
def test_build_with_cbbench_cuda_arch_runs_here(tmp_path):
    """setup.py build_ext with TORCH_CUDA_ARCH_LIST and CBBENCH_CUDA_ARCH both an older architecture
    than this GPU's: the module has no SASS for this GPU, so it runs only through the embedded PTX; a
    cluster-size row then takes the split path (no cluster instructions in that PTX)."""
    arch = _older_arch()
    env = dict(os.environ, CBBENCH_CUDA="1", CBBENCH_FAST_PATH="0", CBBENCH_CUDA_ARCH=arch,
               TORCH_CUDA_ARCH_LIST=f"{arch[0]}.{arch[1]}", MAX_JOBS=str(os.cpu_count() or 4))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                            "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1500)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    assert f"code=compute_{arch}" in build.stdout, build.stdout[-4000:]  # the PTX flag reached nvcc
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = tmp_path / "lib" / "cbbench" / f"_cuda{suffix}"
    assert built.exists(), sorted(str(p) for p in (tmp_path / "lib").rglob("*"))
    # a fresh process with the new module in place of the installed one, behind the public API
    script = f"""
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("cbbench._cuda", {str(built)!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); sys.modules["cbbench._cuda"] = mod
from cbbench import functional as F, ops
assert ops.kernel_module("cuda") is mod, ops.kernel_status("cuda")
like = torch.empty(0, device="cuda")
for c in (10, 1203, 131072):
    z = torch.randn(3, c, device="cuda", requires_grad=True); y = torch.randint(0, c, (3,), device="cuda")
    F.softmax_cross_entropy(z, y, backend="cuda").backward()
    r = z.detach().double().requires_grad_(True); F.softmax_cross_entropy(r, y, backend="reference").backward()
    torch.testing.assert_close(z.grad.double(), r.grad, rtol=1e-4, atol=1e-6)
    print("ok", c, mod.softmax_plan(c, like))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "ok 131072 split" in out, out[-4000:]

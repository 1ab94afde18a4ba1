"""The ops' autograd and reductions (kernels/ops/ops.cpp) against device kernels written in plain PyTorch.

The stand-in kernels implement the contract of the fused ops (cbbench/ops/__init__.py) with the reference
and autograd and are registered for the CPU dispatch key in place of the Cython ones for the duration of
a test, so these tests check the ops' C++ autograd, gradient scaling, fake kernels and compile tracing
independently of the compiled kernels (which have their own parity tests).
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cbbench import functional as F
from cbbench import ops
from cbbench import reference as R


def _on_fresh_thread(fn):
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(fn).result()


class ContractKernels:
    """The kernel contract of cbbench/ops/__init__.py, computed by the reference in float64.

    A custom op runs its kernel below the autograd dispatch key (thread-local), so the stand-in
    differentiates the reference on a fresh thread, where autograd is on.
    """

    @staticmethod
    def _run(loss_fn, logits, need_grad):
        out = {}

        def run():
            z = logits.detach().double().requires_grad_(True)
            loss = loss_fn(z)
            grad = None
            if need_grad:
                grad = torch.autograd.grad(loss.sum(), z)[0] if z.numel() else torch.zeros_like(z)
                grad = grad.to(logits.dtype)
            out["result"] = (loss.detach().to(torch.float64 if logits.dtype == torch.float64 else torch.float32), grad)

        _on_fresh_thread(run)
        return out["result"]

    calls = []  # need_grad of every call, for the tests that spy on it

    @classmethod
    def softmax_ce(cls, logits, target, weight, logit_offset, target_margin, scale, label_smoothing, gamma, alpha,
                   sample_weight, ignore_index, reduction, need_grad):
        cls.calls.append(need_grad)
        options = dict(reduction=reduction, ignore_index=ignore_index, logit_offset=logit_offset,
                       target_margin=target_margin, scale=scale, sample_weight=sample_weight)
        if gamma > 0:
            return cls._run(lambda z: R.softmax_focal_loss(z, target, weight, gamma=gamma, alpha=alpha, **options),
                            logits, need_grad)
        return cls._run(lambda z: R.softmax_cross_entropy(z, target, weight, label_smoothing=label_smoothing,
                                                          **options), logits, need_grad)

    @classmethod
    def sigmoid_focal(cls, logits, target, weight, gamma, alpha, sample_weight, ignore_index, focal, reduction,
                      need_grad):
        cls.calls.append(need_grad)
        t = target.double() if target.is_floating_point() else target
        return cls._run(lambda z: R.sigmoid_focal_loss(
            z, t, weight, gamma=gamma if focal else 0.0, alpha=None if alpha < 0 else alpha, reduction=reduction,
            ignore_index=ignore_index, sample_weight=sample_weight), logits, need_grad)


@pytest.fixture
def contract_cpu():
    """The stand-in kernels registered for the CPU key of the fused ops; the Cython ones come back when the
    library object goes (torch.library keeps the overridden kernel)."""
    if ops.kernel_module("cpu") is None:
        pytest.skip(f"the op library and CPU kernels are not built ({ops.kernel_status('cpu')})")

    def wrap(fn):
        def kernel(*args):
            loss, grad = fn(*args)
            return loss, grad if grad is not None else args[0].new_empty((0,))
        return kernel

    lib = torch.library.Library("cbbench", "IMPL")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        lib.impl("softmax_cross_entropy_fused", wrap(ContractKernels.softmax_ce), "CPU")
        lib.impl("sigmoid_focal_fused", wrap(ContractKernels.sigmoid_focal), "CPU")
    ContractKernels.calls.clear()
    yield ContractKernels
    lib._destroy()


def _case(seed=0, n=9, c=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g).to(dtype) * 2
    y = torch.randint(0, c, (n,), generator=g)
    y[1] = -100
    w = torch.rand(c, generator=g) + 0.2
    return z, y, w


CALLS = [
    ("softmax", lambda z, y, w, red, be: F.softmax_cross_entropy(z, y, w, reduction=red, backend=be,
                                                                  label_smoothing=0.1, scale=2.0,
                                                                  logit_offset=torch.linspace(-1, 1, z.shape[1]),
                                                                  target_margin=torch.full((z.shape[1],), 0.3))),
    ("sigmoid", lambda z, y, w, red, be: F.sigmoid_cross_entropy(z, y, w, reduction=red, backend=be)),
    ("focal", lambda z, y, w, red, be: F.sigmoid_focal_loss(z, y, w, gamma=1.5, alpha=0.25, reduction=red, backend=be)),
    ("multi-hot focal", lambda z, y, w, red, be: F.sigmoid_focal_loss(
        z, (torch.arange(z.numel()).reshape(z.shape) % 3 == 0).to(z.dtype), w, gamma=0.5, reduction=red, backend=be)),
    ("softmax focal", lambda z, y, w, red, be: F.softmax_focal_loss(
        z, y, w, gamma=1.5, alpha=torch.linspace(0.2, 1.0, z.shape[1]), reduction=red, backend=be,
        sample_weight=torch.linspace(0.5, 2.0, z.shape[0]))),
    ("sigmoid sample weights", lambda z, y, w, red, be: F.sigmoid_cross_entropy(
        z, y, w, reduction=red, backend=be, sample_weight=torch.linspace(0.0, 2.0, z.shape[0]))),
]


@pytest.mark.parametrize("name, call", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "sum", "none"])
def test_fused_path_matches_reference(contract_cpu, name, call, reduction):
    z, y, w = _case()
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    got = call(z1, y, w, reduction, "cpu")
    want = call(z2, y, w, reduction, "reference")
    torch.testing.assert_close(got, want)
    # a grad_output that is not 1 (and a per-sample one for "none") exercises the rescaling
    g_out = torch.linspace(0.5, 2.0, got.numel()).reshape(got.shape) if reduction == "none" else torch.tensor(3.0)
    got.backward(g_out)
    want.backward(g_out)
    torch.testing.assert_close(z1.grad, z2.grad)


def test_backward_with_grad_output_one_returns_the_fused_gradient(contract_cpu):
    z, y, w = _case()
    z.requires_grad_(True)
    F.softmax_cross_entropy(z, y, w, backend="cpu").backward()
    ref = z.detach().clone().requires_grad_(True)
    R.softmax_cross_entropy(ref, y, w).backward()
    torch.testing.assert_close(z.grad, ref.grad)


def test_spatial_and_noncontiguous_inputs(contract_cpu):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 4, 5, 2, generator=g).transpose(2, 3)  # (N, C, d1, d2), not contiguous
    y = torch.randint(0, 4, (3, 2, 5), generator=g)
    for fn in (F.softmax_cross_entropy, F.sigmoid_focal_loss):
        a = z.clone().requires_grad_(True)
        b = z.clone().requires_grad_(True)
        la, lb = fn(a, y, reduction="none", backend="cpu"), fn(b, y, reduction="none", backend="reference")
        assert la.shape == (3, 2, 5)
        torch.testing.assert_close(la, lb)
        la.sum().backward()
        lb.sum().backward()
        torch.testing.assert_close(a.grad, b.grad)


def test_no_gradient_computed_without_grad(contract_cpu):
    z, y, w = _case()
    F.softmax_cross_entropy(z, y, w, backend="cpu")
    with torch.no_grad():
        F.softmax_cross_entropy(z.requires_grad_(True), y, w, backend="cpu")
    F.softmax_cross_entropy(z, y, w, backend="cpu")
    assert ContractKernels.calls == [False, False, True]


def test_half_logits_are_upcast_for_cpu_kernels(contract_cpu):
    z, y, w = _case(dtype=torch.bfloat16)
    z.requires_grad_(True)
    loss = F.sigmoid_focal_loss(z, y, w, backend="cpu")
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, F.sigmoid_focal_loss(z.detach().float(), y, w, backend="reference"))


def test_opcheck_with_contract_kernels(contract_cpu):
    z, y, w = _case()
    t = (torch.rand(z.shape) < 0.3).float()
    s = torch.rand(z.shape[0]) + 0.5
    for reduction in ("mean", "none"):
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy.default,
                              (z.clone().requires_grad_(True), y, w, None, None, 1.0, 0.0, 0.0, None, None, -100,
                               reduction))
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy.default,
                              (z.clone().requires_grad_(True), y, w, None, None, 1.0, 0.0, 2.0, w, s, -100, reduction))
        torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default,
                              (z.clone().requires_grad_(True), y, w, 2.0, -1.0, s, -100, True, reduction))
        torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default,
                              (z.clone().requires_grad_(True), t, None, 0.0, 0.25, None, -100, False, reduction))


def test_torch_compile_fullgraph_with_contract_kernels(contract_cpu):
    z, y, w = _case()

    def step(logits):
        return F.sigmoid_focal_loss(logits, y, w, gamma=2.0, backend="cpu") + F.softmax_cross_entropy(
            logits, y, w, backend="cpu", reduction="weighted_mean")

    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    la, lb = compiled(a), step(b)
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.skipif(ops.kernel_module("cpu") is None, reason="CPU kernels not built")
def test_loss_divisor_refuses_arguments_its_kernels_would_read_past():
    """cbbench::loss_divisor checks its arguments once for every device (kernels/ops/cb_ops.h,
    check_divisor_args): the CUDA kernel (kernels/cuda/divisor.cu) reads within these sizes."""
    div = torch.ops.cbbench.loss_divisor
    y, w, s = torch.tensor([0, 2, -100]), torch.rand(3), torch.rand(3)
    assert div(y, w, s, 3, -100, "weighted_mean", True).item() == pytest.approx(float(w[0] * s[0] + w[2] * s[1]))
    with pytest.raises(RuntimeError, match="weight must have 4 elements, got 3"):
        div(y, w, None, 4, -100, "weighted_mean", True)
    with pytest.raises(RuntimeError, match="sample_weight must have 3 elements, got 2"):
        div(y, None, s[:2], 3, -100, "weighted_mean", True)
    with pytest.raises(TypeError, match="class targets must be int64"):
        div(y.int(), w, None, 3, -100, "mean", True)
    with pytest.raises(RuntimeError, match=r"multi-hot target must be \(rows, 3\)"):
        div(torch.rand(3, 4), w, None, 3, -100, "mean", True)

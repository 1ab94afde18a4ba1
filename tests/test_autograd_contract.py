"""Every loss behaves like a PyTorch loss under every autograd feature, on both CPU paths.

Paths: the reference (``backend="reference"``) and the op (``torch.ops.cbbench.*``: the C++ autograd of
kernels/ops/ops.cpp over the Cython CPU kernels, and its composite). Each is checked against independent
ground truth: float64 ``gradcheck`` / ``gradgradcheck`` (finite differences, batched gradients included),
the reference differentiated by autograd, and ``torch.func`` on the reference.
"""
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import cbbench
from cbbench import functional as F
from cbbench import ops

PATHS = ["reference", "op"]


@pytest.fixture(params=PATHS)
def backend(request):
    """The backend string of a path."""
    if request.param == "reference":
        return "reference"
    if ops.kernel_module("cpu") is None:
        pytest.skip(f"CPU kernels not built ({ops.kernel_status('cpu')})")
    return "cpu"


def _inputs(n=6, c=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c, generator=g) * 2).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    y[1] = -100
    # float32-representable: the fused paths hold per-class vectors in float32
    w = (torch.rand(c, generator=g) + 0.3).float().double()
    return z, y, w


# Every loss and option of the public API: (name, call(z, y, w, reduction, backend))
LOSSES = [
    ("softmax", lambda z, y, w, r, b: F.softmax_cross_entropy(z, y, w, reduction=r, backend=b)),
    ("softmax options", lambda z, y, w, r, b: F.softmax_cross_entropy(
        z, y, w, reduction=r, backend=b, label_smoothing=0.2, scale=1.5,
        logit_offset=torch.linspace(-1, 1, z.shape[1], dtype=torch.float64).float().double(),
        target_margin=torch.full((z.shape[1],), 0.25, dtype=torch.float64))),
    ("sigmoid", lambda z, y, w, r, b: F.sigmoid_cross_entropy(z, y, w, reduction=r, backend=b)),
    ("focal", lambda z, y, w, r, b: F.sigmoid_focal_loss(z, y, w, gamma=1.5, alpha=0.25, reduction=r, backend=b)),
    ("focal gamma<1", lambda z, y, w, r, b: F.sigmoid_focal_loss(z, y, w, gamma=0.5, reduction=r, backend=b)),
    ("multi-hot focal", lambda z, y, w, r, b: F.sigmoid_focal_loss(
        z, (torch.arange(z.numel()).reshape(z.shape) % 3 == 0).double(), w, gamma=2.0, reduction=r, backend=b)),
    ("softmax focal", lambda z, y, w, r, b: F.softmax_focal_loss(
        z, y, w, gamma=2.0, alpha=torch.linspace(0.25, 1.0, z.shape[1], dtype=torch.float64).float().double(),
        reduction=r, backend=b)),
    ("softmax focal gamma<1", lambda z, y, w, r, b: F.softmax_focal_loss(z, y, w, gamma=0.5, reduction=r, backend=b)),
    ("softmax sample weights", lambda z, y, w, r, b: F.softmax_cross_entropy(
        z, y, w, reduction=r, backend=b, sample_weight=torch.linspace(0.0, 2.0, z.shape[0], dtype=torch.float64))),
    ("focal sample weights", lambda z, y, w, r, b: F.sigmoid_focal_loss(
        z, y, w, gamma=1.0, reduction=r, backend=b, sample_weight=torch.linspace(0.5, 1.5, z.shape[0]).double())),
]
REDUCTIONS = ("mean", "weighted_mean", "sum", "none")
IDS = [name for name, _ in LOSSES]


def _scalar(out):
    # a fixed, non-uniform grad_output for "none", so row scaling is checked too
    if out.dim() == 0:
        return out
    return (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)).sum()


@pytest.mark.parametrize("name, call", LOSSES, ids=IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck(backend, name, call, reduction):
    z, y, w = _inputs()
    z.requires_grad_(True)
    fn = lambda x: _scalar(call(x, y, w, reduction, backend))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-7, rtol=1e-5, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, (z,), eps=1e-6, atol=1e-6, rtol=1e-4)
    # the loss itself, unscaled: for "none" a batch of per-row grad_outputs reaches the backward
    raw = lambda x: call(x, y, w, reduction, backend)  # noqa: E731
    assert torch.autograd.gradcheck(raw, (z,), eps=1e-6, atol=1e-7, rtol=1e-5, check_batched_grad=True)


def _grad_and_hvp(call, backend, reduction, v):
    z, y, w = _inputs(seed=3)
    z.requires_grad_(True)
    g, = torch.autograd.grad(_scalar(call(z, y, w, reduction, backend)), z, create_graph=True)
    h, = torch.autograd.grad((g * v).sum(), z)
    return g.detach(), h


@pytest.mark.parametrize("name, call", LOSSES, ids=IDS)
def test_hessian_vector_product_matches_reference(backend, name, call):
    v = torch.randn(6, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for reduction in ("mean", "none"):
        g, h = _grad_and_hvp(call, backend, reduction, v)
        g_ref, h_ref = _grad_and_hvp(call, "reference", reduction, v)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
        assert h.abs().max() > 1e-3  # a real second derivative, not a silent 0


def test_gradient_penalty_trains_like_the_reference(backend):
    """A WGAN-GP style penalty on d loss / d logits: the second derivative feeds the parameters."""
    grads = {}
    for be in (backend, "reference"):
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 5).double()
        x = torch.randn(8, 4, dtype=torch.float64)
        y = torch.randint(0, 5, (8,))
        logits = lin(x)
        loss = F.sigmoid_focal_loss(logits, y, gamma=2.0, backend=be)
        g, = torch.autograd.grad(loss, logits, create_graph=True)
        (loss + g.pow(2).sum()).backward()
        grads[be] = lin.weight.grad
    torch.testing.assert_close(grads[backend], grads["reference"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, call", LOSSES, ids=IDS)
def test_torch_func_transforms_match_reference(backend, name, call):
    z, y, w = _inputs(seed=4)
    f = lambda x: call(x, y, w, "mean", backend)  # noqa: E731
    f_ref = lambda x: call(x, y, w, "mean", "reference")  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(z), torch.func.grad(f_ref)(z))
    torch.testing.assert_close(torch.func.jacrev(f)(z), torch.func.jacrev(f_ref)(z))
    torch.testing.assert_close(torch.func.jacfwd(f)(z), torch.func.jacfwd(f_ref)(z))
    torch.testing.assert_close(torch.func.hessian(f)(z), torch.func.hessian(f_ref)(z))
    torch.testing.assert_close(torch.autograd.functional.jacobian(f, z, vectorize=True),
                               torch.autograd.functional.jacobian(f_ref, z))
    # per-sample gradients: vmap over a batch of inputs
    zs = torch.stack([z, z * 0.5, -z])
    per_sample = torch.func.vmap(torch.func.grad(f))(zs)
    for i in range(3):
        torch.testing.assert_close(per_sample[i], torch.func.grad(f_ref)(zs[i]))


def test_vmap_of_the_loss_over_samples(backend):
    z, y, w = _inputs(seed=5)
    y = y.clamp(min=0)
    per = torch.func.vmap(lambda zi, yi: F.softmax_cross_entropy(zi[None], yi[None], w, backend=backend))(z, y)
    torch.testing.assert_close(per, F.softmax_cross_entropy(z, y, w, reduction="none", backend="reference")
                               / torch.ones(()))


def test_forward_mode_ad_matches_reference(backend):
    import torch.autograd.forward_ad as fwAD

    z, y, w = _inputs(seed=6)
    t = torch.randn_like(z)
    for reduction in ("mean", "none"):
        tangents = []
        for be in (backend, "reference"):
            with fwAD.dual_level():
                out = F.sigmoid_focal_loss(fwAD.make_dual(z, t), y, w, gamma=2.0, reduction=reduction, backend=be)
                tangents.append(fwAD.unpack_dual(out).tangent)
        assert tangents[0] is not None
        torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, call", LOSSES, ids=IDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_repeated_backward_and_in_place_grad_changes(backend, name, call, reduction):
    z0, y, w = _inputs(seed=7)
    ref = z0.clone().requires_grad_(True)
    _scalar(call(ref, y, w, reduction, "reference")).backward()
    z = z0.clone().requires_grad_(True)
    loss = _scalar(call(z, y, w, reduction, backend))
    loss.backward(retain_graph=True)
    torch.testing.assert_close(z.grad, ref.grad)
    z.grad.zero_()                                    # in place between backwards
    loss.backward(retain_graph=True)
    torch.nn.utils.clip_grad_norm_([z], max_norm=1e-3)  # scales .grad in place
    z.grad = None
    (loss * 3).backward(retain_graph=True)            # a grad_output that is not 1
    loss.backward()                                   # a third and fourth backward
    torch.testing.assert_close(z.grad, 4 * ref.grad)


def test_gradient_survives_changes_to_the_grad_it_returned(backend):
    """The first backward hands its gradient to .grad without a copy; later backwards must not see
    what the caller did to it."""
    z0, y, w = _inputs(seed=8, dtype=torch.float32)
    z = z0.clone().requires_grad_(True)
    loss = F.softmax_cross_entropy(z, y, w, backend=backend)
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    z.grad.mul_(1e6).add_(7)
    z.grad = None
    loss.backward()
    torch.testing.assert_close(z.grad, first)


def test_grad_scaler_style_grad_output(backend):
    z0, y, w = _inputs(seed=9, dtype=torch.float32)
    grads = []
    for be in (backend, "reference"):
        z = z0.clone().requires_grad_(True)
        (F.sigmoid_focal_loss(z, y, w, backend=be) * 65536.0).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-5, atol=1e-3)


def test_soft_targets_and_class_vectors_get_their_gradients(backend):
    z, y, w = _inputs(seed=10)
    t0 = torch.rand(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = {}
    for be in (backend, "reference"):
        zz = z.clone().requires_grad_(True)
        t = t0.clone().requires_grad_(True)
        ww = w.clone().requires_grad_(True)
        F.sigmoid_focal_loss(zz, t, ww, gamma=1.0, backend=be).backward()
        off = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        margin = torch.full((5,), 0.1, dtype=torch.float64, requires_grad=True)
        F.softmax_cross_entropy(zz, y, ww, logit_offset=off, target_margin=margin, backend=be).backward()
        results[be] = [zz.grad, t.grad, ww.grad, off.grad, margin.grad]
    for got, want in zip(results[backend], results["reference"]):
        assert got is not None and got.abs().sum() > 0
        torch.testing.assert_close(got, want)


def test_no_graph_without_grad(backend):
    z, y, w = _inputs(seed=11)
    with torch.no_grad():
        loss = F.softmax_cross_entropy(z.requires_grad_(True), y, w, backend=backend)
    assert loss.grad_fn is None and not loss.requires_grad
    loss = F.softmax_cross_entropy(z.detach(), y, w, backend=backend)
    assert loss.grad_fn is None


# ----------------------------------------------------------------------------------------------
# one path: eager and compiled calls run the same kernels; the C++ autograd node; direct op calls
# ----------------------------------------------------------------------------------------------
def _need_kernels():
    if ops.kernel_module("cpu") is None:
        pytest.skip(f"CPU kernels not built ({ops.kernel_status('cpu')})")


def test_eager_and_compiled_calls_agree_bitwise():
    _need_kernels()
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(70, 13, generator=g) * 3
    y = torch.randint(0, 13, (70,), generator=g)
    y[5] = -100
    w = torch.rand(13, generator=g) + 0.5
    for reduction in REDUCTIONS:
        def step(z):
            return _scalar(F.softmax_cross_entropy(z, y, w, reduction=reduction, label_smoothing=0.1, scale=2.0)
                           + F.sigmoid_focal_loss(z, y, w, gamma=2.0, alpha=0.3, reduction=reduction))
        outs = []
        for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
            z = z0.clone().requires_grad_(True)
            loss = fn(z)
            loss.backward()
            outs.append((loss.detach(), z.grad))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), reduction


def test_the_op_path_runs_the_cpp_autograd_node():
    _need_kernels()
    z, y, w = _inputs()
    for name, call in LOSSES:
        for reduction in REDUCTIONS:
            loss = call(z.clone().requires_grad_(True), y, w, reduction, "cpu")
            want = "SoftmaxFunction" if name.startswith("softmax") else "SigmoidFunction"
            # (the float64 linspace vectors here are exactly representable in float32: no learnable inputs)
            assert want in loss.grad_fn.name(), (name, reduction, loss.grad_fn.name())


def test_direct_op_calls_check_their_invariants():
    """The public functions check the arguments; a direct ``torch.ops.cbbench`` call with bad ones must
    raise, never read out of bounds."""
    _need_kernels()
    z, y, w = _inputs()
    op = torch.ops.cbbench.softmax_cross_entropy_fused

    def call(**kw):
        a = dict(logits=z, target=y, weight=w, logit_offset=None, target_margin=None, scale=1.0,
                 label_smoothing=0.0, gamma=0.0, alpha=None, sample_weight=None, ignore_index=-100, reduction="mean",
                 need_grad=True)
        a.update(kw)
        return op(*a.values())

    assert call()[0].dim() == 0
    bad = [dict(logits=z[0]), dict(logits=z.int()), dict(logits=z[:, :0]), dict(target=y.int()),
           dict(target=y[:3]), dict(target=torch.tensor([0, 1, 9, 0, 0, 0])), dict(weight=w[:4]),
           dict(weight=w.int()), dict(reduction="avg")]
    for kw in bad:
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            call(**kw)
    loss, _ = call(logits=z.t().contiguous().t())  # non-contiguous logits are made contiguous
    torch.testing.assert_close(loss, call()[0])
    with pytest.raises(RuntimeError):  # a multi-hot target of the wrong shape
        torch.ops.cbbench.sigmoid_focal_fused(z, y.double(), w, 2.0, -1.0, None, -100, True, "mean", True)


def test_opcheck_of_every_op():
    _need_kernels()
    z, y, w = _inputs()
    t = (torch.rand(z.shape, generator=torch.Generator().manual_seed(1)) < 0.3).double()
    s = torch.linspace(0.5, 1.5, z.shape[0], dtype=torch.float64)
    for reduction in REDUCTIONS:
        zz = z.clone().requires_grad_(True)
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy.default,
                              (zz, y, w, None, None, 1.5, 0.1, 0.0, None, None, -100, reduction))
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy.default,
                              (zz, y, w, None, None, 1.0, 0.0, 2.0, w, s, -100, reduction))
        torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default, (zz, y, w, 2.0, 0.25, s, -100, True, reduction))
        torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default,
                              (zz, t, None, 0.0, -1.0, None, -100, False, reduction))
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy_fused.default,
                              (z, y, w, None, None, 1.0, 0.0, 0.0, None, s, -100, reduction, True))
        torch.library.opcheck(torch.ops.cbbench.sigmoid_focal_fused.default,
                              (z, y, w, 2.0, -1.0, s, -100, True, reduction, False))
        torch.library.opcheck(torch.ops.cbbench.loss_divisor.default, (y, w, s, 5, -100, reduction, True))


# ----------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) as the first call of a fresh process
# ----------------------------------------------------------------------------------------------
def test_compile_fullgraph_as_first_call_of_a_process():
    code = textwrap.dedent("""
        import torch
        import cbbench.functional as F
        z = torch.randn(16, 7, requires_grad=True)
        y = torch.randint(0, 7, (16,))
        w = torch.rand(7) + 0.5
        def step(x):
            return (F.softmax_cross_entropy(x, y, w, label_smoothing=0.1)
                    + F.sigmoid_focal_loss(x, y, w, gamma=2.0, reduction="weighted_mean"))
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(z)
        got.backward()
        g = z.grad.clone()
        z.grad = None
        want = step(z)
        want.backward()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g, z.grad)
        print("ok")
    """)
    env = dict(os.environ, PYTHONHASHSEED="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# inputs a careful user tries
# ----------------------------------------------------------------------------------------------
def test_masked_logits_give_finite_losses_like_pytorch(backend):
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    z[:, 4] = -torch.inf  # a masked class
    y = torch.tensor([0, 1, 2, 3, 5])
    zz = z.clone().requires_grad_(True)
    loss = F.softmax_cross_entropy(zz, y, backend=backend)
    loss.backward()
    want = z.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(want, y).backward()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(z, y))
    torch.testing.assert_close(zz.grad, want.grad)
    for fn in (F.sigmoid_cross_entropy, F.sigmoid_focal_loss):
        zz = z.clone().requires_grad_(True)
        loss = fn(zz, y, backend=backend)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(zz.grad).all()
        assert (zz.grad[:, 4] == 0).all()  # a masked negative contributes nothing
        finite = fn(z[:, [0, 1, 2, 3, 5]], torch.tensor([0, 1, 2, 3, 4]), backend="reference")
        torch.testing.assert_close(loss, finite)


def test_weighted_mean_with_a_negative_weight_sum_divides_by_it(backend):
    z, y, w = _inputs(seed=12)
    neg = -w
    loss = F.softmax_cross_entropy(z, y, neg, reduction="weighted_mean", backend=backend)
    valid = y != -100
    want = torch.nn.functional.cross_entropy(z, y, weight=neg)
    torch.testing.assert_close(loss, want)
    assert float(neg[y[valid]].sum()) < 0


@pytest.mark.parametrize("bad", [2 ** 63, -(2 ** 63) - 1])
def test_ignore_index_outside_int64_is_a_clear_error(backend, bad):
    z, y, _ = _inputs()
    with pytest.raises(ValueError, match="ignore_index must be in the int64 range"):
        F.softmax_cross_entropy(z, y, ignore_index=bad, backend=backend)


def test_numpy_ignore_index_and_targets(backend):
    z, y, w = _inputs()
    want = F.softmax_cross_entropy(z, y, w, backend="reference")
    torch.testing.assert_close(F.softmax_cross_entropy(z, y, w, ignore_index=np.int64(-100), backend=backend), want)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        F.softmax_cross_entropy(z, y, w, ignore_index=-100.0, backend=backend)


def test_class_balanced_loss_takes_ignore_index():
    counts = [50, 20, 5]
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 255, 2, 1, 255, 0])
    for loss_type in ("softmax", "sigmoid", "focal"):
        m = cbbench.ClassBalancedLoss(counts, beta=0.99, loss_type=loss_type, ignore_index=255)
        keep = y != 255
        want = cbbench.ClassBalancedLoss(counts, beta=0.99, loss_type=loss_type)(z[keep], y[keep])
        torch.testing.assert_close(m(z, y), want)
        assert "ignore_index=255" in repr(m)


@pytest.mark.parametrize("module", [lambda c: cbbench.LDAMLoss(c), lambda c: cbbench.BalancedSoftmaxLoss(c),
                                    lambda c: cbbench.LogitAdjustedLoss(c)])
def test_zero_count_errors_do_not_suggest_an_option_the_module_lacks(module):
    with pytest.raises(ValueError, match="zero training samples") as info:
        module([10, 0, 3])
    assert "empty=" not in str(info.value)

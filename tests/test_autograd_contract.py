"""Every loss behaves like a PyTorch loss under every autograd feature, on every CPU front end.

Front ends: the reference (``backend="reference"``), the C++ fast path (``cbbench._C``, plain 2-D
inputs), and the Python op path over the Cython kernels (fast path off). Each is checked against
independent ground truth: float64 ``gradcheck`` / ``gradgradcheck`` (finite differences), the
reference differentiated by autograd, and ``torch.func`` on the reference.
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

FRONT_ENDS = ["reference", "fast", "python"]


@pytest.fixture(params=FRONT_ENDS)
def backend(request, monkeypatch):
    """The backend string of a front end (the ``python`` front end: fast path off)."""
    if request.param == "reference":
        return "reference"
    if ops.kernel_module("cpu") is None:
        pytest.skip("CPU kernels not built")
    if request.param == "fast":
        if ops.fast_path() is None:
            pytest.skip(f"fast path not built ({ops.fast_path_status()})")
    else:
        monkeypatch.setattr(ops.loading, "_fast", (None, "off in this test"))
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
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (z,), eps=1e-6, atol=1e-6, rtol=1e-4)


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
# the fast path and the Python path run the same kernels: bitwise the same results
# ----------------------------------------------------------------------------------------------
def test_fast_path_and_python_path_agree_bitwise(monkeypatch):
    if ops.fast_path() is None:
        pytest.skip(f"fast path not built ({ops.fast_path_status()})")
    cases = list(itertools.product((torch.float32, torch.float64), (1, 3, 10, 1000), REDUCTIONS, (True, False)))
    for dtype, c, reduction, with_weight in cases:
        g = torch.Generator().manual_seed(c)
        z0 = torch.randn(70, c, generator=g).to(dtype) * 3
        y = torch.randint(0, c, (70,), generator=g)
        y[5] = -100
        w = torch.rand(c, generator=g) + 0.5 if with_weight else None
        calls = [lambda z: F.softmax_cross_entropy(z, y, w, reduction=reduction, label_smoothing=0.1, scale=2.0),
                 lambda z: F.sigmoid_focal_loss(z, y, w, gamma=2.0, alpha=0.3, reduction=reduction),
                 lambda z: F.sigmoid_cross_entropy(z, y, w, reduction=reduction)]
        for fn in calls:
            outs = []
            for fast in (True, False):
                with monkeypatch.context() as mp:
                    if not fast:
                        mp.setattr(ops.loading, "_fast", (None, "off"))
                    z = z0.clone().requires_grad_(True)
                    loss = fn(z)
                    _scalar(loss).backward()
                    outs.append((loss.detach(), z.grad))
            assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_fast_front_end_runs_the_cpp_autograd_node():
    if ops.fast_path() is None:
        pytest.skip(f"fast path not built ({ops.fast_path_status()})")
    z, y, w = _inputs()
    for name, call in LOSSES:
        for reduction in REDUCTIONS:
            loss = call(z.clone().requires_grad_(True), y, w, reduction, "cpu")
            want = "CbbenchFusedLossBackward" if name != "multi-hot focal" else "FusedFunctionBackward"
            assert loss.grad_fn.name() == want, (name, reduction)


def test_fast_path_declines_what_it_does_not_cover():
    fast = ops.fast_path()
    if fast is None:
        pytest.skip(f"fast path not built ({ops.fast_path_status()})")
    z, y, w = _inputs()
    args = dict(logit_offset=None, target_margin=None, scale=1.0, label_smoothing=0.0, ignore_index=-100,
                reduction="mean")

    def call(**kw):
        a = dict(logits=z, target=y, weight=w.float(), **args)
        a.update(kw)
        return fast.softmax_cross_entropy(*a.values())

    assert call() is not None
    declined = [dict(logits=z.float().half()), dict(logits=z.reshape(3, 2, 5).transpose(1, 2)),
                dict(logits=z.t().contiguous().t()), dict(target=y.int()),
                dict(target=torch.tensor([0, 1, 9, 0, 0, 0])), dict(weight=w.float()[:4]), dict(weight=w.int()),
                dict(weight=w.float().requires_grad_()), dict(scale=0.0), dict(scale=float("inf")),
                dict(label_smoothing=1.5), dict(ignore_index=2 ** 63), dict(ignore_index=np.int64(-100)),
                dict(reduction="avg"), dict(logits=z[:, :0])]
    for kw in declined:
        assert call(**kw) is None, kw


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

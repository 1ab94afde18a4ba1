"""The softmax focal loss and per-sample weights (every loss, module and fused head), against independent
transcriptions: LDAM-DRW's ``FocalLoss``, the focal formula written with ``torch.softmax``, duplicated
samples for integer sample weights, and ``nn.CrossEntropyLoss`` where the conventions meet. The autograd
contract of both (gradcheck, gradgradcheck, batched gradients, torch.func, forward AD, repeated backward)
is in tests/test_autograd_contract.py; the CUDA kernels' in the emulated check (kernels/cuda/harness/emu).
"""
import math

import pytest
import torch
import torch.nn.functional as TF

import cbbench
from cbbench import functional as F
from cbbench import ops

BACKENDS = ["reference", "cpu"]
REDUCTIONS = ("mean", "weighted_mean", "sum", "none")


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cpu" and ops.kernel_module("cpu") is None:
        pytest.skip(f"CPU kernels not built ({ops.kernel_status('cpu')})")
    return request.param


def _inputs(n=12, c=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c, generator=g) * 2).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    w = (torch.rand(c, generator=g) + 0.3).float().to(dtype)  # float32-representable: kernels hold float32
    s = (torch.rand(n, generator=g) * 2).float().to(dtype)
    return z, y, w, s


# ---- the softmax focal loss ----------------------------------------------------------------------------
def _ldam_drw_focal(logits, target, weight=None, gamma=0.0):
    """LDAM-DRW's FocalLoss (kaidic/LDAM-DRW, losses.py), transcribed."""
    input_values = TF.cross_entropy(logits, target, reduction="none", weight=weight)
    p = torch.exp(-input_values)
    return ((1 - p) ** gamma * input_values).mean()


def _direct_focal(logits, target, weight=None, alpha=None, gamma=2.0):
    """-w_y alpha_y (1 - p_y)^gamma log p_y per sample, straight from torch.softmax (not log space)."""
    p = torch.softmax(logits.double(), dim=1).gather(1, target[:, None]).squeeze(1)
    rows = -((1 - p) ** gamma) * torch.log(p)
    if weight is not None:
        rows = rows * weight.double()[target]
    if alpha is not None:
        rows = rows * alpha.double()[target]
    return rows


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_softmax_focal_equals_ldam_drw_focal_loss(backend, gamma):
    z, y, _, _ = _inputs(seed=1)
    got = F.softmax_focal_loss(z, y, gamma=gamma, backend=backend)
    torch.testing.assert_close(got, _ldam_drw_focal(z, y, gamma=gamma), rtol=1e-12, atol=1e-14)


def test_ldam_drw_focal_with_a_class_weight_is_a_different_loss(backend):
    """LDAM-DRW's FocalLoss takes p from the *weighted* cross-entropy (exp(-w_y CE)), so with a weight it
    is not -w_y (1 - p_y)^gamma log p_y: the porting note in docs says so, and this is the size of it."""
    z, y, w, _ = _inputs(seed=2)
    ours = F.softmax_focal_loss(z, y, w, gamma=1.0, backend=backend)
    torch.testing.assert_close(ours, _direct_focal(z, y, w, gamma=1.0).mean(), rtol=1e-12, atol=1e-14)
    theirs = _ldam_drw_focal(z, y, w, gamma=1.0)
    assert not torch.allclose(ours, theirs, rtol=1e-3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_focal_matches_the_direct_formula_with_weight_and_alpha(backend, reduction):
    z, y, w, _ = _inputs(seed=3)
    alpha = torch.linspace(0.1, 1.0, z.shape[1], dtype=torch.float64).float().double()
    rows = _direct_focal(z, y, w, alpha, gamma=2.0)
    want = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / len(y),
            "weighted_mean": rows.sum() / w[y].sum()}[reduction]  # alpha never enters the divisor
    got = F.softmax_focal_loss(z, y, w, gamma=2.0, alpha=alpha, reduction=reduction, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    scalar = F.softmax_focal_loss(z, y, w, gamma=2.0, alpha=0.25, reduction="sum", backend=backend)
    torch.testing.assert_close(scalar, 0.25 * _direct_focal(z, y, w, gamma=2.0).sum(), rtol=1e-10, atol=1e-12)


def test_softmax_focal_with_gamma_zero_is_cross_entropy(backend):
    z, y, w, _ = _inputs(seed=4)
    z = z.float()
    y[3] = -100
    for reduction in REDUCTIONS:
        torch.testing.assert_close(F.softmax_focal_loss(z, y, w.float(), gamma=0.0, reduction=reduction, backend=backend),
                                   F.softmax_cross_entropy(z, y, w.float(), reduction=reduction, backend=backend))


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_focal_is_finite_as_p_y_goes_to_one_and_with_masked_logits(backend, gamma, dtype):
    """gamma < 1 differentiates (1 - p_y)^gamma where 1 - p_y -> 0: the log-space form keeps the loss and
    its gradient finite, to p_y == 1 exactly; a -inf-masked non-target class changes nothing."""
    z = torch.zeros(6, 5, dtype=dtype)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for i, margin in enumerate([5.0, 20.0, 60.0, 1e3, 1e4, 1e4]):
        z[i, y[i]] = margin
    z[5, 1] = -math.inf
    z.requires_grad_(True)
    loss = F.softmax_focal_loss(z, y, gamma=gamma, reduction="sum", backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all(), (loss, z.grad)
    assert (z.grad[5, 1] == 0).all()
    if gamma > 0:  # p_y rounds to 1: no loss, no gradient (the limits)
        assert float(loss.detach()) < 1e-1 and z.grad[3:].abs().max() == 0


def test_softmax_focal_loss_bad_arguments_are_clear():
    z, y, w, _ = _inputs(seed=5)
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        F.softmax_focal_loss(z, y, gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must have shape \(7,\)"):
        F.softmax_focal_loss(z, y, alpha=torch.ones(3))
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        F.softmax_focal_loss(z, y, alpha=-0.5)
    with pytest.raises(TypeError, match="alpha must be a tensor or a sequence"):
        F.softmax_focal_loss(z, y, alpha="balanced")


def test_softmax_focal_modules(backend):
    z, y, w, _ = _inputs(seed=6)
    counts = [500, 200, 90, 40, 20, 8, 3]
    cb = cbbench.ClassBalancedLoss(counts, beta=0.999, loss_type="softmax_focal", gamma=1.5, backend=backend)
    torch.testing.assert_close(cb(z, y), F.softmax_focal_loss(z, y, cb.weight, gamma=1.5, backend="reference"))
    m = cbbench.SoftmaxFocalLoss(w, gamma=2.0, alpha=[0.5] * 7, backend=backend)
    torch.testing.assert_close(m(z, y), F.softmax_focal_loss(z, y, w, gamma=2.0, alpha=0.5, backend="reference"))
    assert "gamma=2.0" in repr(m)


# ---- sample weights --------------------------------------------------------------------------------------
LOSSES = {
    "softmax": lambda z, y, w, **kw: F.softmax_cross_entropy(z, y, w, label_smoothing=0.1, **kw),
    "softmax_focal": lambda z, y, w, **kw: F.softmax_focal_loss(z, y, w, gamma=1.5, **kw),
    "sigmoid": lambda z, y, w, **kw: F.sigmoid_cross_entropy(z, y, w, **kw),
    "focal": lambda z, y, w, **kw: F.sigmoid_focal_loss(z, y, w, gamma=2.0, alpha=0.25, **kw),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sample_weights_define_each_reduction(backend, name):
    """"none": s_i times the row; "sum": their sum; "mean": divided by the paper's count (not by the
    sample weights); "weighted_mean": divided by sum_i s_i w_{y_i} (sigmoid family: by the positives' count
    for "mean", and sum_i s_i w_{y_i} for "weighted_mean" with class targets)."""
    loss = LOSSES[name]
    z, y, w, s = _inputs(seed=7)
    y[2] = -100
    rows = loss(z, y, w, reduction="none", backend="reference")
    got_rows = loss(z, y, w, reduction="none", sample_weight=s, backend=backend)
    torch.testing.assert_close(got_rows, s * rows, rtol=1e-10, atol=1e-12)
    valid = y != -100
    applied = (w[y.clamp(min=0)] * s)[valid].sum()
    want = {"sum": (s * rows).sum(), "mean": (s * rows).sum() / valid.sum(),
            "weighted_mean": (s * rows).sum() / applied}
    for reduction, value in want.items():
        got = loss(z, y, w, reduction=reduction, sample_weight=s, backend=backend)
        torch.testing.assert_close(got, value, rtol=1e-10, atol=1e-12)
    ones = loss(z, y, w, reduction="weighted_mean", sample_weight=torch.ones(len(y), dtype=z.dtype), backend=backend)
    torch.testing.assert_close(ones, loss(z, y, w, reduction="weighted_mean", backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_integer_sample_weight_is_that_many_copies_of_the_sample(backend, name):
    loss = LOSSES[name]
    z, y, w, _ = _inputs(seed=8)
    counts = torch.tensor([0, 1, 2, 3, 1, 0, 2, 1, 1, 4, 1, 2])
    idx = torch.repeat_interleave(torch.arange(len(y)), counts)
    for reduction in ("sum", "weighted_mean"):
        weighted = loss(z, y, w, reduction=reduction, sample_weight=counts.to(z.dtype), backend=backend)
        copied = loss(z[idx], y[idx], w, reduction=reduction, backend="reference")
        torch.testing.assert_close(weighted, copied, rtol=1e-10, atol=1e-12)


def test_weighted_mean_with_sample_weights_matches_pytorch_cross_entropy_on_copies(backend):
    z, y, w, _ = _inputs(seed=9)
    counts = torch.tensor([1, 2, 0, 1, 3, 1, 1, 2, 1, 1, 0, 2])
    idx = torch.repeat_interleave(torch.arange(len(y)), counts)
    got = F.softmax_cross_entropy(z, y, w, reduction="weighted_mean", sample_weight=counts, backend=backend)
    torch.testing.assert_close(got, TF.cross_entropy(z[idx], y[idx], weight=w), rtol=1e-10, atol=1e-12)


def test_sample_weights_of_spatial_losses_and_multi_hot_targets(backend):
    g = torch.Generator().manual_seed(10)
    z = torch.randn(3, 4, 5, dtype=torch.float64, generator=g)  # (N, C, d1)
    y = torch.randint(0, 4, (3, 5), generator=g)
    s = torch.rand(3, 5, generator=g).double()  # float32-representable: the kernels hold sample weights in float32
    got = F.softmax_cross_entropy(z, y, reduction="none", sample_weight=s, backend=backend)
    torch.testing.assert_close(got, s * F.softmax_cross_entropy(z, y, reduction="none", backend="reference"))
    t = (torch.rand(6, 4, generator=g) < 0.4).double()
    zz = torch.randn(6, 4, dtype=torch.float64, generator=g)
    sw = torch.rand(6, generator=g).double()
    cw = torch.rand(4, dtype=torch.float64, generator=g).float().double()
    rows = F.sigmoid_focal_loss(zz, t, cw, reduction="none", backend="reference")
    for reduction, divisor in (("sum", 1.0), ("mean", max(float(t.sum()), 1.0)),
                               ("weighted_mean", float(cw.mean() * sw.sum()))):
        got = F.sigmoid_focal_loss(zz, t, cw, reduction=reduction, sample_weight=sw, backend=backend)
        torch.testing.assert_close(got, (sw * rows).sum() / divisor, rtol=1e-10, atol=1e-12)


def test_learnable_sample_weights_get_their_gradient(backend):
    z, y, w, s0 = _inputs(seed=11)
    grads = {}
    for be in (backend, "reference"):
        s = s0.clone().requires_grad_(True)
        zz = z.clone().requires_grad_(True)
        F.softmax_focal_loss(zz, y, w, gamma=2.0, reduction="weighted_mean", sample_weight=s, backend=be).backward()
        grads[be] = (zz.grad, s.grad)
    for got, want in zip(grads[backend], grads["reference"]):
        assert got is not None and got.abs().sum() > 0
        torch.testing.assert_close(got, want)


def test_sample_weight_bad_arguments_are_clear():
    z, y, w, s = _inputs(seed=12)
    with pytest.raises(ValueError, match=r"sample_weight must have the sample shape \(12,\)"):
        F.softmax_cross_entropy(z, y, sample_weight=s[:5])
    with pytest.raises(TypeError, match="sample_weight must hold real numbers"):
        F.sigmoid_cross_entropy(z, y, sample_weight=s > 0.5)
    with pytest.raises(TypeError, match="sample_weight must be a tensor or a sequence"):
        F.sigmoid_focal_loss(z, y, sample_weight="uniform")
    torch.testing.assert_close(F.softmax_cross_entropy(z, y, sample_weight=s.tolist()),
                               F.softmax_cross_entropy(z, y, sample_weight=s.float()))


@pytest.mark.parametrize("kind", ["softmax", "softmax_focal", "sigmoid", "focal"])
def test_fused_heads_take_sample_weights_and_the_softmax_focal_loss(backend, kind):
    g = torch.Generator().manual_seed(13)
    h = torch.randn(2, 9, 6, dtype=torch.float64, generator=g)
    W = torch.randn(11, 6, dtype=torch.float64, generator=g)
    b = torch.randn(11, dtype=torch.float64, generator=g)
    y = torch.randint(0, 11, (2, 9), generator=g)
    s = torch.rand(2, 9, generator=g).double()
    cw = (torch.rand(11, generator=g) + 0.5).double()
    head = {"softmax": F.linear_softmax_cross_entropy, "softmax_focal": F.linear_softmax_focal_loss,
            "sigmoid": F.linear_sigmoid_cross_entropy, "focal": F.linear_sigmoid_focal_loss}[kind]
    loss_fn = {"softmax": F.softmax_cross_entropy, "softmax_focal": F.softmax_focal_loss,
               "sigmoid": F.sigmoid_cross_entropy, "focal": F.sigmoid_focal_loss}[kind]
    for reduction in REDUCTIONS:
        args = [t.clone().requires_grad_(True) for t in (h, W, b)]
        got = head(args[0], args[1], y, cw, linear_bias=args[2], reduction=reduction, sample_weight=s,
                   chunk_size=5, backend=backend)
        ref = [t.clone().requires_grad_(True) for t in (h, W, b)]
        want = loss_fn(TF.linear(ref[0], ref[1], ref[2]).reshape(-1, 11), y.reshape(-1), cw, reduction=reduction,
                       sample_weight=s.reshape(-1), backend="reference")
        if reduction == "none":
            want = want.reshape(2, 9)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        (got * 1.5).sum().backward()
        (want * 1.5).sum().backward()
        for a, r in zip(args, ref):
            torch.testing.assert_close(a.grad, r.grad, rtol=1e-9, atol=1e-11)


def test_class_balanced_linear_loss_with_softmax_focal():
    counts = [50, 20, 9, 4]
    head = cbbench.ClassBalancedLinearLoss(6, counts, beta=0.99, loss_type="softmax_focal", gamma=2.0)
    h = torch.randn(10, 6)
    y = torch.randint(0, 4, (10,))
    s = torch.rand(10)
    want = F.softmax_focal_loss(head.linear(h), y, head.weight, gamma=2.0, sample_weight=s, backend="reference")
    torch.testing.assert_close(head(h, y, s), want, rtol=1e-5, atol=1e-6)
    assert head.linear.bias.abs().max() < 1.0  # softmax losses keep nn.Linear's bias init (no -log(C-1) prior)

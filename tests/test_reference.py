"""The reference against independent ground truth: torch.nn.functional, hand formulas, gradcheck."""
import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import cbbench
from cbbench import reference as R


def _inputs(n=16, c=5, seed=0, dtype=torch.float64, ignore=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (n,), generator=g)
    if ignore:
        y[::4] = -100
    w = torch.rand(c, generator=g, dtype=dtype) + 0.1
    return z, y, w


# ---------------------------------------------------------------- softmax vs F.cross_entropy
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_softmax_matches_torch_weighted(reduction, ignore):
    z, y, w = _inputs(ignore=ignore)
    got = R.softmax_cross_entropy(z, y, w, reduction=reduction)
    want = TF.cross_entropy(z, y, w, reduction=reduction)
    torch.testing.assert_close(got, want)


def test_weighted_mean_is_pytorch_mean_and_mean_is_papers():
    z, y, w = _inputs(ignore=True)
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, w, reduction="weighted_mean"),
                               TF.cross_entropy(z, y, w))
    # paper: sum_i w_{y_i} l_i / (number of non-ignored samples)
    valid = y != -100
    per = TF.cross_entropy(z, y, reduction="none")
    want = (w[y[valid]] * per[valid]).sum() / valid.sum()
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, w, reduction="mean"), want)
    # without weights both are the plain mean
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, reduction="mean"), TF.cross_entropy(z, y))
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, reduction="weighted_mean"), TF.cross_entropy(z, y))


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
def test_label_smoothing_matches_torch_without_weight(eps):
    z, y, _ = _inputs(ignore=True)
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, label_smoothing=eps),
                               TF.cross_entropy(z, y, label_smoothing=eps))


def test_label_smoothing_with_weight_weights_whole_sample():
    # documented difference from PyTorch: w_y multiplies the whole smoothed loss
    z, y, w = _inputs()
    eps = 0.2
    per = TF.cross_entropy(z, y, reduction="none", label_smoothing=eps)
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, w, label_smoothing=eps, reduction="none"), w[y] * per)
    assert not torch.allclose(R.softmax_cross_entropy(z, y, w, label_smoothing=eps, reduction="weighted_mean"),
                              TF.cross_entropy(z, y, w, label_smoothing=eps))


def test_spatial_inputs_match_torch():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 3, 5), generator=g)
    y[0, 1, 2] = -100
    w = torch.rand(4, generator=g, dtype=torch.float64)
    for reduction in ("none", "sum"):
        torch.testing.assert_close(R.softmax_cross_entropy(z, y, w, reduction=reduction),
                                   TF.cross_entropy(z, y, w, reduction=reduction))
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, w, reduction="weighted_mean"), TF.cross_entropy(z, y, w))
    assert R.softmax_cross_entropy(z, y, reduction="none").shape == (2, 3, 5)


def test_logit_offset_margin_scale_match_hand_adjusted_logits():
    z, y, w = _inputs()
    counts = torch.tensor([50.0, 20, 10, 5, 1])
    tau = 1.5
    off = tau * torch.log(counts / counts.sum()).double()
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, logit_offset=off), TF.cross_entropy(z + off, y))
    # LDAM, as in the official code: margins ~ n^-1/4 with max 0.5, scale s
    m = counts.pow(-0.25)
    m = (m * (0.5 / m.max())).double()
    adjusted = 30.0 * (z - TF.one_hot(y, 5).double() * m[y].unsqueeze(1))
    torch.testing.assert_close(R.softmax_cross_entropy(z, y, w, target_margin=m, scale=30.0, reduction="weighted_mean"),
                               TF.cross_entropy(adjusted, y, w))


def test_all_ignored_gives_zero_not_nan():
    z, y, w = _inputs()
    y[:] = -100
    for reduction in ("mean", "weighted_mean", "sum"):
        assert R.softmax_cross_entropy(z, y, w, reduction=reduction).item() == 0.0
        assert R.sigmoid_focal_loss(z, y, w, reduction=reduction).item() == 0.0


def test_empty_batch():
    z = torch.zeros(0, 4, dtype=torch.float64)
    y = torch.zeros(0, dtype=torch.long)
    assert R.softmax_cross_entropy(z, y).item() == 0.0
    assert R.sigmoid_cross_entropy(z, y, reduction="none").shape == (0,)


# ---------------------------------------------------------------- sigmoid vs BCE-with-logits
@pytest.mark.parametrize("ignore", [False, True])
def test_sigmoid_matches_bce_with_logits(ignore):
    z, y, w = _inputs(ignore=ignore)
    valid = y != -100
    t = TF.one_hot(y.clamp_min(0), 5).double()
    bce = TF.binary_cross_entropy_with_logits(z, t, reduction="none")
    per = (w[y.clamp_min(0)].unsqueeze(1) * bce).sum(1) * valid
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, y, w, reduction="none"), per)
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, y, w, reduction="mean"), per.sum() / valid.sum())
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, y, w, reduction="weighted_mean"),
                               per.sum() / w[y[valid]].sum())


def test_sigmoid_multi_hot_per_column_weight():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64) * 4
    t = (torch.rand(8, 6, generator=g) < 0.3).double()
    w = torch.rand(6, generator=g, dtype=torch.float64)
    bce = TF.binary_cross_entropy_with_logits(z, t, weight=w, reduction="sum")
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, t, w, reduction="sum"), bce)
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, t, w, reduction="mean"), bce / t.sum())
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, t, w, reduction="weighted_mean"), bce / (8 * w.mean()))
    torch.testing.assert_close(R.sigmoid_cross_entropy(z, torch.zeros_like(t), reduction="mean"),
                               TF.binary_cross_entropy_with_logits(z, torch.zeros_like(t), reduction="sum"))


# ---------------------------------------------------------------- focal vs an independent formula
def _focal_textbook(z, t, gamma, alpha=None):
    """Probability-space focal loss, fine for moderate logits in float64."""
    p = torch.sigmoid(z)
    pt = t * p + (1 - t) * (1 - p)
    loss = -((1 - pt) ** gamma) * torch.log(pt)
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_matches_textbook_formula(gamma, alpha):
    z, y, w = _inputs(ignore=True)
    valid = y != -100
    t = TF.one_hot(y.clamp_min(0), 5).double()
    per = (w[y.clamp_min(0)].unsqueeze(1) * _focal_textbook(z, t, gamma, alpha)).sum(1) * valid
    torch.testing.assert_close(R.sigmoid_focal_loss(z, y, w, gamma=gamma, alpha=alpha, reduction="none"), per)


def test_focal_gamma_zero_equals_sigmoid_exactly():
    z, y, w = _inputs(dtype=torch.float32, ignore=True)
    for reduction in ("mean", "sum", "none", "weighted_mean"):
        assert torch.equal(R.sigmoid_focal_loss(z, y, w, gamma=0.0, reduction=reduction),
                           R.sigmoid_cross_entropy(z, y, w, reduction=reduction))


def test_focal_hardest_positive_keeps_its_bce():
    # y = 1 at z = -100: modulator (1 - p)^gamma = 1, so the term is BCE = 100. The official
    # exp(-gamma*t*z - gamma*log1p(exp(-z))) form overflows to inf * 0 here in float32.
    z = torch.tensor([[-100.0]])
    y = torch.tensor([0])
    loss = R.sigmoid_focal_loss(z, y, gamma=2.0, reduction="sum")
    assert loss.item() == pytest.approx(100.0, rel=1e-6)
    official = torch.exp(-2.0 * 1 * z - 2.0 * torch.log1p(torch.exp(-z)))
    assert not torch.isfinite(official).all() or official.item() != pytest.approx(1.0)


@pytest.mark.parametrize("scale", [100.0, 1e4])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_logits_finite_loss_and_grad_fp32(scale, gamma):
    g = torch.Generator().manual_seed(0)
    z = (torch.randint(0, 2, (32, 7), generator=g).float() * 2 - 1) * scale
    z.requires_grad_(True)
    y = torch.randint(0, 7, (32,), generator=g)
    w = torch.rand(7, generator=g) + 0.1
    for loss in (R.softmax_cross_entropy(z, y, w, label_smoothing=0.1),
                 R.sigmoid_cross_entropy(z, y, w),
                 R.sigmoid_focal_loss(z, y, w, gamma=gamma)):
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_focal_gradient_finite_for_small_gamma_at_saturation():
    z = torch.tensor([[40.0, -40.0, 0.0]], dtype=torch.float32, requires_grad=True)
    for gamma in (0.1, 0.5, 0.9):
        loss = R.sigmoid_focal_loss(z, torch.tensor([0]), gamma=gamma)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(grad).all()


# ---------------------------------------------------------------- gradcheck
def test_gradcheck_all_losses():
    z, y, w = _inputs(n=6, c=4, ignore=True)
    z.requires_grad_(True)
    off = torch.randn(4, dtype=torch.float64)
    m = torch.rand(4, dtype=torch.float64)
    t = (torch.rand(6, 4, dtype=torch.float64) < 0.4).double()
    cases = [
        lambda x: R.softmax_cross_entropy(x, y, w, label_smoothing=0.1, logit_offset=off, target_margin=m, scale=2.0),
        lambda x: R.softmax_cross_entropy(x, y, w, reduction="none"),
        lambda x: R.sigmoid_cross_entropy(x, y, w, reduction="weighted_mean"),
        lambda x: R.sigmoid_focal_loss(x, y, w, gamma=2.0, alpha=0.25),
        lambda x: R.sigmoid_focal_loss(x, y, w, gamma=0.5, reduction="none"),
        lambda x: R.sigmoid_focal_loss(x, t, w, gamma=1.5),
    ]
    for fn in cases:
        assert torch.autograd.gradcheck(fn, (z,))


# ---------------------------------------------------------------- invariants / properties
def test_cb_beta_zero_equals_unweighted_and_equal_counts_too():
    z, y, _ = _inputs()
    w0 = cbbench.class_balanced_weights([100, 50, 10, 5, 1], 0.0).double()
    weq = cbbench.class_balanced_weights([7] * 5, 0.9999).double()
    for fn in (R.softmax_cross_entropy, R.sigmoid_cross_entropy, R.sigmoid_focal_loss):
        base = fn(z, y)
        torch.testing.assert_close(fn(z, y, w0), base)
        torch.testing.assert_close(fn(z, y, weq), base)


@given(st.integers(1, 12), st.integers(1, 9), st.integers(0, 10_000),
       st.sampled_from(["softmax", "sigmoid", "focal"]))
@settings(max_examples=40, deadline=None)
def test_properties_reductions_and_class_permutation(n, c, seed, kind):
    z, y, w = _inputs(n=n, c=c, seed=seed)
    fn = {"softmax": R.softmax_cross_entropy, "sigmoid": R.sigmoid_cross_entropy,
          "focal": lambda *a, **k: R.sigmoid_focal_loss(*a, gamma=1.5, **k)}[kind]
    per = fn(z, y, w, reduction="none")
    assert (per >= 0).all()
    torch.testing.assert_close(fn(z, y, w, reduction="sum"), per.sum())
    torch.testing.assert_close(fn(z, y, w, reduction="mean") * n, per.sum())
    torch.testing.assert_close(fn(z, y, w, reduction="weighted_mean") * w[y].sum(), per.sum())
    # relabelling classes consistently changes nothing
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    inv = torch.argsort(perm)
    torch.testing.assert_close(fn(z[:, perm], inv[y], w[perm], reduction="none"), per)


def test_softmax_loss_hand_case():
    # z = (0, ln 3): softmax = (1/4, 3/4); target 0 -> -log(1/4) = ln 4, weight 2
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    loss = R.softmax_cross_entropy(z, torch.tensor([0]), torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert loss.item() == pytest.approx(2 * math.log(4.0), rel=1e-14)


def test_sigmoid_loss_hand_case():
    # z = (0, 0), target 1: two BCE terms of ln 2
    z = torch.zeros(1, 2, dtype=torch.float64)
    assert R.sigmoid_cross_entropy(z, torch.tensor([1])).item() == pytest.approx(2 * math.log(2.0), rel=1e-14)
    # focal gamma 2 at z = 0: each term (1/2)^2 ln 2
    assert R.sigmoid_focal_loss(z, torch.tensor([1]), gamma=2.0).item() == pytest.approx(0.5 * math.log(2), rel=1e-14)


def test_softplus_exact_in_float64_where_torch_thresholds():
    x = torch.tensor([25.0, 30.0], dtype=torch.float64)
    want = x + torch.exp(-x)  # log1p(e^-x) = e^-x to double precision here
    torch.testing.assert_close(R.softplus(x), want, rtol=1e-16, atol=0)
    assert not torch.equal(TF.softplus(x), want)  # torch's threshold=20 returns x itself


def test_gradient_at_exactly_zero_logits():
    # zero logits are common (zero-initialised heads); the derivative there must be sigmoid(0) - t
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    R.sigmoid_cross_entropy(z, y, reduction="sum").backward()
    want = torch.full((2, 3), 0.5, dtype=torch.float64) - TF.one_hot(y, 3).double()
    torch.testing.assert_close(z.grad, want, rtol=0, atol=1e-15)
    z.grad = None
    R.sigmoid_focal_loss(z, y, gamma=2.0, reduction="sum").backward()
    # d/dz [(1-p_t)^g BCE] at z = 0: m (p - t) - g m (p + t - 1) BCE, m = 1/4, BCE = ln 2
    m, b = 0.25, math.log(2.0)
    t = TF.one_hot(y, 3).double()
    want = m * (0.5 - t) - 2.0 * m * (0.5 + t - 1) * b
    torch.testing.assert_close(z.grad, want, rtol=0, atol=1e-15)


def test_bce_has_no_cancellation_for_confident_correct_logits():
    z = torch.tensor([30.0, -30.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(R.binary_cross_entropy(z, t), torch.log1p(torch.exp(-z.abs())), rtol=1e-15, atol=0)

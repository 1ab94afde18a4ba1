import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cbbench
from cbbench.weights import as_counts


def _mp_effective(n, beta):
    with mpmath.workdps(60):
        b = mpmath.mpf(beta)  # the exact double the caller passed
        return float((1 - b ** int(n)) / (1 - b))


def test_effective_number_hand_values():
    e = cbbench.effective_number([1, 2, 3], 0.9)
    assert e.dtype == torch.float64
    torch.testing.assert_close(e, torch.tensor([1.0, 1.9, 2.71], dtype=torch.float64), rtol=1e-14, atol=0)


def test_effective_number_beta_zero_is_one_and_empty_is_zero():
    assert cbbench.effective_number([0, 1, 7, 10**9], 0.0).tolist() == [0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("beta", [1 - 1e-12, 1 - 1e-9, 0.9999, 0.5])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 12345, 10**6, 10**9])
def test_effective_number_matches_high_precision(beta, n):
    got = cbbench.effective_number([n], beta).item()
    want = _mp_effective(n, beta)
    assert got == pytest.approx(want, rel=1e-12)


def test_effective_number_tends_to_n():
    n = torch.tensor([1.0, 10.0, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(cbbench.effective_number(n, 1 - 1e-12), n, rtol=1e-8, atol=0)


def test_cb_weights_hand_computed():
    # raw 1/(1 - 0.5) = 2 and 1/(1 - 0.25) = 4/3; normalised to sum 2 -> 1.2, 0.8
    w = cbbench.class_balanced_weights([1, 2], 0.5)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([1.2, 0.8]))


@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=50),
       st.floats(0.0, 0.999999, allow_nan=False))
@settings(max_examples=60, deadline=None)
def test_cb_weights_sum_to_num_classes(counts, beta):
    w = cbbench.class_balanced_weights(counts, beta)
    assert w.shape == (len(counts),)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w.double().sum().item() == pytest.approx(len(counts), rel=1e-5)
    # rarer classes never weigh less
    order = np.argsort(counts, kind="stable")
    ws = w.numpy()[order]
    assert np.all(np.diff(ws) <= 1e-6 * ws.max())


def test_beta_zero_and_equal_counts_give_ones():
    torch.testing.assert_close(cbbench.class_balanced_weights([5, 100, 7], 0.0), torch.ones(3))
    torch.testing.assert_close(cbbench.class_balanced_weights([42] * 5, 0.9999), torch.ones(5))


def test_beta_to_one_approaches_inverse_frequency():
    counts = [1000, 300, 10, 1]
    inv = cbbench.class_weights(counts, "inverse")
    torch.testing.assert_close(cbbench.class_balanced_weights(counts, 1 - 1e-10), inv, rtol=1e-5, atol=0)
    # and a moderate beta is clearly between uniform and inverse frequency
    mid = cbbench.class_balanced_weights(counts, 0.99)
    assert 1.0 < mid[-1].item() < inv[-1].item()


def test_class_weight_schemes():
    counts = [100, 25, 4]
    torch.testing.assert_close(cbbench.class_weights(counts, "none"), torch.ones(3))
    inv = cbbench.class_weights(counts, "inverse")
    raw = torch.tensor([1 / 100, 1 / 25, 1 / 4])
    torch.testing.assert_close(inv, raw / raw.sum() * 3)
    sq = cbbench.class_weights(counts, "sqrt_inverse")
    raw = torch.tensor([1 / 10, 1 / 5, 1 / 2])
    torch.testing.assert_close(sq, raw / raw.sum() * 3)
    torch.testing.assert_close(cbbench.class_weights(counts, "inverse", power=0.5), sq)
    torch.testing.assert_close(cbbench.class_weights(counts, "cb", beta=0.99),
                               cbbench.class_balanced_weights(counts, 0.99))


@pytest.mark.parametrize("kind", [list, np.array, torch.tensor])
def test_counts_accepted_as_list_numpy_tensor(kind):
    w = cbbench.class_balanced_weights(kind([10, 3, 1]), 0.9)
    torch.testing.assert_close(w, cbbench.class_balanced_weights([10, 3, 1], 0.9))


def test_empty_class_policies():
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have zero training samples"):
        cbbench.class_balanced_weights([10, 0, 3], 0.99)
    w = cbbench.class_balanced_weights([10, 0, 3], 0.99, empty="zero")
    assert w[1].item() == 0.0
    assert w.sum().item() == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(w[[0, 2]], cbbench.class_balanced_weights([10, 3], 0.99))
    with pytest.raises(ValueError, match="zero training samples"):
        cbbench.class_weights([10, 0], "inverse")
    with pytest.raises(ValueError, match="every class has zero samples"):
        cbbench.class_balanced_weights([0, 0], 0.9, empty="zero")
    with pytest.raises(ValueError, match="empty must be one of"):
        cbbench.class_balanced_weights([1, 2], 0.9, empty="drop")


@pytest.mark.parametrize("counts, match", [
    ([10, -1], "non-negative"),
    ([10, float("nan")], "finite"),
    ([10, float("inf")], "finite"),
    ([10, 2.5], "whole numbers"),
    ([[1, 2], [3, 4]], "1-D"),
    ([], "at least one class"),
    (["a", "b"], "numeric"),
])
def test_bad_counts_rejected(counts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cbbench.class_balanced_weights(counts, 0.9)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_beta_rejected(beta):
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        cbbench.class_balanced_weights([1, 2], beta)
    with pytest.raises(ValueError, match="beta"):
        cbbench.effective_number([1, 2], beta)


def test_bad_scheme_and_power():
    with pytest.raises(ValueError, match="scheme must be one of"):
        cbbench.class_weights([1, 2], "focal")
    with pytest.raises(ValueError, match="power"):
        cbbench.class_weights([1, 2], "inverse", power=-1)


def test_log_prior_and_ldam_margins():
    lp = cbbench.log_prior([3, 1])
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.75, 0.25])))
    m = cbbench.ldam_margins([10000, 16, 1], max_margin=0.5)
    torch.testing.assert_close(m, torch.tensor([0.05, 0.25, 0.5]))
    with pytest.raises(ValueError, match="zero training samples"):
        cbbench.log_prior([3, 0])


def test_as_counts_returns_float64_copy():
    src = torch.tensor([3, 4])
    out = as_counts(src)
    assert out.dtype == torch.float64 and out.tolist() == [3.0, 4.0]
    assert math.isclose(out.sum().item(), 7.0)


def test_non_numeric_power_and_max_margin_are_type_errors():
    # float("x") used to escape as "ValueError: could not convert string to float: 'x'"
    with pytest.raises(TypeError, match="power must be a real number"):
        cbbench.class_weights([5, 3], "inverse", power="x")
    with pytest.raises(TypeError, match="max_margin must be a real number"):
        cbbench.weights.ldam_margins([5, 3], max_margin=None)
    with pytest.raises(ValueError, match="max_margin must be a scalar"):
        cbbench.weights.ldam_margins([5, 3], max_margin=torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(cbbench.weights.ldam_margins([1, 16], max_margin=torch.tensor(0.5)),
                               torch.tensor([0.5, 0.25]))


def test_counts_on_the_meta_device_are_a_clear_error():
    # .to("cpu") of a meta tensor raised torch's "Cannot copy out of meta tensor; no data!"
    with pytest.raises(ValueError, match="counts is a tensor on the meta device"):
        cbbench.class_balanced_weights(torch.tensor([5, 3]).to("meta"), 0.9)

"""The Cython CPU kernels (cbbench._cpu) against the reference, plus the kernel contract itself.

The extension is always built (setup.py), so a missing module is a failure here, not a skip.
"""
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbbench import functional as F
from cbbench import ops

try:
    from cbbench import _cpu
except ImportError as exc:  # pragma: no cover - the point is to fail loudly in CI
    raise ImportError("cbbench._cpu is not built; run `python setup.py build_ext --inplace` "
                      "(or `pip install --no-build-isolation -e .`)") from exc

REDUCTIONS = ("mean", "weighted_mean", "sum", "none")
FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.bfloat16, torch.float16)
ISAS = _cpu.available_isas()


@pytest.fixture(autouse=True)
def _restore_threads_and_isa():
    threads = torch.get_num_threads()
    isa = _cpu.get_isa()
    yield
    torch.set_num_threads(threads)
    _cpu.set_isa(isa)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _tolerance(dtype):
    # float64 end to end (grad_scale is in the loss dtype): agreement to float64 rounding
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    return dict(rtol=2e-5, atol=2e-6)


def _loss_and_grad(fn, logits, target, weight, backend, reduction, **options):
    z = logits.detach().clone().requires_grad_(True)
    loss = fn(z, target, weight, reduction=reduction, backend=backend, **options)
    if loss.numel() > 0:
        # a non-trivial grad_output checks the rescaling of the saved gradient
        g = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        loss.backward(g)
    grad = z.grad if z.grad is not None else torch.zeros_like(z)
    return loss.detach(), grad


def assert_matches_reference(fn, logits, target, weight=None, reduction="mean", *, tol=None, **options):
    """The cpu backend against the reference run in float64 and rounded to the kernel's dtype.

    Not against the float32 reference: with logits spread over +-100 its exp(z - lse) loses ~1e-3
    relative to the rounding of lse, far more than the kernel's exp(z - max) / sum.
    """
    got_loss, got_grad = _loss_and_grad(fn, logits, target, weight, "cpu", reduction, **options)
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    tol = tol or _tolerance(compute_dtype)
    ref_loss, ref_grad = _loss_and_grad(fn, logits.double(), target, weight, "reference", reduction, **options)
    ref_loss = ref_loss.to(got_loss.dtype)
    ref_grad = ref_grad.to(compute_dtype)
    assert got_loss.dtype == ref_loss.dtype and got_loss.shape == ref_loss.shape
    scale = ref_loss.abs().max().item() if ref_loss.numel() else 1.0
    torch.testing.assert_close(got_loss, ref_loss, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0))
    assert got_grad.dtype == logits.dtype and got_grad.shape == logits.shape
    # a gradient that is exactly 0 (C = 1) comes out as rounding noise of its terms, whose size is
    # about the row's share of the reduction (1 / rows for the means)
    rows = max(logits.numel() // max(logits.shape[1], 1), 1)
    gscale = max(ref_grad.abs().max().item() if ref_grad.numel() else 1.0, 1.0 / rows)
    if logits.dtype in HALF_DTYPES:
        # the kernel computes in float32 and rounds once: within one half-precision ulp of the float32 result
        torch.testing.assert_close(got_grad, ref_grad.to(logits.dtype), rtol=1e-2, atol=1e-3 * gscale)
    else:
        torch.testing.assert_close(got_grad, ref_grad, rtol=tol["rtol"], atol=tol["atol"] * gscale)
    return got_loss, got_grad


def _inputs(n, c, dtype=torch.float32, seed=0, spread=3.0, ignore_index=None):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * spread).to(dtype)
    target = torch.randint(0, c, (n,), generator=g)
    if ignore_index is not None and n > 2:
        target[::3] = ignore_index
    weight = torch.rand(c, generator=g) + 0.25
    return logits, target, weight


def _softmax_options(c, variant, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    if variant == "plain":
        return {}
    if variant == "smoothing":
        return dict(label_smoothing=0.1)
    if variant == "ldam":
        return dict(target_margin=torch.rand(c, generator=g) * 0.5, scale=30.0)
    return dict(logit_offset=torch.randn(c, generator=g), target_margin=torch.rand(c, generator=g) * 0.3,
                scale=1.7, label_smoothing=0.2, ignore_index=-1)


# ----------------------------------------------------------------------------------------------
# parity with the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", [1, 2, 3, 10, 1000])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_softmax_matches_reference_small(dtype, reduction, c, n):
    for k, variant in enumerate(("plain", "smoothing", "ldam", "all")):
        opts = _softmax_options(c, variant, seed=k)
        logits, target, weight = _inputs(n, c, dtype, seed=k, ignore_index=opts.get("ignore_index"))
        assert_matches_reference(F.softmax_cross_entropy, logits, target, weight if k % 2 else None,
                                 reduction, **opts)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", [1, 2, 3, 10, 1000])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_sigmoid_and_focal_match_reference_small(dtype, reduction, c, n):
    logits, target, weight = _inputs(n, c, dtype, seed=c + n)
    assert_matches_reference(F.sigmoid_cross_entropy, logits, target, weight, reduction)
    target_ign = target.clone()
    if n > 2:
        target_ign[1] = 7
    for gamma, alpha in ((0.0, None), (0.5, 0.25), (1.0, None), (2.0, 0.75)):
        assert_matches_reference(F.sigmoid_focal_loss, logits, target_ign, weight if gamma else None, reduction,
                                 gamma=gamma, alpha=alpha, ignore_index=7)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_hot_targets_with_column_weight(dtype, reduction):
    g = torch.Generator().manual_seed(3)
    for c in (1, 3, 37):
        logits = (torch.randn(9, c, generator=g, dtype=torch.float64) * 4).to(dtype)
        target = (torch.rand(9, c, generator=g) < 0.3).to(dtype)
        target[0] = 0.35  # soft labels are allowed too
        weight = torch.rand(c, generator=g) + 0.5
        assert_matches_reference(F.sigmoid_cross_entropy, logits, target, weight, reduction)
        assert_matches_reference(F.sigmoid_cross_entropy, logits, target, None, reduction)
        for gamma, alpha in ((0.0, 0.25), (0.5, None), (2.0, 0.25)):
            assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, reduction, gamma=gamma, alpha=alpha)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_large_shapes_match_reference(reduction):
    logits, target, weight = _inputs(4096, 1000, seed=5)
    assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, reduction, label_smoothing=0.05)
    assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, reduction, gamma=2.0)
    logits, target, weight = _inputs(33, 8142, seed=6)
    assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, reduction)
    assert_matches_reference(F.sigmoid_cross_entropy, logits, target, weight, reduction)
    assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, reduction, gamma=1.0, alpha=0.25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 9), c=st.integers(1, 70), seed=st.integers(0, 2**16), spread=st.sampled_from([0.1, 3.0, 40.0]),
       reduction=st.sampled_from(REDUCTIONS), dtype=st.sampled_from(FLOAT_DTYPES),
       gamma=st.sampled_from([0.0, 0.25, 1.0, 2.0, 5.0]), alpha=st.sampled_from([None, 0.0, 0.25, 1.0]),
       smoothing=st.sampled_from([0.0, 0.3, 1.0]), use_weight=st.booleans(), use_offset=st.booleans(),
       scale=st.sampled_from([1.0, 0.5, 30.0]))
def test_random_options_match_reference(n, c, seed, spread, reduction, dtype, gamma, alpha, smoothing, use_weight,
                                        use_offset, scale):
    logits, target, weight = _inputs(n, c, dtype, seed=seed, spread=spread, ignore_index=-100)
    weight = weight if use_weight else None
    g = torch.Generator().manual_seed(seed)
    # float32 rounds differences of scaled logits, |z'_j - max z'| up to ~2 * scale * spread, to ~6e-8
    # relative: softmax terms carry that much relative error whatever the kernel does
    widen = max(1.0, scale * spread / 10.0) if dtype == torch.float32 else 1.0
    tol = {k: v * widen for k, v in _tolerance(torch.float64 if dtype == torch.float64 else torch.float32).items()}
    assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, reduction, label_smoothing=smoothing,
                             logit_offset=torch.randn(c, generator=g) if use_offset else None,
                             target_margin=torch.rand(c, generator=g), scale=scale, tol=tol)
    assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, reduction, gamma=gamma, alpha=alpha)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_every_instruction_set_matches_reference(isa, dtype):
    _cpu.set_isa(isa)
    assert _cpu.get_isa() == isa
    for c in (1, 15, 16, 17, 100):  # around the vector widths: remainder loops
        logits, target, weight = _inputs(6, c, dtype, seed=c)
        assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, "sum",
                                 **_softmax_options(c, "all", seed=c))
        assert_matches_reference(F.sigmoid_cross_entropy, logits, target, weight, "sum")
        assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, "none", gamma=0.5, alpha=0.25)
        multi = (logits > 0.5).to(dtype)
        assert_matches_reference(F.sigmoid_focal_loss, logits, multi, weight, "mean", gamma=2.0)


def test_spatial_inputs():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (3, 4, 6), generator=g)
    target[0, 0, 0] = -100
    weight = torch.rand(5, generator=g) + 0.5
    for reduction in REDUCTIONS:
        loss, _ = assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, reduction,
                                           label_smoothing=0.1)
        if reduction == "none":
            assert loss.shape == (3, 4, 6)
        assert_matches_reference(F.sigmoid_cross_entropy, logits, target, weight, reduction)
        assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, reduction, gamma=2.0)
    multi = (torch.rand(3, 5, 4, 6, generator=g) < 0.2).float()
    assert_matches_reference(F.sigmoid_focal_loss, logits, multi, weight, "mean", gamma=2.0)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(40, 12, generator=g)
    transposed = torch.randn(12, 40, generator=g).t()  # (40, 12), column-major
    sliced = base[::2, 1:11]  # (20, 10), strided rows
    for logits in (transposed, sliced):
        assert not logits.is_contiguous()
        n, c = logits.shape
        target = torch.randint(0, c, (2 * n,), generator=g)[::2]
        weight = (torch.rand(2 * c, generator=g) + 0.5)[::2]
        assert not target.is_contiguous() and not weight.is_contiguous()
        assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, "mean",
                                 logit_offset=torch.randn(2 * c, generator=g)[::2])
        assert_matches_reference(F.sigmoid_cross_entropy, logits, target, weight, "sum")
        assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, "none", gamma=2.0)
        multi = (torch.rand(c, n, generator=g) < 0.3).float().t()
        assert_matches_reference(F.sigmoid_focal_loss, logits, multi, weight, "mean", gamma=1.0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("magnitude", [100.0, 1e4])
def test_extreme_logits_are_finite_and_match(dtype, magnitude):
    g = torch.Generator().manual_seed(9)
    c = 13
    signs = torch.where(torch.rand(16, c, generator=g) < 0.5, -1.0, 1.0)
    logits = (signs * magnitude * (0.5 + torch.rand(16, c, generator=g))).to(dtype)
    logits[0] = magnitude  # all equal
    logits[1] = -magnitude
    target = torch.randint(0, c, (16,), generator=g)
    weight = torch.rand(c, generator=g) + 0.5
    cases = [(F.softmax_cross_entropy, {}), (F.softmax_cross_entropy, dict(label_smoothing=0.1)),
             (F.sigmoid_cross_entropy, {})]
    cases += [(F.sigmoid_focal_loss, dict(gamma=gamma)) for gamma in (0.0, 0.5, 1.0, 2.0)]
    for fn, opts in cases:
        loss, grad = assert_matches_reference(fn, logits, target, weight, "none", **opts)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_focal_gamma_zero_equals_sigmoid_exactly():
    logits, target, weight = _inputs(64, 50, seed=10)
    a, ga = _loss_and_grad(F.sigmoid_focal_loss, logits, target, weight, "cpu", "none", gamma=0.0)
    b, gb = _loss_and_grad(F.sigmoid_cross_entropy, logits, target, weight, "cpu", "none")
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_forward_only_matches():
    logits, target, weight = _inputs(20, 30, seed=11)
    for fn, opts in ((F.softmax_cross_entropy, dict(label_smoothing=0.1)), (F.sigmoid_cross_entropy, {}),
                     (F.sigmoid_focal_loss, dict(gamma=2.0, alpha=0.25))):
        with torch.no_grad():
            got = fn(logits, target, weight, backend="cpu", **opts)
        torch.testing.assert_close(got, fn(logits, target, weight, backend="reference", **opts))


# ----------------------------------------------------------------------------------------------
# threads, determinism, backend choice
# ----------------------------------------------------------------------------------------------
def _all_outputs(logits, target, weight):
    out = []
    for fn, opts in ((F.softmax_cross_entropy, dict(label_smoothing=0.1)), (F.sigmoid_cross_entropy, {}),
                     (F.sigmoid_focal_loss, dict(gamma=2.0))):
        out.extend(_loss_and_grad(fn, logits, target, weight, "cpu", "mean", **opts))
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_match_reference_and_are_deterministic(threads):
    torch.set_num_threads(threads)
    logits, target, weight = _inputs(512, 300, seed=12)
    assert_matches_reference(F.softmax_cross_entropy, logits, target, weight, "mean")
    assert_matches_reference(F.sigmoid_focal_loss, logits, target, weight, "sum", gamma=2.0)
    first = _all_outputs(logits, target, weight)
    again = _all_outputs(logits, target, weight)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_rows_do_not_depend_on_thread_count():
    # each row is computed by one thread in a fixed order, so even the thread count cannot change the bits
    logits, target, weight = _inputs(256, 500, seed=13)
    results = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        results.append(_all_outputs(logits, target, weight))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_auto_backend_picks_the_cpu_kernels(monkeypatch):
    monkeypatch.delenv("CBBENCH_BACKEND", raising=False)
    assert ops.kernel_status("cpu") == "available"
    assert ops.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_build_info_and_isa_choice():
    info = _cpu.build_info()
    assert {"openmp", "compile_flags", "vectorised_math", "isa", "isas_built"} <= set(info)
    assert "-ffast-math" not in info["compile_flags"]
    assert info["isa"] in info["isas_built"] and "baseline" in ISAS
    with pytest.raises(ValueError, match="unknown instruction set"):
        _cpu.set_isa("sse9")


# ----------------------------------------------------------------------------------------------
# vectorised exp / log1p of cb_math.h
# ----------------------------------------------------------------------------------------------
def _ulp_error(got, exact, dtype):
    finfo = torch.finfo(dtype)
    want = exact.to(dtype)
    spacing = torch.nextafter(want.abs(), torch.full_like(want, math.inf)) - want.abs()
    spacing = torch.where(want.abs() < finfo.tiny, torch.full_like(spacing, finfo.tiny * finfo.eps), spacing)
    return ((got.double() - exact).abs() / spacing.double())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_simd_exp_and_log1p_accuracy(isa, dtype):
    _cpu.set_isa(isa)
    g = torch.Generator().manual_seed(14)
    hi = 88.0 if dtype == torch.float32 else 709.0
    lo = -87.0 if dtype == torch.float32 else -708.0
    x = torch.cat([torch.rand(200_000, generator=g, dtype=torch.float64) * (hi - lo) + lo,
                   torch.randn(50_000, generator=g, dtype=torch.float64)]).to(dtype)
    err = _ulp_error(_cpu.simd_exp(x), torch.exp(x.double()), dtype)
    assert err.max().item() <= 1.5, err.max().item()

    u = torch.cat([torch.rand(200_000, generator=g, dtype=torch.float64),  # exp(-|z|): the kernels' range
                   torch.rand(50_000, generator=g, dtype=torch.float64) * 1.999 - 0.9995,
                   torch.exp(torch.randn(50_000, generator=g, dtype=torch.float64) * 20)]).to(dtype)
    err = _ulp_error(_cpu.simd_log1p(u), torch.log1p(u.double()), dtype)
    assert err.max().item() <= 1.5, err.max().item()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_simd_exp_and_log1p_special_values(isa, dtype):
    _cpu.set_isa(isa)
    inf, nan = math.inf, math.nan
    x = torch.tensor([0.0, -0.0, inf, -inf, nan, 1000.0, -1000.0, 1.0], dtype=dtype)
    want = torch.exp(x)
    torch.testing.assert_close(_cpu.simd_exp(x), want, equal_nan=True)
    u = torch.tensor([0.0, inf, nan, -1.0, -2.0, -inf, 1e-30, 3.0], dtype=dtype)
    torch.testing.assert_close(_cpu.simd_log1p(u), torch.log1p(u), equal_nan=True)
    # underflow into subnormals, and overflow, round like libm
    edge = torch.tensor([-100.0, -103.5, 88.5, 88.8] if dtype == torch.float32 else [-740.0, -745.0, 709.7, 709.8],
                        dtype=dtype)
    torch.testing.assert_close(_cpu.simd_exp(edge), torch.exp(edge), rtol=2 * torch.finfo(dtype).eps, atol=0)


# ----------------------------------------------------------------------------------------------
# the fused ops' CPU kernels, called directly (contract: cbbench/ops/__init__.py)
# ----------------------------------------------------------------------------------------------
def _direct_softmax(logits, target, reduction="none", grad=True, weight=None, ignore_index=-100):
    return torch.ops.cbbench.softmax_cross_entropy_fused(logits, target, weight, None, None, 1.0, 0.0, 0.0, None, None,
                                                         ignore_index, reduction, grad)


def _direct_sigmoid(logits, target, focal, reduction="none", grad=True, weight=None, ignore_index=-100):
    return torch.ops.cbbench.sigmoid_focal_fused(logits, target, weight, 2.0, -1.0, None, ignore_index, focal,
                                                 reduction, grad)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "focal"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_out_of_range_target_is_a_value_error_naming_it(kind, reduction):
    logits, _, weight = _inputs(6, 5, seed=15)
    for bad in (5, -1, 1 << 40):
        target = torch.tensor([0, 1, bad, -100, 4, 2])
        with pytest.raises(ValueError, match=f"target value {bad} is out of range for 5 classes"):
            if kind == "softmax":
                _direct_softmax(logits, target, reduction, weight=weight)
            else:
                _direct_sigmoid(logits, target, kind == "focal", reduction, weight=weight)
    # through the public function, named after it
    fn = {"softmax": F.softmax_cross_entropy, "sigmoid": F.sigmoid_cross_entropy, "focal": F.sigmoid_focal_loss}[kind]
    with pytest.raises(ValueError, match=f"{fn.__name__}: target value 7 is out of range"):
        fn(logits.requires_grad_(), torch.tensor([0, 1, 7, -100, 4, 2]), weight, reduction=reduction, backend="cpu")


def test_reduced_loss_and_divisors_of_the_contract():
    logits, target, weight = _inputs(7, 4, seed=21)
    target[2] = -100
    rows, grad_rows = _direct_softmax(logits.double(), target, "none", weight=weight)
    valid = target != -100
    divisors = {"sum": 1.0, "mean": float(valid.sum()), "weighted_mean": float(weight[target[valid]].double().sum())}
    for reduction, divisor in divisors.items():
        loss, grad = _direct_softmax(logits.double(), target, reduction, weight=weight)
        assert loss.shape == () and loss.dtype == torch.float64
        torch.testing.assert_close(loss, rows.sum() / divisor, rtol=1e-14, atol=0)
        torch.testing.assert_close(grad, grad_rows / divisor, rtol=1e-14, atol=0)
    assert rows[2] == 0 and (grad_rows[2] == 0).all()  # ignore_index
    # a negative weight sum is the divisor (PyTorch's convention); an exact 0 becomes 1
    loss, _ = _direct_softmax(logits.double(), target, "weighted_mean", weight=-weight)
    torch.testing.assert_close(loss, rows.sum() / divisors["weighted_mean"], rtol=1e-14, atol=0)
    zero = torch.zeros(4)
    loss, grad = _direct_softmax(logits, target, "weighted_mean", weight=zero)
    assert loss == 0 and (grad == 0).all()
    # nothing to average: 0, not NaN
    loss, grad = _direct_softmax(logits, torch.full((7,), -100), "mean")
    assert loss == 0 and (grad == 0).all()


def test_multi_hot_divisors_of_the_contract():
    logits, _, weight = _inputs(6, 5, seed=22)
    t = (torch.rand(6, 5, generator=torch.Generator().manual_seed(3)) < 0.4).double()
    z = logits.double()
    rows, _ = _direct_sigmoid(z, t, True, "none", weight=weight)
    for reduction, divisor in (("mean", max(float(t.sum()), 1.0)), ("sum", 1.0),
                               ("weighted_mean", float(weight.double().mean()) * 6)):
        loss, _ = _direct_sigmoid(z, t, True, reduction, weight=weight)
        torch.testing.assert_close(loss, rows.sum() / divisor, rtol=1e-14, atol=0)
    loss, _ = _direct_sigmoid(z, torch.zeros_like(z), True, "mean")  # no positives: divides by 1
    torch.testing.assert_close(loss, _direct_sigmoid(z, torch.zeros_like(z), True, "sum")[0])


def test_contract_rejects_bad_arguments():
    """The invariants of kernels/ops/cb_ops.h (the public functions raise the user-facing errors first)."""
    logits, target, weight = _inputs(4, 3, seed=16)
    call = torch.ops.cbbench.softmax_cross_entropy_fused
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        call(logits.int(), target, None, None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    with pytest.raises(TypeError, match="class targets must be int64"):
        call(logits, target.int(), None, None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    with pytest.raises(RuntimeError, match=r"target must have shape \(4,\)"):
        call(logits, target[:3], None, None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(3,\)"):
        call(logits, target, weight[:2], None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    with pytest.raises(TypeError, match="logit_offset must be floating point"):
        call(logits, target, None, target, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    with pytest.raises(ValueError, match="reduction"):
        call(logits, target, None, None, None, 1.0, 0.0, 0.0, None, None, -100, "avg", True)
    with pytest.raises(RuntimeError, match="multi-hot target must have the logits' shape"):
        torch.ops.cbbench.sigmoid_focal_fused(logits, logits.double()[:2], None, 2.0, -1.0, None, -100, True, "mean",
                                              True)
    with pytest.raises(RuntimeError, match="gamma"):
        torch.ops.cbbench.sigmoid_focal_fused(logits, target, None, -1.0, -1.0, None, -100, True, "mean", True)
    # what the kernels take as it comes: non-contiguous logits, float64 vectors, half logits (fp32 compute)
    want = call(logits, target, weight, None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    for got in (call(logits.t().contiguous().t(), target, weight.double(), None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True),):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    loss, grad = call(logits.half(), target, weight, None, None, 1.0, 0.0, 0.0, None, None, -100, "mean", True)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float16


def test_loss_is_deterministic_across_thread_counts_and_chunks():
    # 70 rows x 1000 classes = several chunks of rows: the chunk sums are added in a fixed order
    logits = torch.randn(70, 1000, generator=torch.Generator().manual_seed(5)) * 4
    target = torch.randint(0, 1000, (70,), generator=torch.Generator().manual_seed(6))
    results = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        results.append(_direct_softmax(logits, target, "mean"))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


# ----------------------------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------------------------
def test_opcheck_softmax_cross_entropy():
    logits, target, weight = _inputs(8, 5, seed=18)
    offset = torch.randn(5)
    margin = torch.rand(5)
    for reduction, need_grad in itertools.product(REDUCTIONS, (True, False)):
        z = logits.clone().requires_grad_(need_grad)
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy.default,
                              (z, target, weight, offset, margin, 2.0, 0.1, 0.0, None, None, -100, reduction))
        torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy_fused.default,
                              (logits, target, weight, offset, margin, 2.0, 0.1, 0.0, None, None, -100, reduction,
                               need_grad))


def test_opcheck_sigmoid_focal():
    logits, target, weight = _inputs(8, 5, seed=19)
    multi = (torch.rand(8, 5) < 0.3).float()
    for (reduction, focal), tgt in itertools.product(itertools.product(REDUCTIONS, (True, False)), (target, multi)):
        z = logits.clone().requires_grad_(True)
        torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default,
                              (z, tgt, weight, 2.0, 0.25, None, -100, focal, reduction))


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    logits, target, weight = _inputs(32, 11, seed=20)

    def total(z):
        return (F.softmax_cross_entropy(z, target, weight, label_smoothing=0.1, backend="cpu")
                + F.sigmoid_focal_loss(z, target, weight, gamma=2.0, backend="cpu")
                + F.sigmoid_cross_entropy(z, target, weight, reduction="sum", backend="cpu"))

    compiled = torch.compile(total, fullgraph=True)
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    eager = total(z1)
    eager.backward()
    got = compiled(z2)
    got.backward()
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(z2.grad, z1.grad)


def test_torch_compile_fullgraph_with_float_options_that_change_between_calls():
    # Dynamo makes a float argument that changed since the last call symbolic (a SymFloat): the
    # argument checks must trace it (math.isfinite cannot: fullgraph=True failed on the second value)
    torch._dynamo.reset()
    logits, target, weight = _inputs(16, 5, seed=21)

    def total(z, s):
        return (F.softmax_cross_entropy(z, target, weight, scale=s, label_smoothing=s / 10, backend="cpu")
                + F.sigmoid_focal_loss(z, target, weight, gamma=s, alpha=s / 4, backend="cpu"))

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    for s in (1.0, 2.0, 3.0):
        torch.testing.assert_close(compiled(logits, s), total(logits, s))

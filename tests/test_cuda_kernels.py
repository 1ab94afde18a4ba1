"""The CUDA kernels (cbbench._cuda) against the reference, on a GPU.

Every test is marked ``cuda`` and skipped, with the reason, when torch sees no CUDA device or the
extension was not built (``CBBENCH_CUDA=1 pip install --no-build-isolation -e .``). The reference is
evaluated in float64 on exactly the values the kernel sees (fp16/bf16 inputs are upcast), so the
tolerances below only cover the kernels' fp32 accumulation and the final rounding of the gradient.
"""
import pytest
import torch

from cbbench import functional as F
from cbbench import ops
from cuda_support import CUDA_MARKS
from cbbench import reference as R


pytestmark = CUDA_MARKS

DEV = "cuda"
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# (rtol, atol relative to the largest |value|) for the per-row loss and for the gradient; the gradient
# is compared with the float64 reference rounded to the kernel's dtype, so ~1 ulp of that dtype.
LOSS_TOL = {torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4, torch.float64: 1e-10}
GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}
# one or two subnormal steps of fp16 (the reference's rounding may land on the neighbour)
GRAD_FLOOR = {torch.float32: 1e-12, torch.float16: 1.2e-7, torch.bfloat16: 1e-30, torch.float64: 1e-300}

CLASS_COUNTS = [1, 3, 10, 100, 1000, 1203, 8142, 131072]


def _rows_for(c: int) -> int:
    return 257 if c <= 8142 else 5


def _kern():
    return ops.kernel_module("cuda")


def _gen(seed):
    return torch.Generator(device=DEV).manual_seed(seed)


def _logits(n, c, dtype, seed, spread=3.0):
    z = (torch.randn(n, c, generator=_gen(seed), device=DEV) * spread).to(dtype)
    # At exactly z = 0 autograd differentiates the reference's max(z, 0) and |z| one-sidedly (the
    # kernels use the analytic derivative), so keep the random inputs off that kink.
    return torch.where(z == 0, torch.full_like(z, 0.5), z)


def _targets(n, c, seed, ignore=True):
    y = torch.randint(0, c, (n,), generator=_gen(seed + 1), device=DEV)
    if ignore and n > 2:
        y[::7] = -100
    return y


def _weights(c, seed):
    return torch.rand(c, generator=_gen(seed + 2), device=DEV) + 0.1


def _run(fn, z, *args, **kwargs):
    """(loss, d loss / d z) of fn on a leaf copy of z; the gradient of a per-row loss is that of its
    sum with a non-trivial grad_output so the rescaling is exercised too."""
    leaf = z.detach().clone().requires_grad_(True)
    loss = fn(leaf, *args, **kwargs)
    g_out = torch.linspace(0.5, 2.0, loss.numel(), device=DEV).reshape(loss.shape).to(loss.dtype)
    loss.backward(g_out)
    return loss.detach(), leaf.grad


def _reference(fn, z, *args, **kwargs):
    """The float64 reference on the same input values."""
    return _run(fn, z.double(), *args, **kwargs)


def _assert_matches(got, want, dtype):
    got_loss, got_grad = got
    want_loss, want_grad = want
    assert got_grad.dtype == dtype
    lt = LOSS_TOL[dtype]
    scale = want_loss.abs().max().item() if want_loss.numel() else 0.0
    torch.testing.assert_close(got_loss.double(), want_loss, rtol=lt, atol=lt * max(scale, 1.0), equal_nan=True)
    gt = GRAD_TOL[dtype]
    gscale = want_grad.abs().max().item() if want_grad.numel() else 0.0
    torch.testing.assert_close(got_grad.double(), want_grad.to(dtype).double(), rtol=gt,
                               atol=gt * gscale + GRAD_FLOOR[dtype], equal_nan=True)


def _softmax_opts(c, seed, full=True):
    if not full:
        return {}
    g = _gen(seed + 3)
    return dict(logit_offset=torch.randn(c, generator=g, device=DEV),
                target_margin=torch.rand(c, generator=g, device=DEV) * 0.5,
                scale=1.7, label_smoothing=0.1)


def _check_softmax(n, c, dtype, seed=0, reduction="none", full=True, weighted=True, **extra):
    z = _logits(n, c, dtype, seed)
    y = _targets(n, c, seed)
    w = _weights(c, seed) if weighted else None
    opts = {**_softmax_opts(c, seed, full), **extra}
    got = _run(F.softmax_cross_entropy, z, y, w, reduction=reduction, backend="cuda", **opts)
    want = _reference(F.softmax_cross_entropy, z, y, None if w is None else w.double(), reduction=reduction,
                      backend="reference", **{k: (v.double() if torch.is_tensor(v) else v) for k, v in opts.items()})
    _assert_matches(got, want, dtype)
    return got


def _check_sigmoid(n, c, dtype, seed=0, reduction="none", focal=True, multi_hot=False, gamma=2.0, alpha=0.25,
                   weighted=True):
    z = _logits(n, c, dtype, seed)
    if multi_hot:
        t = (torch.rand(n, c, generator=_gen(seed + 5), device=DEV) < 0.2).to(dtype)
        t[:, ::5] = 0.3  # soft labels are allowed too
        t_ref = t.double()
    else:
        t = t_ref = _targets(n, c, seed)
    w = _weights(c, seed) if weighted else None
    w_ref = None if w is None else w.double()
    if focal:
        got = _run(F.sigmoid_focal_loss, z, t, w, gamma=gamma, alpha=alpha, reduction=reduction, backend="cuda")
        want = _reference(F.sigmoid_focal_loss, z, t_ref, w_ref, gamma=gamma, alpha=alpha, reduction=reduction,
                          backend="reference")
    else:
        got = _run(F.sigmoid_cross_entropy, z, t, w, reduction=reduction, backend="cuda")
        want = _reference(F.sigmoid_cross_entropy, z, t_ref, w_ref, reduction=reduction, backend="reference")
    _assert_matches(got, want, dtype)
    return got


# ----------------------------------------------------------------------------------------------
# parity with the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_softmax_all_options_matches_reference(c, dtype):
    _check_softmax(_rows_for(c), c, dtype, seed=c)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_focal_matches_reference(c, dtype):
    _check_sigmoid(_rows_for(c), c, dtype, seed=c)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("c", [1, 10, 1000, 8142, 131072])
def test_sigmoid_matches_reference(c, dtype):
    _check_sigmoid(_rows_for(c), c, dtype, seed=c + 1, focal=False)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("c", [3, 100, 1203, 131072])
@pytest.mark.parametrize("focal", [False, True], ids=["sigmoid", "focal"])
def test_multi_hot_targets_match_reference(c, dtype, focal):
    _check_sigmoid(_rows_for(c), c, dtype, seed=c + 2, focal=focal, multi_hot=True, gamma=0.5, alpha=0.75)


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "sum", "none"])
@pytest.mark.parametrize("dtype", FLOATS + [torch.float64], ids=str)
def test_reductions(reduction, dtype):
    _check_softmax(300, 37, dtype, seed=5, reduction=reduction)
    _check_sigmoid(300, 37, dtype, seed=6, reduction=reduction)
    _check_sigmoid(300, 37, dtype, seed=7, reduction=reduction, multi_hot=True)


@pytest.mark.parametrize("n", [0, 1, 257, 65536])
@pytest.mark.parametrize("c", [10, 100])
def test_row_counts(n, c):
    for dtype in (torch.float32, torch.bfloat16):
        _check_softmax(n, c, dtype, seed=n + c, reduction="mean")
        _check_sigmoid(n, c, dtype, seed=n + c, reduction="mean")


@pytest.mark.parametrize("c", [1, 10, 1203, 20000, 131072])
def test_float64(c):
    _check_softmax(_rows_for(c), c, torch.float64, seed=c)
    _check_sigmoid(_rows_for(c), c, torch.float64, seed=c)


@pytest.mark.parametrize("opts", [
    {}, {"scale": 30.0}, {"label_smoothing": 1.0}, {"label_smoothing": 0.3},
], ids=["plain", "scale", "smooth1", "smooth.3"])
def test_softmax_single_options(opts):
    for c in (10, 1000, 131072):
        _check_softmax(_rows_for(c), c, torch.float32, seed=3, full=False, **opts)
    _check_softmax(64, 50, torch.float32, seed=4, full=False, weighted=False, **opts)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 2.0, 5.0])
def test_focal_gammas_including_below_one(gamma):
    got_loss, got_grad = _check_sigmoid(257, 80, torch.float32, seed=11, gamma=gamma, alpha=None)
    assert torch.isfinite(got_grad).all()


def test_focal_gamma_zero_equals_sigmoid_exactly():
    z, y, w = _logits(100, 30, torch.float32, 1), _targets(100, 30, 1), _weights(30, 1)
    a = _run(F.sigmoid_focal_loss, z, y, w, gamma=0.0, backend="cuda")
    b = _run(F.sigmoid_cross_entropy, z, y, w, backend="cuda")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_no_nan_or_inf_for_huge_finite_logits():
    z = _logits(64, 1000, torch.float32, 2, spread=1e4).clamp(-1e4, 1e4)
    y = _targets(64, 1000, 2)
    for fn, kw in ((F.softmax_cross_entropy, {}), (F.sigmoid_focal_loss, {"gamma": 0.5}),
                   (F.sigmoid_focal_loss, {"gamma": 2.0}), (F.sigmoid_cross_entropy, {})):
        loss, grad = _run(fn, z, y, reduction="none", backend="cuda", **kw)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), fn.__name__
        want = _reference(fn, z, y, reduction="none", backend="reference", **kw)
        _assert_matches((loss, grad), want, torch.float32)


# ----------------------------------------------------------------------------------------------
# the kernels' paths, layouts and indexing
# ----------------------------------------------------------------------------------------------
def test_softmax_paths_are_all_exercised():
    """The class counts of the tests reach every softmax path this GPU offers."""
    like = torch.empty(0, device=DEV)
    plans = {c: _kern().softmax_plan(c, like) for c in CLASS_COUNTS + [20000, 150001]}
    kinds = {p.rstrip("0123456789x") for p in plans.values()}
    assert {"group", "block", "split"} <= kinds, plans
    if torch.cuda.get_device_capability()[0] >= 9:
        assert plans[131072].startswith("cluster"), plans
        assert plans[150001].startswith("split"), plans


@pytest.mark.parametrize("c", [20000, 150001])
def test_softmax_cluster_and_split_paths(c):
    for dtype in FLOATS:
        _check_softmax(3, c, dtype, seed=c)
    _check_softmax(3, c, torch.float32, seed=c, reduction="sum")


def test_forward_only_matches_forward_with_gradient():
    for c in (10, 1000, 8142, 131072, 150001):
        z, y, w = _logits(_rows_for(c), c, torch.bfloat16, c), _targets(_rows_for(c), c, c), _weights(c, c)
        with torch.no_grad():
            a = F.softmax_cross_entropy(z, y, w, reduction="none", backend="cuda")
            s = F.sigmoid_focal_loss(z, y, w, reduction="none", backend="cuda")
        b, _ = _run(F.softmax_cross_entropy, z, y, w, reduction="none", backend="cuda")
        t, _ = _run(F.sigmoid_focal_loss, z, y, w, reduction="none", backend="cuda")
        assert torch.equal(a, b) and torch.equal(s, t)


def test_noncontiguous_and_spatial_inputs():
    base = torch.randn(40, 6, 9, device=DEV)
    cases = [
        # (N, C, d1) = (40, 9, 3) strided view with a strided (N, d1) target
        (base.transpose(1, 2)[:, :, ::2], torch.randint(0, 9, (40, 6), device=DEV)[:, ::2]),
        # (N, C, d1, d2) with the spatial dimensions swapped
        (torch.randn(4, 7, 5, 3, device=DEV).transpose(2, 3), torch.randint(0, 7, (4, 3, 5), device=DEV)),
        # a transposed (N, C) matrix and a strided target
        (torch.randn(12, 30, device=DEV).t(), torch.randint(0, 12, (60,), device=DEV)[::2]),
    ]
    for z, y in cases:
        assert not z.is_contiguous()
        for fn in (F.softmax_cross_entropy, F.sigmoid_focal_loss, F.sigmoid_cross_entropy):
            for reduction in ("none", "mean"):
                got = _run(fn, z, y, reduction=reduction, backend="cuda")
                if reduction == "none":
                    assert got[0].shape == y.shape
                _assert_matches(got, _reference(fn, z, y, reduction=reduction, backend="reference"), torch.float32)


@pytest.mark.parametrize("c", [3, 1000, 1203, 8142, 20000, 150001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_unaligned_rows_give_bitwise_the_same_result(c, dtype):
    """Rows starting off a 16-byte boundary take the 8-/4-byte or element-wise paths, with the same
    reduction order."""
    n = 5
    z = _logits(n, c, dtype, 9)
    buf = torch.empty(n * c + 1, dtype=dtype, device=DEV)
    shifted = buf[1:].view(n, c)  # contiguous, but its data pointer is one element past alignment
    shifted.copy_(z)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    y, w = _targets(n, c, 9), _weights(c, 9)
    kern = _kern()
    outs = []
    for logits in (z, shifted):
        loss, grad = kern.softmax_ce(logits, y, w, None, None, 1.0, 0.1, -100, "none", True)
        loss2, grad2 = kern.sigmoid_focal(logits, y, w, 2.0, 0.25, -100, True, "none", True)
        outs.append((loss, grad, loss2, grad2))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_int64_indexing_beyond_2_pow_31_elements():
    free, _ = torch.cuda.mem_get_info()
    n, c = 2_200_000, 1000  # 2.2e9 elements > 2**31
    if free < 12 * 2**30:
        pytest.skip(f"needs ~12 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    z = torch.randn(n, c, device=DEV, dtype=torch.bfloat16)
    y = torch.randint(0, c, (n,), device=DEV)
    tail = slice(n - 50, n)
    for op_call, ref in (
        (lambda: torch.ops.cbbench.softmax_cross_entropy(z, y, None, None, None, 1.0, 0.0, -100, "none", True),
         lambda zz, yy: R.softmax_cross_entropy(zz, yy, reduction="none")),
        (lambda: torch.ops.cbbench.sigmoid_focal(z, y, None, 2.0, -1.0, -100, True, "none", True),
         lambda zz, yy: R.sigmoid_focal_loss(zz, yy, gamma=2.0, reduction="none")),
    ):
        loss, grad = op_call()
        zz = z[tail].double().requires_grad_(True)
        want = ref(zz, y[tail])
        want.sum().backward()
        _assert_matches((loss[tail], grad[tail]), (want.detach(), zz.grad), torch.bfloat16)
        del loss, grad
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# bad targets, determinism, graphs, op registration
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [10, 1000, 8142, 131072, 150001])
def test_bad_targets_give_nan_rows_and_no_crash(c):
    n = 9
    z = _logits(n, c, torch.float32, 1)
    y = _targets(n, c, 1, ignore=False)
    y[1], y[3], y[5], y[6] = c, -5, 2**40, -100
    bad = torch.zeros(n, dtype=torch.bool, device=DEV)
    bad[[1, 3, 5]] = True
    for fn in (F.softmax_cross_entropy, F.sigmoid_focal_loss, F.sigmoid_cross_entropy):
        loss, grad = _run(fn, z, y, reduction="none", backend="cuda")
        torch.cuda.synchronize()  # a device-side fault would surface here
        assert torch.isnan(loss[bad]).all() and torch.isfinite(loss[~bad]).all()
        assert torch.isnan(grad[bad]).all() and torch.isfinite(grad[~bad]).all()
        assert loss[6] == 0 and (grad[6] == 0).all()
        for reduction in ("mean", "sum", "weighted_mean"):
            total = fn(z, y, _weights(c, 1), reduction=reduction, backend="cuda")
            assert torch.isnan(total)


@pytest.mark.parametrize("c", [10, 1000, 8142, 131072, 150001])
def test_bitwise_deterministic(c):
    n = 4096 if c <= 1000 else 6
    z, y, w = _logits(n, c, torch.float32, 2), _targets(n, c, 2), _weights(c, 2)
    z16 = z.to(torch.bfloat16)
    first = None
    for _ in range(3):
        results = [
            _run(F.softmax_cross_entropy, z, y, w, label_smoothing=0.1, backend="cuda"),
            _run(F.softmax_cross_entropy, z16, y, w, reduction="sum", backend="cuda"),
            _run(F.sigmoid_focal_loss, z, y, w, backend="cuda"),
            _run(F.sigmoid_cross_entropy, z16, y, w, backend="cuda"),
        ]
        if first is None:
            first = results
        else:
            for (l0, g0), (l1, g1) in zip(first, results):
                assert torch.equal(l0, l1) and torch.equal(g0, g1)


@pytest.mark.parametrize("c", [10, 1000, 131072])
def test_cuda_graph_capture_and_replay_forward_backward(c):
    n = 64 if c <= 1000 else 4
    static_z = _logits(n, c, torch.float32, 3).requires_grad_(True)
    static_y = _targets(n, c, 3)
    w = _weights(c, 3)

    def step():
        loss = F.softmax_cross_entropy(static_z, static_y, w, label_smoothing=0.05, backend="cuda") + \
            F.sigmoid_focal_loss(static_z, static_y, w, backend="cuda", reduction="weighted_mean") * 0.5
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the capture (allocator, lazy module state)
            static_z.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    static_z.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    for seed in (10, 11):
        z_new, y_new = _logits(n, c, torch.float32, seed), _targets(n, c, seed)
        with torch.no_grad():
            static_z.copy_(z_new)
        static_y.copy_(y_new)
        graph.replay()
        torch.cuda.synchronize()
        eager_z = z_new.clone().requires_grad_(True)
        eager_loss = F.softmax_cross_entropy(eager_z, y_new, w, label_smoothing=0.05, backend="cuda") + \
            F.sigmoid_focal_loss(eager_z, y_new, w, backend="cuda", reduction="weighted_mean") * 0.5
        eager_loss.backward()
        assert torch.equal(static_loss, eager_loss.detach())
        assert torch.equal(static_z.grad, eager_z.grad)


def test_divisor_is_computed_inside_the_loss_launch():
    """A "weighted_mean" call launches no divisor kernel of its own (kernels/cuda/cb_divisor.cuh): the loss
    kernel computes it, with more blocks than the GPU holds at once (the others wait on the first block to
    start, which cannot deadlock), again and again on the same words (each launch resets them), and on a
    second stream."""
    n, c = 1 << 20, 10  # group4x1: 32 rows per block, 32768 blocks
    z, y, w = _logits(n, c, torch.float32, 21), _targets(n, c, 21), _weights(c, 21)
    want = _reference(F.softmax_cross_entropy, z, y, w.double(), reduction="weighted_mean", backend="reference")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        got = _run(F.softmax_cross_entropy, z, y, w, reduction="weighted_mean", backend="cuda")
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert not [k for k in kernels if "divisor" in k], kernels
    assert len([k for k in kernels if "softmax" in k]) == 1, kernels
    _assert_matches(got, want, torch.float32)
    for _ in range(3):
        assert torch.equal(_run(F.softmax_cross_entropy, z, y, w, reduction="weighted_mean", backend="cuda")[1],
                           got[1])
    # a multi-hot "mean" sums its whole target inside the launch too: one ATen reduction (the loss sum), not two
    t = (torch.rand(4096, 80, generator=_gen(22), device=DEV) < 0.1).float()
    zt = _logits(4096, 80, torch.float32, 22)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        got_t = _run(F.sigmoid_focal_loss, zt, t, None, reduction="mean", backend="cuda")
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len([k for k in kernels if "reduce_kernel" in k]) == 1, kernels
    _assert_matches(got_t, _reference(F.sigmoid_focal_loss, zt, t.double(), None, reduction="mean",
                                      backend="reference"), torch.float32)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        other = _run(F.sigmoid_focal_loss, z, y, w, reduction="weighted_mean", backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    _assert_matches(other, _reference(F.sigmoid_focal_loss, z, y, w.double(), reduction="weighted_mean",
                                      backend="reference"), torch.float32)


def test_two_graphs_captured_on_one_stream_replay_in_any_order():
    """Each captured call zeroes its own divisor words inside the graph, so graphs captured one after the other
    on torch's shared capture stream replay correctly in either order, and eager calls between them too."""
    z, y, w = _logits(256, 1000, torch.float32, 5), _targets(256, 1000, 5), _weights(1000, 5)
    F.softmax_cross_entropy(z.clone().requires_grad_(True), y, w, backend="cuda").backward()  # loads the kernel
    graphs, grads, zs = [], [], []
    for k in range(2):
        static_z = (z * (k + 1)).requires_grad_(True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = F.softmax_cross_entropy(static_z, y, w, reduction="weighted_mean", backend="cuda")
            grads.append(torch.autograd.grad(loss, static_z)[0])
        graphs.append(graph)
        zs.append(static_z.detach())
    for k in (1, 0, 1):
        graphs[k].replay()
        torch.cuda.synchronize()
        want = _reference(F.softmax_cross_entropy, zs[k], y, w.double(), reduction="weighted_mean",
                          backend="reference")
        torch.testing.assert_close(grads[k].double(), want[1], rtol=1e-4, atol=1e-9)
        _run(F.softmax_cross_entropy, z, y, w, reduction="weighted_mean", backend="cuda")


def test_sum_reduction_in_a_captured_graph_matches_eager():
    """"sum" passes no grad_scale (the kernels use 1): nothing is cached or allocated for it."""
    z, y = _logits(32, 10, torch.float32, 8), _targets(32, 10, 8, ignore=False)
    F.softmax_cross_entropy(z.clone().requires_grad_(True), y, backend="cuda").backward()  # loads the kernel
    static_z = z.clone().requires_grad_(True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = F.softmax_cross_entropy(static_z, y, reduction="sum", backend="cuda")
        static_grad = torch.autograd.grad(static_loss, static_z)[0]
    a = z.clone().requires_grad_(True)
    F.softmax_cross_entropy(a, y, reduction="sum", backend="cuda").backward()
    b = z.clone().requires_grad_(True)
    F.softmax_cross_entropy(b, y, reduction="sum", backend="reference").backward()
    torch.testing.assert_close(a.grad, b.grad)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_grad, b.grad)
    torch.testing.assert_close(static_loss, F.softmax_cross_entropy(z, y, reduction="sum", backend="reference"))


def test_backward_with_grad_output_other_than_one():
    z, y, w = _logits(100, 1000, torch.bfloat16, 4), _targets(100, 1000, 4), _weights(1000, 4)
    for g_out in (1.0, 3.0, 0.0, -0.5):
        a = z.clone().requires_grad_(True)
        (F.softmax_cross_entropy(a, y, w, backend="cuda") * g_out).backward()
        b = z.double().requires_grad_(True)
        (F.softmax_cross_entropy(b, y, w.double(), backend="reference") * g_out).backward()
        gt = GRAD_TOL[torch.bfloat16]
        torch.testing.assert_close(a.grad.double(), b.grad.to(torch.bfloat16).double(), rtol=gt,
                                   atol=gt * b.grad.abs().max().item() + 1e-30)


def test_scaled_grad_is_in_place_and_skips_grad_output_one():
    kern = _kern()
    g = torch.randn(300, 77, device=DEV, dtype=torch.float16)
    keep = g.clone()
    out = kern.scaled_grad(g, torch.tensor(1.0, device=DEV))
    assert out.data_ptr() == g.data_ptr() and torch.equal(g, keep)
    out = kern.scaled_grad(g, torch.tensor(2.5, device=DEV))
    assert out.data_ptr() == g.data_ptr()
    torch.testing.assert_close(g, (keep.float() * 2.5).half(), rtol=0, atol=0)
    g64 = torch.randn(5, 3, device=DEV, dtype=torch.float64)
    torch.testing.assert_close(kern.scaled_grad(g64.clone(), torch.tensor(-3.0, device=DEV, dtype=torch.float64)),
                               g64 * -3.0, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_repeated_backward_and_in_place_grad_changes(reduction):
    """The first backward hands the forward's gradient over; later ones (retain_graph) recompute it."""
    z = _logits(16, 10, torch.float32, 5).requires_grad_(True)
    y = _targets(16, 10, 5)
    loss = F.softmax_cross_entropy(z, y, reduction=reduction, backend="cuda").sum()
    ref = z.detach().double().requires_grad_(True)
    F.softmax_cross_entropy(ref, y, reduction=reduction, backend="reference").sum().backward()
    (loss * 2).backward(retain_graph=True)
    torch.testing.assert_close(z.grad.double(), 2 * ref.grad, rtol=1e-5, atol=1e-7)
    z.grad.zero_()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(z.grad.double(), 2 * ref.grad, rtol=1e-5, atol=1e-7)


def test_double_backward_matches_reference():
    z = _logits(8, 7, torch.float32, 6).double().requires_grad_(True)
    y, w = _targets(8, 7, 6), _weights(7, 6)
    v = torch.randn_like(z)
    hvps = []
    for backend in ("cuda", "reference"):
        g, = torch.autograd.grad(F.sigmoid_focal_loss(z, y, w, gamma=1.5, backend=backend), z, create_graph=True)
        hvps.append(torch.autograd.grad((g * v).sum(), z)[0])
    torch.testing.assert_close(hvps[0], hvps[1])


def test_opcheck_on_cuda_tensors():
    z, y, w = _logits(33, 12, torch.float32, 6), _targets(33, 12, 6), _weights(12, 6)
    t = (torch.rand(33, 12, device=DEV) < 0.3).float()
    off, margin = torch.randn(12, device=DEV), torch.rand(12, device=DEV)
    for dtype in (torch.float32, torch.bfloat16):
        zz = z.to(dtype)
        for reduction in ("mean", "none"):
            torch.library.opcheck(torch.ops.cbbench.softmax_cross_entropy.default,
                                  (zz.clone().requires_grad_(True), y, w, off, margin, 2.0, 0.1, -100, reduction, True))
            torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default,
                                  (zz.clone().requires_grad_(True), y, w, 2.0, 0.25, -100, True, reduction, True))
            torch.library.opcheck(torch.ops.cbbench.sigmoid_focal.default,
                                  (zz.clone().requires_grad_(True), t.to(dtype), w, 0.0, -1.0, -100, False, reduction,
                                   True))


def test_torch_compile_fullgraph():
    z, y, w = _logits(128, 1000, torch.bfloat16, 7), _targets(128, 1000, 7), _weights(1000, 7)

    def step(logits):
        return F.softmax_cross_entropy(logits, y, w, backend="cuda", reduction="weighted_mean",
                                       label_smoothing=0.1) + F.sigmoid_focal_loss(logits, y, w, backend="cuda")

    compiled = torch.compile(step, fullgraph=True)
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la, lb = compiled(a), step(b)
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad)


# ----------------------------------------------------------------------------------------------
# the binding's checks
# ----------------------------------------------------------------------------------------------
def test_binding_rejects_bad_arguments_with_clear_errors():
    kern = _kern()
    z = torch.randn(4, 5, device=DEV)
    y = torch.randint(0, 5, (4,), device=DEV)

    def call(**kw):
        args = dict(logits=z, target=y, weight=None, logit_offset=None, target_margin=None, scale=1.0,
                    label_smoothing=0.0, ignore_index=-100, reduction="mean", need_grad=True)
        args.update(kw)
        kern.softmax_ce(*args.values())

    with pytest.raises(RuntimeError, match="CUDA tensor"):
        call(logits=z.cpu())
    with pytest.raises(RuntimeError, match="contiguous"):
        call(logits=torch.randn(5, 4, device=DEV).t())
    with pytest.raises(RuntimeError, match="int64"):
        call(target=y.int())
    with pytest.raises(RuntimeError, match=r"weight must have shape \(5,\)"):
        call(weight=torch.ones(6, device=DEV))
    with pytest.raises(RuntimeError, match="weight must be float32"):
        call(weight=torch.ones(5, device=DEV, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float32, float16, bfloat16 or float64"):
        call(logits=z.to(torch.int32))
    with pytest.raises(RuntimeError, match="reduction must be one of"):
        call(reduction="avg")
    with pytest.raises(RuntimeError, match="multi-hot target must have the logits' dtype"):
        kern.sigmoid_focal(z, torch.zeros(4, 5, device=DEV, dtype=torch.float16), None, 2.0, -1.0, -100, True,
                           "mean", True)


def test_binding_reduces_like_the_cpu_kernels():
    """The divisors and the reduced loss of the CUDA module against the CPU module (same contract)."""
    cpu = ops.kernel_module("cpu")
    if cpu is None:
        pytest.skip("cbbench._cpu is not built")
    kern = _kern()
    z, y, w = _logits(33, 12, torch.float64, 8), _targets(33, 12, 8), _weights(12, 8)
    y[3] = -100
    t = (torch.rand(33, 12, device=DEV, dtype=torch.float64) < 0.3).double()
    for reduction in ("mean", "weighted_mean", "sum", "none"):
        for weight in (w, -w, None):
            got = kern.softmax_ce(z, y, weight, None, None, 1.0, 0.1, -100, reduction, True)
            want = cpu.softmax_ce(z.cpu(), y.cpu(), None if weight is None else weight.cpu(), None, None, 1.0, 0.1,
                                  -100, reduction, True)
            for a, b in zip(got, want):
                torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)
            got = kern.sigmoid_focal(z, t, weight, 2.0, -1.0, -100, True, reduction, True)
            want = cpu.sigmoid_focal(z.cpu(), t.cpu(), None if weight is None else weight.cpu(), 2.0, -1.0, -100,
                                     True, reduction, True)
            for a, b in zip(got, want):
                torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)

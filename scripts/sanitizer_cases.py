"""Small inputs that drive every CUDA kernel path once, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 scripts/sanitizer_cases.py

Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees a read one element
past a row as out of bounds. The cases cover each softmax plan (group / block / cluster / split), the
sigmoid/focal group and block kernels with class-index and multi-hot targets, forward-only calls,
rows that are not 16-byte aligned, the softmax focal loss with per-class alpha and
per-sample weights, tails that are not a multiple of the vector width, ignored rows,
out-of-range targets (NaN rows, no out-of-bounds read), float64, and the in-place gradient scaling.

The review's triggers (issue 17): masked classes (-inf logits, or -inf in logit_offset) at the first
element of every thread's share and of every chunk, on every softmax path, against the reference; and,
first of all (before any other launch has loaded a kernel or filled the cluster probe caches), every
softmax plan captured into a CUDA graph without an eager warm-up, replayed and checked.

``--quick`` keeps one case per kernel (for the slower racecheck tool); ``--only TEXT`` runs the cases
whose name contains TEXT. Exits 1 if a result is wrong.
"""
from __future__ import annotations

import argparse
import sys

import torch

from cbbench import functional as F
from cbbench import ops

DEV = "cuda"


def _inputs(n, c, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    z = (torch.randn(n, c, generator=g, device=DEV) * 3).to(dtype)
    y = torch.randint(0, c, (n,), generator=g, device=DEV)
    if n >= 4:
        y[1] = -100       # ignored
        if DEV == "cuda":  # the CUDA kernels make these NaN rows (the CPU kernels raise instead)
            y[2] = c      # out of range
            y[3] = -7     # out of range
    w = torch.rand(c, generator=g, device=DEV) + 0.1
    return z, y, w


def _unaligned(z):
    buf = torch.empty(z.numel() + 1, dtype=z.dtype, device=DEV)
    view = buf[1:].view(z.shape)
    view.copy_(z)
    return view


def _check_rows(name, loss, grad, y, c):
    bad = (y != -100) & ((y < 0) | (y >= c))
    ok = bool(torch.isnan(loss[bad]).all()) and bool(torch.isfinite(loss[~bad]).all())
    if grad is not None:
        ok = ok and bool(torch.isnan(grad[bad]).all()) and bool(torch.isfinite(grad[~bad]).all())
        ok = ok and bool((grad[y == -100] == 0).all())
    return ok


def softmax_case(n, c, dtype, *, unaligned=False, need_grad=True, focal=False, seed=0):
    """Softmax CE with every option (offset, margin, scale, smoothing); ``focal``: the softmax focal loss
    with a per-class alpha and per-sample weights instead (gamma 2, no smoothing)."""
    z, y, w = _inputs(n, c, dtype, seed)
    if unaligned:
        z = _unaligned(z)
    off = torch.randn(c, device=DEV)
    margin = torch.rand(c, device=DEV)
    eps, gamma, alpha, s = 0.1, 0.0, None, None
    if focal:
        eps, gamma = 0.0, 2.0
        alpha = torch.rand(c, device=DEV) + 0.05
        s = torch.rand(n, device=DEV) + 0.5
    # "none": per-row losses, to check each row; "weighted_mean": the device-side divisor and sum
    args = (z, y, w, off, margin, 1.5, eps, gamma, alpha, s, -100)
    loss, grad = torch.ops.cbbench.softmax_cross_entropy_fused(*args, "none", need_grad)
    grad = grad if need_grad else None  # (0,) without need_grad
    reduced, _ = torch.ops.cbbench.softmax_cross_entropy_fused(*args, "weighted_mean", need_grad)
    torch.cuda.synchronize()
    return _check_rows("softmax", loss, grad, y, c) and reduced.dim() == 0


def sigmoid_case(n, c, dtype, *, multi_hot=False, focal=True, unaligned=False, need_grad=True,
                 sample_weight=False, seed=0):
    z, y, w = _inputs(n, c, dtype, seed)
    if unaligned:
        z = _unaligned(z)
    target = (torch.rand(n, c, device=DEV) < 0.3).to(dtype) if multi_hot else y
    if multi_hot and unaligned:
        target = _unaligned(target)
    s = torch.rand(n, device=DEV) + 0.5 if sample_weight else None
    args = (z, target, w, 2.0 if focal else 0.0, 0.25, s, -100, focal)
    loss, grad = torch.ops.cbbench.sigmoid_focal_fused(*args, "none", need_grad)
    grad = grad if need_grad else None  # (0,) without need_grad
    reduced, _ = torch.ops.cbbench.sigmoid_focal_fused(*args, "mean", need_grad)
    torch.cuda.synchronize()
    if reduced.dim() != 0:
        return False
    if multi_hot:
        return bool(torch.isfinite(loss).all()) and (grad is None or bool(torch.isfinite(grad).all()))
    return _check_rows("sigmoid", loss, grad, y, c)


def vector_width(dtype) -> int:
    """Elements per 16-byte vector: every thread's share, CTA chunk and split chunk of the softmax
    kernels starts at a multiple of it (kernels/cuda/cb_softmax_rows.cuh)."""
    return 16 // torch.empty((), dtype=dtype).element_size()


def mask_vector_starts(z, y, keep_last: bool):
    """-inf in the first element (keep_last=False) or all but the last element (True) of every 16-byte
    vector of every row: every thread of every softmax path starts its share, and every CTA / split chunk
    its range, on a masked class. Targets move to an unmasked column (the last of their vector)."""
    v = vector_width(z.dtype)
    c = z.shape[1]
    col = torch.arange(c, device=z.device)
    masked = (col % v < v - 1) if keep_last else (col % v == 0)
    masked &= col < (c // v) * v  # a partial last vector stays unmasked: it holds the moved targets
    z = z.masked_fill(masked, float("-inf"))
    live = (y >= 0) & (y < c)
    y = torch.where(live, torch.clamp(y // v * v + v - 1, max=c - 1), y)
    return z, y, masked


def softmax_masked_case(n, c, dtype, *, keep_last=False, via_offset=False, seed=0):
    """Masked classes at every vector start (in the logits, or in logit_offset), no smoothing: every
    row's loss and gradient finite and equal to the reference's."""
    z, y, w = _inputs(n, c, dtype, seed)
    y = torch.where((y >= 0) & (y < c), y, torch.zeros_like(y))  # valid or ignored targets only
    y[1] = -100
    masked_z, y, masked = mask_vector_starts(z, y, keep_last)
    off = torch.randn(c, device=DEV)
    if via_offset:
        off = off.masked_fill(masked, float("-inf"))
    else:
        z = masked_z
    loss, grad = torch.ops.cbbench.softmax_cross_entropy_fused(z, y, w, off, None, 1.0, 0.0, 0.0, None, None, -100, "none",
                                                              True)
    ref = z.double().requires_grad_(True)
    want = F.softmax_cross_entropy(ref, y, w.double(), logit_offset=off.double(), reduction="none",
                                   backend="reference")
    want.sum().backward()
    if DEV == "cuda":
        torch.cuda.synchronize()
    tol = 1e-10 if dtype == torch.float64 else 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    return (bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad).all())
            and torch.allclose(loss.double(), want.detach(), rtol=tol, atol=tol)
            and torch.allclose(grad.double(), ref.grad, rtol=tol, atol=tol))


def graph_case(n, c, dtype, *, seed=0):
    """fwd + bwd of the public API captured into a CUDA graph WITHOUT an eager warm-up (the capture is
    the first launch of this plan), replayed on new data, checked against the reference; then, after
    an eager call, captured again: bitwise the eager result."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    static_z = (torch.randn(n, c, generator=g, device=DEV) * 3).to(dtype).requires_grad_(True)
    static_y = torch.randint(0, c, (n,), generator=g, device=DEV)
    w = torch.rand(c, generator=g, device=DEV) + 0.1

    def step(z):
        loss = F.softmax_cross_entropy(z, static_y, w, label_smoothing=0.05, backend="cuda")
        loss.backward()
        return loss

    def captured():
        static_z.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = step(static_z)
        return graph, loss

    graph, static_loss = captured()
    with torch.no_grad():
        static_z.copy_((torch.randn(n, c, generator=g, device=DEV) * 3).to(dtype))
    static_y.copy_(torch.randint(0, c, (n,), generator=g, device=DEV))
    graph.replay()
    torch.cuda.synchronize()
    ref = static_z.detach().double().requires_grad_(True)
    want = F.softmax_cross_entropy(ref, static_y, w.double(), label_smoothing=0.05, backend="reference")
    want.backward()
    tol = 1e-10 if dtype == torch.float64 else 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    ok = (torch.allclose(static_loss.double(), want.detach(), rtol=tol, atol=tol)
          and torch.allclose(static_z.grad.double(), ref.grad, rtol=tol, atol=tol * ref.grad.abs().max().item()))
    eager_z = static_z.detach().clone().requires_grad_(True)
    eager_loss = step(eager_z)  # probes (if any) run here, outside a capture
    graph, static_loss = captured()
    graph.replay()
    torch.cuda.synchronize()
    return ok and torch.equal(static_loss, eager_loss.detach()) and torch.equal(static_z.grad, eager_z.grad)


def scale_case(dtype):
    g = torch.randn(37, 1001, device=DEV).to(dtype)
    keep = g.clone()
    go_type = torch.float64 if dtype == torch.float64 else torch.float32
    torch.ops.cbbench.scale_grad_(g, torch.ones((), device=DEV, dtype=go_type))
    same = torch.equal(g, keep)
    torch.ops.cbbench.scale_grad_(g[1:], torch.full((), 2.0, device=DEV, dtype=go_type))  # starts off a 16-byte boundary
    torch.cuda.synchronize()
    return same and torch.equal(g[1:], (keep[1:].to(go_type) * 2).to(dtype)) and torch.equal(g[0], keep[0])


def autograd_case():
    z, y, w = _inputs(64, 1000, torch.bfloat16, 3)
    z.requires_grad_(True)
    (F.softmax_cross_entropy(z, y.clamp(0, 999), w, backend="cuda") * 3.0).backward()
    (F.sigmoid_focal_loss(z, y.clamp(0, 999), w, backend="cuda")).backward()
    torch.cuda.synchronize()
    return bool(torch.isfinite(z.grad).all())


# One class count per softmax plan (group, block, cluster on sm_90 / split elsewhere, split).
PLAN_CLASSES = (10, 1000, 1203, 20000, 131072, 150001)


def cases(quick: bool):
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    # First: nothing has been launched yet, so each capture is its plan's first launch.
    for c in PLAN_CLASSES:
        for dt in ((f32, bf16) if c >= 20000 else (f32,)):
            yield f"graph capture without warm-up C={c} {dt}", lambda c=c, dt=dt: graph_case(4 if c > 2000 else 64, c, dt)
        if quick:
            break
    for c in PLAN_CLASSES:
        for dt in (f32, bf16, f64):
            yield f"softmax masked vector starts C={c} {dt}", lambda c=c, dt=dt: softmax_masked_case(4, c, dt, seed=c)
        yield f"softmax masked all but last C={c} f32", lambda c=c: softmax_masked_case(4, c, f32, keep_last=True)
        yield f"softmax masked offset C={c} f32", lambda c=c: softmax_masked_case(4, c, f32, via_offset=True)
        if quick:
            break
    yield "softmax group C=10 f32", lambda: softmax_case(9, 10, f32)
    yield "softmax block C=1203 f32 unaligned", lambda: softmax_case(5, 1203, f32, unaligned=True)
    yield "softmax cluster/split C=20000 bf16", lambda: softmax_case(4, 20000, bf16, unaligned=True)
    yield "softmax split C=150001 f32", lambda: softmax_case(4, 150001, f32, unaligned=True)
    yield "sigmoid group C=80 bf16 focal", lambda: sigmoid_case(9, 80, bf16)
    yield "sigmoid block C=5000 f32 multi-hot", lambda: sigmoid_case(4, 5000, f32, multi_hot=True, unaligned=True)
    yield "softmax focal group C=10 f32 sample-weighted", lambda: softmax_case(9, 10, f32, focal=True)
    yield "softmax focal split C=150001 f32 sample-weighted", lambda: softmax_case(4, 150001, f32, focal=True)
    if quick:
        return
    for c in (1, 3, 37, 100, 1000):
        for dt in (f32, f16, bf16):
            yield f"softmax C={c} {dt}", lambda c=c, dt=dt: softmax_case(9, c, dt, seed=c)
            yield f"softmax C={c} {dt} unaligned fwd-only", lambda c=c, dt=dt: softmax_case(
                9, c, dt, unaligned=True, need_grad=False, seed=c)
            yield f"focal C={c} {dt}", lambda c=c, dt=dt: sigmoid_case(9, c, dt, seed=c)
            yield f"focal C={c} {dt} sample-weighted", lambda c=c, dt=dt: sigmoid_case(9, c, dt, sample_weight=True,
                                                                                      seed=c)
            yield f"softmax focal C={c} {dt} sample-weighted", lambda c=c, dt=dt: softmax_case(9, c, dt, focal=True,
                                                                                              seed=c)
            yield f"sigmoid C={c} {dt} multi-hot unaligned", lambda c=c, dt=dt: sigmoid_case(
                9, c, dt, multi_hot=True, focal=False, unaligned=True, seed=c)
    for c in (8142, 16385, 131072):
        for dt in (f32, bf16):
            yield f"softmax C={c} {dt}", lambda c=c, dt=dt: softmax_case(4, c, dt, seed=c)
            yield f"softmax C={c} {dt} fwd-only", lambda c=c, dt=dt: softmax_case(4, c, dt, need_grad=False, seed=c)
            yield f"focal C={c} {dt} unaligned", lambda c=c, dt=dt: sigmoid_case(4, c, dt, unaligned=True, seed=c)
    yield "softmax split C=150001 fwd-only", lambda: softmax_case(4, 150001, f32, need_grad=False)
    for c in (10, 1203, 20000, 131072):
        yield f"softmax C={c} f64", lambda c=c: softmax_case(4, c, f64, unaligned=True, seed=c)
        yield f"focal C={c} f64 multi-hot", lambda c=c: sigmoid_case(4, c, f64, multi_hot=True, seed=c)
        yield f"softmax focal C={c} f64 sample-weighted", lambda c=c: softmax_case(4, c, f64, focal=True, seed=c)
    for dt in (f32, f16, bf16, f64):
        yield f"scaled_grad {dt}", lambda dt=dt: scale_case(dt)
    yield "autograd through the ops", autograd_case


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one case per kernel")
    parser.add_argument("--only", default="", metavar="TEXT", help="run the cases whose name contains TEXT")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or ops.kernel_module("cuda") is None:
        print(f"sanitizer_cases: needs a GPU and cbbench._cuda ({ops.kernel_status('cuda')})")
        return 2
    failed, ran = [], 0
    for name, run in cases(args.quick):
        if args.only not in name:
            continue
        try:
            ok = run()
        except Exception as exc:  # a failed capture raises; report it as this case's failure
            print(f"     {name}: {type(exc).__name__}: {exc}")
            ok = False
        ran += 1
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
        if not ok:
            failed.append(name)
    # after the cases: asking for a plan runs the cluster probes, which the captures must not find done
    like = torch.empty(0, device=DEV)
    print("softmax plans:", {c: ops.kernel_module("cuda").softmax_plan(c, like) for c in PLAN_CLASSES})
    if ran == 0:
        print(f"sanitizer_cases: no case matches --only {args.only!r}")
        return 1
    print(f"sanitizer_cases: {len(failed)} of {ran} failed" if failed else f"sanitizer_cases: all {ran} ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

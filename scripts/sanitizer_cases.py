"""Small inputs that drive every CUDA kernel path once, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 scripts/sanitizer_cases.py

Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees a read one element
past a row as out of bounds. The cases cover each softmax plan (group / block / cluster / split), the
sigmoid/focal group and block kernels with class-index and multi-hot targets, forward-only calls,
rows that are not 16-byte aligned, tails that are not a multiple of the vector width, ignored rows,
out-of-range targets (NaN rows, no out-of-bounds read), float64, and the in-place gradient scaling.
``--quick`` keeps one case per kernel (for the slower racecheck tool). Exits 1 if a result is wrong.
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


def softmax_case(n, c, dtype, *, unaligned=False, need_grad=True, seed=0):
    kern = ops.kernel_module("cuda")
    z, y, w = _inputs(n, c, dtype, seed)
    if unaligned:
        z = _unaligned(z)
    off = torch.randn(c, device=DEV)
    margin = torch.rand(c, device=DEV)
    # "none": per-row losses, to check each row; "weighted_mean": the device-side divisor and sum
    loss, grad = kern.softmax_ce(z, y, w, off, margin, 1.5, 0.1, -100, "none", need_grad)
    reduced, _ = kern.softmax_ce(z, y, w, off, margin, 1.5, 0.1, -100, "weighted_mean", need_grad)
    torch.cuda.synchronize()
    return _check_rows("softmax", loss, grad, y, c) and reduced.dim() == 0


def sigmoid_case(n, c, dtype, *, multi_hot=False, focal=True, unaligned=False, need_grad=True, seed=0):
    kern = ops.kernel_module("cuda")
    z, y, w = _inputs(n, c, dtype, seed)
    if unaligned:
        z = _unaligned(z)
    target = (torch.rand(n, c, device=DEV) < 0.3).to(dtype) if multi_hot else y
    if multi_hot and unaligned:
        target = _unaligned(target)
    loss, grad = kern.sigmoid_focal(z, target, w, 2.0 if focal else 0.0, 0.25, -100, focal, "none", need_grad)
    reduced, _ = kern.sigmoid_focal(z, target, w, 2.0 if focal else 0.0, 0.25, -100, focal, "mean", need_grad)
    torch.cuda.synchronize()
    if reduced.dim() != 0:
        return False
    if multi_hot:
        return bool(torch.isfinite(loss).all()) and (grad is None or bool(torch.isfinite(grad).all()))
    return _check_rows("sigmoid", loss, grad, y, c)


def scale_case(dtype):
    kern = ops.kernel_module("cuda")
    g = torch.randn(37, 1001, device=DEV).to(dtype)
    keep = g.clone()
    go_type = torch.float64 if dtype == torch.float64 else torch.float32
    kern.scaled_grad(g, torch.ones((), device=DEV, dtype=go_type))
    same = torch.equal(g, keep)
    kern.scaled_grad(g[1:], torch.full((), 2.0, device=DEV, dtype=go_type))  # starts off a 16-byte boundary
    torch.cuda.synchronize()
    return same and torch.equal(g[1:], (keep[1:].to(go_type) * 2).to(dtype)) and torch.equal(g[0], keep[0])


def autograd_case():
    z, y, w = _inputs(64, 1000, torch.bfloat16, 3)
    z.requires_grad_(True)
    (F.softmax_cross_entropy(z, y.clamp(0, 999), w, backend="cuda") * 3.0).backward()
    (F.sigmoid_focal_loss(z, y.clamp(0, 999), w, backend="cuda")).backward()
    torch.cuda.synchronize()
    return bool(torch.isfinite(z.grad).all())


def cases(quick: bool):
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    yield "softmax group C=10 f32", lambda: softmax_case(9, 10, f32)
    yield "softmax block C=1203 f32 unaligned", lambda: softmax_case(5, 1203, f32, unaligned=True)
    yield "softmax cluster/split C=20000 bf16", lambda: softmax_case(4, 20000, bf16, unaligned=True)
    yield "softmax split C=150001 f32", lambda: softmax_case(4, 150001, f32, unaligned=True)
    yield "sigmoid group C=80 bf16 focal", lambda: sigmoid_case(9, 80, bf16)
    yield "sigmoid block C=5000 f32 multi-hot", lambda: sigmoid_case(4, 5000, f32, multi_hot=True, unaligned=True)
    if quick:
        return
    for c in (1, 3, 37, 100, 1000):
        for dt in (f32, f16, bf16):
            yield f"softmax C={c} {dt}", lambda c=c, dt=dt: softmax_case(9, c, dt, seed=c)
            yield f"softmax C={c} {dt} unaligned fwd-only", lambda c=c, dt=dt: softmax_case(
                9, c, dt, unaligned=True, need_grad=False, seed=c)
            yield f"focal C={c} {dt}", lambda c=c, dt=dt: sigmoid_case(9, c, dt, seed=c)
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
    for dt in (f32, f16, bf16, f64):
        yield f"scaled_grad {dt}", lambda dt=dt: scale_case(dt)
    yield "autograd through the ops", autograd_case


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one case per kernel")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or ops.kernel_module("cuda") is None:
        print(f"sanitizer_cases: needs a GPU and cbbench._cuda ({ops.kernel_status('cuda')})")
        return 2
    like = torch.empty(0, device=DEV)
    kern = ops.kernel_module("cuda")
    print("softmax plans:", {c: kern.softmax_plan(c, like) for c in (10, 1203, 20000, 131072, 150001)})
    failed = []
    for name, run in cases(args.quick):
        ok = run()
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
        if not ok:
            failed.append(name)
    print(f"sanitizer_cases: {len(failed)} failed" if failed else "sanitizer_cases: all ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

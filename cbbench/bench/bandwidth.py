"""The bandwidth floor of a fused loss and the device copy bandwidth it is compared with
(docs/design.md, "Performance model").

A fused forward+backward reads the logits once and writes their gradient once: ``2 N C s`` bytes for
``s``-byte elements, plus the targets (int64) and the class weights (float32). Forward only reads the
logits once. Effective bandwidth = floor bytes / measured time; "x floor" = time / (floor bytes / copy
bandwidth), so 1.0 would be a kernel moving nothing but its unavoidable bytes at copy speed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .cases import Case
from .timing import TimingPolicy, measure

TARGET_BYTES = 8   # int64 class index per row
WEIGHT_BYTES = 4   # float32 weight per class


def floor_bytes(case: Case, mode: str = "fwd_bwd") -> int:
    """Bytes a perfect fused kernel must move for ``case`` in ``mode`` ("fwd_bwd" or "fwd")."""
    logits = case.n * case.c * case.element_size
    side = case.n * TARGET_BYTES + case.c * WEIGHT_BYTES
    if mode == "fwd_bwd":
        return 2 * logits + side
    if mode == "fwd":
        return logits + side
    raise ValueError(f"mode must be 'fwd_bwd' or 'fwd', got {mode!r}")


def effective_gbps(nbytes: int, ms: float) -> float:
    """Bytes moved per second, in GB/s (1e9 bytes)."""
    return nbytes / (ms * 1e-3) / 1e9


def floor_ms(nbytes: int, copy_gbps: float) -> float:
    """Time to move ``nbytes`` at the copy bandwidth, in ms."""
    return nbytes / (copy_gbps * 1e9) * 1e3


def copy_bandwidth_gbps(device="cpu", nbytes: Optional[int] = None, policy: Optional[TimingPolicy] = None) -> float:
    """Measured device-to-device copy bandwidth (read + write counted), median over samples, in GB/s."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (128 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    policy = policy or TimingPolicy(warmup=2, min_repeat=10, max_repeat=50, budget_s=0.5)
    result = measure(lambda: dst.copy_(src), device, policy)
    return effective_gbps(2 * src.numel() * 4, result.median_ms)

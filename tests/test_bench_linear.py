"""The fused-head benchmark (cbbench/bench/linear.py, benchmarks/bench_linear.py): cases from the one
case table, every implementation checked against linear + the reference before it is timed (a wrong
one is reported, not timed), the asv classes' parameters, skips and samples."""
import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
import torch

from cbbench import ops
from cbbench.bench import cases
from cbbench.bench import linear as B

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(ops.kernel_module("cpu") is None, reason="CPU kernels not built")

TINY = cases.HeadCase("softmax", 64, 8, 300)


def test_head_cases_come_from_the_table_and_round_trip():
    full = cases.head_suite("cpu", "full")
    shapes = {(c.loss, c.shape) for c in full}
    assert {("softmax", "8192x1024x32000"), ("softmax", "8192x1024x8142")} <= shapes
    for c in full + cases.head_suite("cpu", "quick") + cases.head_suite("cuda", "asv"):
        assert cases.parse_head_case_id(cases.head_case_id(c), c.device) == c
    assert cases.HeadCase("softmax", 8192, 1024, 32000).logits_bytes == 8192 * 32000 * 4
    with pytest.raises(ValueError, match="NxHxC"):
        cases.parse_head_shape("8192x1024")


def test_run_case_checks_times_and_compares_every_implementation(monkeypatch):
    rows = B.run_case(TINY, ("fused", "unfused", "torch_chunked", "torch_chunked_eqmem", "torch", "liger"),
                      repeats=2, memory=False)
    by = {r["impl"]: r for r in rows}
    for name in ("fused", "unfused", "torch_chunked", "torch_chunked_eqmem", "torch"):
        assert by[name]["status"] == "ok", by[name]
        assert len(by[name]["samples_s"]) == 2 and by[name]["median_s"] > 0
        assert by[name]["max_rel_error"] < 2e-3
    assert by["fused"]["fused_speedup"] == 1.0
    assert by["liger"]["status"] == "skipped"
    # the torch peers have no sigmoid / focal loss
    focal = {r["impl"]: r for r in B.run_case(cases.HeadCase("focal", 32, 8, 50), ("fused", "torch"), repeats=1,
                                               memory=False)}
    assert focal["fused"]["status"] == "ok" and focal["torch"]["status"] == "skipped"
    # a wrong implementation is reported as a mismatch and not timed
    real = B.loss_fn
    monkeypatch.setattr(B, "loss_fn", lambda impl, case: (lambda x: 1.01 * real(impl, case)(x)))
    wrong = B.run_case(TINY, ("unfused",), repeats=1, memory=False)[0]
    assert wrong["status"] == "mismatch" and "median_s" not in wrong
    table = B.table(rows + [wrong])
    assert "| softmax 64x8x300 fp32 | fused |" in table and "mismatch" in table


def test_asv_head_benchmarks(monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        bench = importlib.import_module("benchmarks.bench_linear")
    finally:
        sys.path.remove(str(ROOT))
    assert bench.HeadSpeedCPU.params[1] == [cases.head_case_id(c) for c in cases.head_suite("cpu", "asv")]
    assert set(bench.HeadSpeedCPU.params[0]) == set(B.IMPLS)
    from cbbench.bench.timing import TimingPolicy

    monkeypatch.setattr(bench, "POLICY", TimingPolicy(warmup=0, min_repeat=3, max_repeat=3, budget_s=0.0))
    monkeypatch.setattr(bench, "parse_head_case_id", lambda text, device: dataclasses.replace(TINY, device=device))
    speed = bench.HeadSpeedCPU()
    speed.setup("fused", "tiny")
    out = speed.track_fwd_bwd("fused", "tiny")
    assert set(out) == {"samples", "number"} and len(out["samples"]) == 3
    with pytest.raises(NotImplementedError):
        bench.HeadSpeedCPU().setup("liger", "tiny")
    with pytest.raises(NotImplementedError):
        bench.HeadMemoryCPU().setup("cce", "tiny")
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="no CUDA device"):
            bench.HeadSpeedCUDA().setup("fused", "tiny")

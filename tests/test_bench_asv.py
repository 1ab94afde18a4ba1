"""The asv benchmark modules import, and their setup skips (NotImplementedError) what cannot run here
and fails (AssertionError) an implementation that disagrees with the reference."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from cbbench import ops

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["bench_speed", "bench_memory", "bench_accuracy", "bench_import"]


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT))
    try:
        yield {name: importlib.import_module(f"benchmarks.{name}") for name in MODULES}
    finally:
        sys.path.remove(str(ROOT))


def test_asv_config_points_at_the_suite():
    import json
    import re

    text = (ROOT / "asv.conf.json").read_text()
    conf = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
    assert conf["benchmark_dir"] == "benchmarks"
    assert conf["matrix"]["req"]["torch"] == ["2.13.0"]
    assert all(conf[k].startswith(".asv/") for k in ("env_dir", "results_dir", "html_dir"))
    assert "--no-build-isolation" in conf["build_command"][0]


def test_modules_define_benchmarks(suite):
    speed = suite["bench_speed"]
    classes = [speed.SoftmaxCPU, speed.SigmoidCPU, speed.FocalCPU, speed.SoftmaxCUDA, speed.SigmoidCUDA,
               speed.FocalCUDA]
    for cls in classes:
        assert len(cls.params) == len(cls.param_names) == 2
        assert cls.track_fwd_bwd.unit == "ms" and cls.track_effective_bandwidth.unit == "GB/s"
    # distinct setup_cache functions, so asv keeps one cache per class
    assert len({c.setup_cache.__code__.co_firstlineno for c in classes}) == len(classes)
    assert suite["bench_import"].timeraw_import_cbbench() == "import cbbench"


def test_measure_all_skips_and_times(suite, monkeypatch):
    speed = suite["bench_speed"]
    import benchmarks.common as common
    from cbbench.bench.timing import TimingPolicy

    monkeypatch.setattr(speed, "POLICY", TimingPolicy(warmup=0, min_repeat=2, max_repeat=2, budget_s=0))
    params = [["reference", "cuda", "liger"], ["64x10 fp32", "64x10 bf16", "100000000x1 fp32"]]
    results = speed.measure_all("focal", "cpu", params)
    timed = results[("reference", "64x10 fp32")]
    assert timed["fwd_bwd"] > 0 and timed["fwd"] > 0 and timed["gbps"] > 0
    assert "float32 only" in results[("reference", "64x10 bf16")]["skip"]
    assert "GPU-sized" in results[("reference", "100000000x1 fp32")]["skip"]
    assert "skip" in results[("liger", "64x10 fp32")] and "skip" in results[("cuda", "64x10 fp32")]
    if not torch.cuda.is_available():
        on_gpu = speed.measure_all("softmax", "cuda", speed.SoftmaxCUDA.params)
        assert all(v == {"skip": "no CUDA device"} for v in on_gpu.values())
    bench = speed.FocalCPU()
    with pytest.raises(NotImplementedError):
        bench.setup(results, "liger", "64x10 fp32")
    bench.setup(results, "reference", "64x10 fp32")
    assert bench.track_fwd_bwd(results, "reference", "64x10 fp32") == timed["fwd_bwd"]
    with pytest.raises(AssertionError, match="reference"):
        bench.setup({("x", "y"): {"fail": "grad differs from the reference"}}, "x", "y")
    assert common.split_case("65536x1000 bf16") == ("65536x1000", "bfloat16")


def test_prepare_fails_a_wrong_implementation(suite, monkeypatch):
    import benchmarks.common as common
    from cbbench.bench import providers

    monkeypatch.setitem(providers.EAGER, "sigmoid", lambda z, y, w: 2 * providers.eager_sigmoid(z, y, w))
    with pytest.raises(AssertionError):
        common.prepare("sigmoid", "eager", "cpu", "16x4", "float32")


def test_memory_benchmarks_skip_without_gpu_or_kernels(suite):
    mem = suite["bench_memory"]
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError):
            mem.PeakMemoryCUDA().setup("softmax", "eager")
    if ops.kernel_module("cpu") is None:
        with pytest.raises(NotImplementedError):
            mem.PeakMemoryCPU().setup("softmax", "cpu")


def test_accuracy_benchmarks_skip_what_was_not_trained(suite):
    accuracy = suite["bench_accuracy"]
    bench = accuracy.DigitsLT()
    with pytest.raises(NotImplementedError, match="harness"):
        bench.setup({"_skip": "the harness is missing"}, "softmax")
    cache = {"softmax": {"top1_error": 20.0, "balanced_accuracy": 75.0, "few_shot": None}}
    bench.setup(cache, "softmax")
    assert bench.track_top1_error(cache, "softmax") == 20.0
    assert bench.track_balanced_accuracy.unit == "%"
    assert bench.track_few_shot_accuracy(cache, "softmax") != bench.track_few_shot_accuracy(cache, "softmax")  # NaN
    if not torch.cuda.is_available():
        assert "GPU" in accuracy.Cifar10LT().setup_cache()["_skip"]


def test_cpu_memory_is_the_rise_during_the_call_not_the_process_peak(suite):
    mem = suite["bench_memory"]
    reason = mem.proc_peak_rss_unavailable()
    if reason is not None:
        pytest.skip(reason)
    assert not hasattr(mem.PeakMemoryCPU, "peakmem_fwd_bwd")
    assert mem.PeakMemoryCPU.track_peak_rss.unit == "MiB"
    big = torch.ones(100 * 2**20 // 4 * 4)  # 400 MiB before the measured call (like a compilation in setup)
    big.add_(1.0)
    del big
    assert mem.peak_rss_rise_mib(lambda: None) < 50  # the high-water mark was reset
    assert mem.peak_rss_rise_mib(lambda: torch.ones(32 * 2**20).add_(1.0)) > 100  # 128 MiB touched

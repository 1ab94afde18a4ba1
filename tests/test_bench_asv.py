"""The asv suite: its parameters come from the one case table, speed is timed by asv (``time_*``),
everything it tracks is lower-is-better, setup skips (NotImplementedError) what cannot run here and
fails (AssertionError) an implementation that disagrees with the reference."""
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from cbbench import ops
from cbbench.bench import cases

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["bench_speed", "bench_memory", "bench_accuracy", "bench_import"]


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT))
    try:
        yield {name: importlib.import_module(f"benchmarks.{name}") for name in MODULES}
    finally:
        sys.path.remove(str(ROOT))


def _benchmark_classes(module):
    return [obj for name, obj in vars(module).items() if inspect.isclass(obj) and not name.startswith("_")
            and obj.__module__ == module.__name__]


def test_asv_config_points_at_the_suite():
    text = (ROOT / "asv.conf.json").read_text()
    conf = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
    assert conf["benchmark_dir"] == "benchmarks"
    assert conf["matrix"]["req"]["torch"] == ["2.13.0"]
    assert all(conf[k].startswith(".asv/") for k in ("env_dir", "results_dir", "html_dir"))
    assert "--no-build-isolation" in conf["build_command"][0]


def test_speed_hands_asv_every_sample_over_the_case_table(suite):
    speed = suite["bench_speed"]
    classes = _benchmark_classes(speed)
    assert {c.__name__ for c in classes} == {loss.title().replace("_", "") + dev for loss in cases.LOSSES
                                             for dev in ("CPU", "CUDA")}
    for cls in classes:
        assert cls.param_names == ["impl", "case"] and cls.unit == "seconds"
        assert callable(cls.track_fwd_bwd) and callable(cls.track_fwd)
        want = [cases.case_id(c) for c in cases.suite(cls.device, losses=(cls.loss,), set_name="asv")]
        assert cls.params[1] == want and want
    # the training-size shapes of the op-path work are in the asv CPU suite, with the eager and compile peers
    assert {"8x10 fp32", "128x10 fp32", "128x100 fp32", "256x1000 fp32"} <= set(speed.SoftmaxCPU.params[1])
    assert {"eager", "compile", "cpu", "balanced_loss"} <= set(speed.SoftmaxCPU.params[0])


def test_speed_setup_checks_skips_and_the_samples_are_asv_timing_samples(suite, monkeypatch):
    speed = suite["bench_speed"]
    from cbbench.bench.timing import TimingPolicy

    monkeypatch.setattr(speed, "POLICY", TimingPolicy(warmup=1, min_repeat=7, max_repeat=7, budget_s=0.0))
    bench = speed.FocalCPU()
    bench.setup("reference", "128x100 fp32")
    out = bench.track_fwd_bwd("reference", "128x100 fp32")
    # asv's runner reads a dict with "samples" and "number" as timing samples (seconds per call)
    assert set(out) == {"samples", "number"} and out["number"] == 1
    assert len(out["samples"]) == 7 and all(0 < s < 10 for s in out["samples"])  # fewer calls than windows
    monkeypatch.setattr(speed, "CPU_CLOCK", "process")
    monkeypatch.setattr(speed, "WINDOWS", 3)
    assert len(bench.track_fwd("reference", "128x100 fp32")["samples"]) == 3


def test_window_medians(suite):
    speed = suite["bench_speed"]
    assert speed.window_medians([1, 2, 3, 10, 20, 30, 5, 6, 7], 3) == [2, 20, 6]
    assert speed.window_medians([4.0, 1.0], 8) == [4.0, 1.0]
    assert len(speed.window_medians(list(range(100)), 8)) == 8
    with pytest.raises(NotImplementedError):
        speed.FocalCPU().setup("liger", "128x100 fp32")
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="no CUDA device"):
            speed.SoftmaxCUDA().setup("eager", "256x1000 fp32")
    if ops.kernel_module("cpu") is None:
        with pytest.raises(NotImplementedError):
            speed.FocalCPU().setup("cpu", "128x100 fp32")


def test_prepare_fails_a_wrong_implementation(suite, monkeypatch):
    import benchmarks.common as common
    from cbbench.bench import providers

    monkeypatch.setitem(providers.EAGER, "sigmoid", lambda z, y, w: 2 * providers.eager_sigmoid(z, y, w))
    with pytest.raises(AssertionError):
        common.prepare("sigmoid", "eager", "cpu", "16x4 fp32")
    with pytest.raises(ValueError, match="NxC"):
        common.prepare("sigmoid", "eager", "cpu", "16x4 int8")


def test_memory_benchmarks_use_the_memory_set_and_skip_without_gpu_or_kernels(suite):
    mem = suite["bench_memory"]
    assert mem.PeakMemoryCPU.params[0] == [f"{c.loss} {cases.case_id(c)}"
                                           for c in cases.suite("cpu", set_name="memory")]
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError):
            mem.PeakMemoryCUDA().setup("softmax 65536x1000 fp32", "eager")
    if ops.kernel_module("cpu") is None:
        with pytest.raises(NotImplementedError):
            mem.PeakMemoryCPU().setup("softmax 8192x1000 fp32", "cpu")


def test_accuracy_is_tracked_as_error(suite, monkeypatch):
    accuracy = suite["bench_accuracy"]
    names = [m for m in dir(accuracy.DigitsLT) if m.startswith("track_")]
    assert names and all(n.endswith("_error") for n in names)
    bench = accuracy.DigitsLT()
    with pytest.raises(NotImplementedError, match="harness"):
        bench.setup({"_skip": "the harness is missing"}, "softmax")
    cache = {"softmax": {"top1_error": 20.0, "balanced_accuracy": 75.0, "few_shot": None}}
    bench.setup(cache, "softmax")
    assert bench.track_top1_error(cache, "softmax") == 20.0
    assert bench.track_balanced_error(cache, "softmax") == 25.0
    assert bench.track_few_shot_error(cache, "softmax") != bench.track_few_shot_error(cache, "softmax")  # NaN
    if not torch.cuda.is_available():
        assert "GPU" in accuracy.Cifar10LT().setup_cache()["_skip"]
    assert accuracy._seeds() == [0, 1, 2]
    monkeypatch.setenv("CBBENCH_ASV_METHODS", "cb_softmax,softmax")
    monkeypatch.setenv("CBBENCH_ASV_SEEDS", "2")
    assert accuracy._methods() == ["cb_softmax", "softmax"] and accuracy._seeds() == [0, 1]
    monkeypatch.setenv("CBBENCH_ASV_METHODS", "cb_softmax,nope")
    with pytest.raises(ValueError, match="nope"):
        accuracy._methods()


def test_accuracy_cache_averages_the_seeds(suite, monkeypatch):
    accuracy = suite["bench_accuracy"]
    monkeypatch.setenv("CBBENCH_ASV_METHODS", "softmax")
    monkeypatch.setenv("CBBENCH_ASV_SEEDS", "2")
    calls = {}

    def fake_run(dataset, methods, seeds, out_dir, **kw):
        calls.update(dataset=dataset, methods=methods, seeds=seeds)
        return [{"dataset": dataset, "method": "softmax", "top1_error": e, "balanced_accuracy": 100 - e,
                 "few_shot": 50.0} for e in (10.0, 20.0)]

    monkeypatch.setattr(accuracy.acc, "run_accuracy", fake_run)
    cache = accuracy.SyntheticLT().setup_cache()
    assert calls == {"dataset": "synthetic-lt", "methods": ["softmax"], "seeds": [0, 1]}
    assert accuracy.SyntheticLT().track_top1_error(cache, "softmax") == pytest.approx(15.0)


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


def test_import_benchmarks(suite):
    assert suite["bench_import"].timeraw_import_cbbench() == "import cbbench"

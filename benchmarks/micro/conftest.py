"""pytest-benchmark micro-benchmarks of cbbench's losses (not part of the default ``pytest`` run, whose
testpaths are ``tests/``). Run them with

    python -m pytest benchmarks/micro --benchmark-only [--bench-device cuda] [--benchmark-json out.json]
"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"),
                     help="device of the micro-benchmarks (default cpu)")


@pytest.fixture(scope="session")
def bench_device(request):
    return request.config.getoption("--bench-device")


@pytest.fixture
def record_samples():
    """``record(benchmark, measurement)``: hand the samples of :func:`cbbench.bench.timing.measure`
    (milliseconds, taken by the shared core) to pytest-benchmark's statistics, in place of its own timer.
    pytest-benchmark has no public call for external samples; this uses the fixture's ``_make_stats``
    (pytest-benchmark 4 and 5) and fails loudly if that is gone."""

    def record(benchmark, measurement):
        if benchmark.disabled:
            return
        if not hasattr(benchmark, "_make_stats"):
            raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._make_stats; update "
                               "benchmarks/micro/conftest.py for its API")
        benchmark._mode = "cbbench.bench.timing.measure"  # the fixture counts as used
        stats = benchmark._make_stats(1)
        for ms in measurement.samples_ms:
            stats.update(ms / 1e3)

    return record


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the cbbench record (versions, device, commit, date) to pytest-benchmark's JSON."""
    from cbbench.provenance import environment

    machine_info["cbbench"] = environment(config.getoption("--bench-device"))

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


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the cbbench record (versions, device, commit, date) to pytest-benchmark's JSON."""
    from cbbench.bench.records import environment

    machine_info["cbbench"] = environment(config.getoption("--bench-device"))

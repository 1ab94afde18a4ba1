"""One micro-benchmark per loss x shape x implementation, grouped by loss and shape. Each first asserts
that the implementation matches the reference on the timed inputs, then times forward+backward with
``benchmark.pedantic``; on CUDA every round ends with a device synchronisation."""
import pytest

from cbbench.bench.bandwidth import effective_gbps, floor_bytes
from cbbench.bench.cases import Case, make_inputs, parse_shape
from cbbench.bench.providers import PROVIDERS, check, step
from cbbench.bench.timing import synchronize

SHAPES = {
    "cpu": {"softmax": ["256x1000", "4096x1000"], "sigmoid": ["4096x1000"], "focal": ["4096x1000"]},
    "cuda": {"softmax": ["256x1000", "65536x1000"], "sigmoid": ["1048576x80"], "focal": ["1048576x80"]},
}
IMPLS = ["reference", "cpu", "cuda", "eager", "compile", "liger"]
CASES = [(loss, shape) for loss in ("softmax", "sigmoid", "focal")
         for shape in sorted(set(SHAPES["cpu"][loss]) | set(SHAPES["cuda"][loss]))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss,shape", CASES)
def test_fwd_bwd(benchmark, bench_device, loss, shape, impl):
    if shape not in SHAPES[bench_device][loss]:
        pytest.skip(f"{shape} is not in the {bench_device} set")
    case = Case(loss, *parse_shape(shape), "float32", bench_device)
    reason = PROVIDERS[impl].unavailable(case)
    if reason:
        pytest.skip(reason)
    inputs = make_inputs(case)
    fn = PROVIDERS[impl].build(case, inputs)
    assert check(fn, case, inputs) <= 1.0

    run = step(fn, inputs, "fwd_bwd")

    def synced():
        run()
        synchronize(case.device)

    benchmark.group = f"{loss} {shape} {case.device}"
    benchmark.extra_info["floor_bytes"] = floor_bytes(case, "fwd_bwd")
    benchmark.pedantic(synced, rounds=10, warmup_rounds=2, iterations=1)
    benchmark.extra_info["effective_gbps_median"] = effective_gbps(floor_bytes(case, "fwd_bwd"),
                                                                   benchmark.stats.stats.median * 1e3)

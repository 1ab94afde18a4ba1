"""One micro-benchmark per loss x case x implementation, over the ``micro`` set of the one case table
(:data:`cbbench.bench.cases.CASE_TABLE`), grouped by loss and case. Each first asserts that the
implementation matches the reference on the timed inputs, then times forward+backward through the
shared timing core (:func:`cbbench.bench.timing.measure`: host clock on the CPU, CUDA events with the L2
flushed on the GPU) and hands those samples to pytest-benchmark's statistics; p20/p50/p80 are in each
benchmark's ``extra_info``."""
import pytest

from cbbench.bench.bandwidth import effective_gbps, floor_bytes
from cbbench.bench.cases import DEVICES, LOSSES, case_id, make_inputs, suite
from cbbench.bench.providers import PROVIDERS, check, reference_values
from cbbench.bench.timing import TimingPolicy, measure

IMPLS = ["reference", "cpu", "cuda", "eager", "compile", "liger", "balanced_loss"]
CASES = {device: suite(device, losses=LOSSES, set_name="micro") for device in DEVICES}
PARAMS = sorted({(c.loss, case_id(c)) for cases in CASES.values() for c in cases})
POLICY = TimingPolicy(warmup=2, min_repeat=10, max_repeat=200, budget_s=0.5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss,case", PARAMS)
def test_fwd_bwd(benchmark, bench_device, record_samples, loss, case, impl):
    spec = next((c for c in CASES[bench_device] if (c.loss, case_id(c)) == (loss, case)), None)
    if spec is None:
        pytest.skip(f"{loss} {case} is not in the {bench_device} micro set")
    provider = PROVIDERS[impl]
    reason = provider.unavailable(spec)
    if reason:
        pytest.skip(reason)
    inputs = make_inputs(spec)
    fn = provider.build(spec, inputs)
    assert check(fn, spec, inputs, reference_values(spec, inputs, provider.expected_quantity(spec))) <= 1.0

    result = measure(provider.timed_step(fn, inputs, "fwd_bwd", spec.device), spec.device, POLICY)
    benchmark.group = f"{loss} {case} {spec.device}"
    benchmark.extra_info.update(result.summary())
    benchmark.extra_info["floor_bytes"] = floor_bytes(spec, "fwd_bwd")
    benchmark.extra_info["effective_gbps_median"] = effective_gbps(floor_bytes(spec, "fwd_bwd"), result.median_ms)
    record_samples(benchmark, result)

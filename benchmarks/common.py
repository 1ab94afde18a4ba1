"""Helpers shared by the asv benchmark modules (no benchmarks here): the parameters come from the one
case table (:data:`cbbench.bench.cases.CASE_TABLE`), the inputs and the correctness check from the
benchmark core."""
from __future__ import annotations

from cbbench.bench.cases import case_id, make_inputs, parse_case_id, suite
from cbbench.bench.providers import PROVIDERS, check, reference_values

CPU_IMPLEMENTATIONS = ["reference", "cpu", "eager", "compile", "balanced_loss"]
CUDA_IMPLEMENTATIONS = ["reference", "cuda", "eager", "compile", "liger", "balanced_loss"]
# speed also tracks the fused call replayed from a CUDA graph: kernel time without host overhead, the
# steadiest signal for a kernel regression at small shapes
CUDA_SPEED_IMPLEMENTATIONS = ["reference", "cuda", "cuda_graph", "eager", "compile", "liger", "balanced_loss"]


def case_ids(loss: str, device: str, set_name: str):
    """The ``case`` parameter values of ``loss`` on ``device`` in one set of the case table."""
    return [case_id(c) for c in suite(device, losses=(loss,), set_name=set_name)]


def prepare(loss: str, impl: str, device: str, case: str, *, verify: bool = True):
    """``(case, inputs, loss_fn)`` for one parameter combination, or NotImplementedError (asv skips).

    With ``verify`` the implementation is first compared with the reference on the same inputs; a
    mismatch raises AssertionError, so asv records a failure instead of a timing.
    """
    spec = parse_case_id(case, loss, device)
    provider = PROVIDERS[impl]
    reason = provider.unavailable(spec)
    if reason is not None:
        raise NotImplementedError(reason)
    inputs = make_inputs(spec)
    try:
        fn = provider.build(spec, inputs)
        if verify:
            check(fn, spec, inputs, reference_values(spec, inputs, provider.expected_quantity(spec)))
        else:
            fn(inputs.logits, inputs.target, inputs.weight)
    except AssertionError:
        raise
    except Exception as exc:  # e.g. eager F.cross_entropy refuses fp32 weights with bf16 logits
        raise NotImplementedError(f"{impl} cannot run {spec.label()}: {type(exc).__name__}: {exc}") from exc
    return spec, inputs, fn

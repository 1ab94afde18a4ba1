"""Helpers shared by the asv benchmark modules (no benchmarks here)."""
from __future__ import annotations

from cbbench.bench.cases import Case, make_inputs, parse_shape
from cbbench.bench.providers import PROVIDERS, check
from cbbench.bench.timing import TimingPolicy

# A track_ call times its own samples (asv's --quick only limits how often asv calls it).
POLICY = TimingPolicy(warmup=2, min_repeat=5, max_repeat=1000, budget_s=0.3)

CPU_IMPLEMENTATIONS = ["reference", "cpu", "eager", "compile"]
CUDA_IMPLEMENTATIONS = ["reference", "cuda", "eager", "compile", "liger"]
# speed also tracks the fused call replayed from a CUDA graph: kernel time without host overhead, the
# steadiest signal for a kernel regression at small shapes
CUDA_SPEED_IMPLEMENTATIONS = ["reference", "cuda", "cuda_graph", "eager", "compile", "liger"]
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# the CPU suite stays below this many logits (2-core CI machines); the GPU runs every shape
CPU_MAX_ELEMENTS = 10_000_000


def prepare(loss: str, impl: str, device: str, shape: str, dtype: str, *, verify: bool = True):
    """``(case, inputs, loss_fn)`` for one parameter combination, or NotImplementedError (asv skips).

    With ``verify`` the implementation is first compared with the reference on the same inputs; a
    mismatch raises AssertionError, so asv records a failure instead of a timing.
    """
    n, c = parse_shape(shape)
    if device == "cpu" and dtype != "float32":
        raise NotImplementedError("the CPU suite runs float32 only (cbbench upcasts half types on the CPU)")
    if device == "cpu" and n * c > CPU_MAX_ELEMENTS:
        raise NotImplementedError(f"{shape} is a GPU-sized shape")
    case = Case(loss, n, c, dtype, device)
    provider = PROVIDERS[impl]
    reason = provider.unavailable(case)
    if reason is not None:
        raise NotImplementedError(reason)
    inputs = make_inputs(case)
    try:
        fn = provider.build(case, inputs)
        if verify:
            check(fn, case, inputs)
        else:
            fn(inputs.logits, inputs.target, inputs.weight)
    except AssertionError:
        raise
    except Exception as exc:  # e.g. eager F.cross_entropy refuses fp32 weights with bf16 logits
        raise NotImplementedError(f"{impl} cannot run {case.label()}: {type(exc).__name__}: {exc}") from exc
    return case, inputs, fn


def split_case(text: str):
    """``"65536x1000 bf16"`` -> ``("65536x1000", "bfloat16")`` (the ``case`` parameter of the suite)."""
    shape, _, dtype = text.partition(" ")
    return shape, DTYPE_NAMES[dtype or "fp32"]

"""The balanced-loss peer (PyPI ``balanced-loss``): what it computes, checked against the reference, and
its results on the held test vectors (cbbench/bench/conformance.py) as the report shows them."""
import math

import pytest

from cbbench.bench import cases, conformance, providers

needs_peer = pytest.mark.skipif(not providers.installed("balanced_loss"),
                                reason="balanced-loss not installed (bench extra)")


def test_cbbench_is_right_on_the_held_vectors():
    empty = conformance.cbbench_empty_class()
    assert empty.correct and "zero training samples" in empty.result
    hardest = conformance.cbbench_hardest_positive()
    assert hardest.correct and "100" in hardest.result


@needs_peer
@pytest.mark.parametrize("loss", cases.LOSSES)
def test_balanced_loss_matches_the_reference_for_the_quantity_it_computes(loss):
    case = cases.Case(loss, 33, 7)
    peer = providers.PROVIDERS["balanced_loss"]
    if loss not in providers.BALANCED_LOSS_TYPES:  # the peer has no such loss: refused with the reason
        assert "balanced-loss has no" in peer.unavailable(case)
        with pytest.raises(RuntimeError, match="cannot run"):
            peer.build(case)
        return
    inputs = cases.make_inputs(case)
    fn = peer.build(case, inputs)
    quantity = peer.expected_quantity(case)
    assert providers.check(fn, case, inputs, providers.reference_values(case, inputs, quantity)) <= 1.0
    if loss == "sigmoid":  # its BCE mean runs over all N*C terms: 1/C of the paper's mean
        assert quantity == ("mean", 7.0)
        with pytest.raises(AssertionError, match="differs from the reference"):
            providers.check(fn, case, inputs, providers.reference_values(case, inputs, ("mean", 1.0)))


@needs_peer
def test_balanced_loss_fails_both_held_vectors():
    outcomes = {o.vector: o for o in conformance.evaluate() if o.implementation == "balanced-loss"}
    assert outcomes["empty class"].result == "NaN loss" and not outcomes["empty class"].correct
    # the official modulator overflows: the hardest positive's loss is 0 instead of 100
    assert outcomes["hardest positive"].result == "loss 0" and not outcomes["hardest positive"].correct
    table = conformance.format_table(conformance.evaluate())
    assert table.count("| no |") == 2 and table.count("| yes |") == 2


@needs_peer
def test_balanced_loss_is_timed_beside_the_other_peers():
    from cbbench.bench import speed, timing

    policy = timing.TimingPolicy(warmup=0, min_repeat=2, max_repeat=2, budget_s=0.0)
    rows = speed.run_case(cases.Case("focal", 16, 10), ["eager", "balanced_loss"], policy, copy_gbps=10.0)
    peer = {r["impl"]: r for r in rows}["balanced_loss"]
    assert peer["status"] == "ok" and peer["fwd_bwd_ms"] > 0 and peer["ops_fwd"] > 0
    speed.add_peer_ratios(rows)
    assert math.isclose(rows[0]["speedup_vs_balanced_loss"], peer["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"])

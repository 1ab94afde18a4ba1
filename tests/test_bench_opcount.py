"""Operator counts per call (cbbench/bench/opcount.py) and their place in the speed runner's rows."""
import torch
import torch.nn.functional as F

from cbbench.bench import opcount, speed, timing
from cbbench.bench.cases import Case


def test_counts_the_known_ops_of_eager_cross_entropy():
    z = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    count = opcount.count_ops(lambda: F.cross_entropy(z, y), z)
    assert count.forward.get("aten._log_softmax.default") == 1
    assert count.forward.get("aten.nll_loss_forward.default") == 1
    assert count.backward.get("aten.nll_loss_backward.default") == 1
    assert count.backward.get("aten._log_softmax_backward_data.default") == 1
    assert count.n_forward == sum(count.forward.values()) >= 2 and count.n_backward >= 2


def test_counts_grow_with_the_ops_a_call_issues():
    z = torch.randn(4, 3, requires_grad=True)
    one = opcount.count_ops(lambda: z.exp().sum(), z)
    three = opcount.count_ops(lambda: (z.exp() * 2 + 1).sum(), z)
    assert three.n_forward - one.n_forward == 2
    assert one.forward["aten.exp.default"] == 1 and "aten.exp.default" not in one.backward


def test_speed_rows_carry_op_counts_beside_eager_but_not_for_compile():
    policy = timing.TimingPolicy(warmup=0, min_repeat=1, max_repeat=1, budget_s=0.0)
    rows = speed.run_case(Case("softmax", 8, 10), ["eager", "reference", "compile"], policy, copy_gbps=10.0)
    by = {r["impl"]: r for r in rows}
    assert by["eager"]["ops_fwd"] >= 2 and by["eager"]["ops"]["bwd"]
    assert by["reference"]["ops_fwd"] > by["eager"]["ops_fwd"]  # the reference spells the loss out
    assert "ops_fwd" not in by["compile"] and by["compile"]["status"] == "ok"
    assert "ops f/b" in speed.format_table({"rows": rows})

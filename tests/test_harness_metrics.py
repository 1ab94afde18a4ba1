"""Metric arithmetic on hand-computed cases."""
import numpy as np
import pytest

from cbbench.harness.metrics import class_tallies, evaluate, evaluate_distributed, metrics_from_tallies, shot_group


def test_hand_case():
    # classes with 150 / 50 / 5 training examples: one many-, one medium-, one few-shot class
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 2, 0, 0, 0]
    r = evaluate(y_true, y_pred, [150, 50, 5])
    assert r["top1_error"] == pytest.approx(50.0)  # 5 of 10 correct
    assert r["per_class_accuracy"] == pytest.approx([75.0, 50.0, 25.0])
    assert r["balanced_accuracy"] == pytest.approx(50.0)
    assert (r["many_shot"], r["medium_shot"], r["few_shot"]) == pytest.approx((75.0, 50.0, 25.0))
    assert r["train_counts"] == [150, 50, 5]


def test_group_boundaries_and_empty_groups():
    assert [shot_group(n) for n in (101, 100, 20, 19, 1)] == ["many", "medium", "medium", "few", "few"]
    r = evaluate([0, 1, 2, 3], [0, 1, 0, 3], [30, 20, 10, 2])
    assert r["many_shot"] is None
    assert r["medium_shot"] == pytest.approx(100.0)
    assert r["few_shot"] == pytest.approx(50.0)  # mean of classes 2 (0%) and 3 (100%)


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_test():
    r = evaluate([0] * 8 + [1] * 2, [0] * 10, [10, 10])
    assert r["top1_error"] == pytest.approx(20.0)
    assert r["balanced_accuracy"] == pytest.approx(50.0)


def test_class_missing_from_test_split():
    r = evaluate([0, 0, 1], [0, 1, 1], [5, 5, 5])
    assert r["per_class_accuracy"] == [pytest.approx(50.0), pytest.approx(100.0), None]
    assert r["balanced_accuracy"] == pytest.approx(75.0)


def test_bad_input():
    with pytest.raises(ValueError, match="outside"):
        evaluate([0, 3], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="shape"):
        evaluate([0, 1], [0], [1, 1])


def test_tallies_of_shards_add_up_to_the_whole():
    """Unpadded shards' per-class tallies summed give exactly the metrics of the whole split (what the
    ranks all-reduce); padding a shard with a repeated example, as DistributedSampler does, does not."""
    g = np.random.default_rng(1)
    y_true = g.integers(0, 6, 101)
    y_pred = np.where(g.random(101) < 0.7, y_true, g.integers(0, 6, 101))
    counts = [300, 120, 50, 20, 9, 2]
    whole = evaluate(y_true, y_pred, counts)
    cuts = [0, 17, 17, 60, 101]  # one empty shard
    tallies = sum(class_tallies(y_true[a:b], y_pred[a:b], 6) for a, b in zip(cuts, cuts[1:]))
    assert metrics_from_tallies(tallies, counts) == whole
    assert evaluate_distributed(y_true, y_pred, counts) == whole  # no process group: the plain evaluation
    padded = tallies + class_tallies(y_true[:1], y_pred[:1], 6)
    assert metrics_from_tallies(padded, counts) != whole
    with pytest.raises(ValueError, match="correct <= total"):
        metrics_from_tallies(np.array([[2, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]), counts)
    with pytest.raises(ValueError, match="no test examples"):
        metrics_from_tallies(np.zeros((2, 6), dtype=np.int64), counts)

"""Metric arithmetic on hand-computed cases."""
import pytest

from cbbench.harness.metrics import evaluate, shot_group


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

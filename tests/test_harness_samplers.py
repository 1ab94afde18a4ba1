"""Re-sampling: class frequencies drawn by torch's samplers (statistical, fixed seeds), the progressive
schedule, and deferred re-sampling's switch."""
import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from cbbench import class_balanced_weights
from cbbench.harness.samplers import (SamplingSchedule, cb_class_probs, example_weights, power_class_probs,
                                      progressive_class_probs)

COUNTS = [400, 150, 60, 20, 6]
TARGETS = np.repeat(np.arange(len(COUNTS)), COUNTS)


def drawn_class_frequencies(schedule, epoch, epochs_drawn=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    drawn = np.concatenate([TARGETS[schedule.epoch_indices(epoch, gen).numpy()] for _ in range(epochs_drawn)])
    return np.bincount(drawn, minlength=len(COUNTS)) / len(drawn), len(drawn)


def assert_multinomial_close(freq, probs, n):
    # 5 standard deviations of a multinomial proportion: fails for a wrong distribution, not by chance
    tol = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-12
    assert np.all(np.abs(freq - probs) <= tol), (freq, probs, tol)


def test_power_probs():
    n = np.array(COUNTS, float)
    np.testing.assert_allclose(power_class_probs(n, 1.0), n / n.sum())
    np.testing.assert_allclose(power_class_probs(n, 0.0), np.full(5, 0.2))
    np.testing.assert_allclose(power_class_probs(n, 0.5), np.sqrt(n) / np.sqrt(n).sum())
    np.testing.assert_allclose(power_class_probs([3, 0, 1], 0.0), [0.5, 0, 0.5])


@pytest.mark.parametrize("kind, q", [("class_balanced", 0.0), ("sqrt", 0.5)])
def test_weighted_sampler_draws_classes_with_n_to_the_q(kind, q):
    schedule = SamplingSchedule(kind, TARGETS, 5, total_epochs=10)
    sampler = schedule.sampler(0, torch.Generator().manual_seed(0))
    assert isinstance(sampler, WeightedRandomSampler) and sampler.replacement
    freq, n = drawn_class_frequencies(schedule, epoch=0)
    assert_multinomial_close(freq, power_class_probs(COUNTS, q), n)
    # and it is not the instance-balanced distribution
    assert np.abs(freq - power_class_probs(COUNTS, 1.0)).max() > 0.1


def test_instance_sampling_is_a_permutation():
    schedule = SamplingSchedule("instance", TARGETS, 5, total_epochs=3)
    assert isinstance(schedule.sampler(0, torch.Generator()), RandomSampler)
    idx = schedule.epoch_indices(0, torch.Generator().manual_seed(1)).numpy()
    assert sorted(idx.tolist()) == list(range(len(TARGETS)))
    assert idx.tolist() != list(range(len(TARGETS)))


def test_cb_sampling_uses_class_balanced_weights():
    beta = 0.99
    w = class_balanced_weights(COUNTS, beta).double().numpy()
    expected = np.array(COUNTS) * w / (np.array(COUNTS) * w).sum()
    np.testing.assert_allclose(cb_class_probs(COUNTS, beta), expected, rtol=1e-6)
    schedule = SamplingSchedule("cb", TARGETS, 5, total_epochs=1, beta=beta)
    freq, n = drawn_class_frequencies(schedule, epoch=0)
    assert_multinomial_close(freq, expected, n)
    # beta -> 0 is instance-balanced, beta -> 1 class-balanced
    np.testing.assert_allclose(cb_class_probs(COUNTS, 0.0), power_class_probs(COUNTS, 1.0))
    np.testing.assert_allclose(cb_class_probs(COUNTS, 1 - 1e-9), power_class_probs(COUNTS, 0.0), atol=1e-5)


def test_progressive_schedule():
    ib, cb = power_class_probs(COUNTS, 1.0), power_class_probs(COUNTS, 0.0)
    np.testing.assert_allclose(progressive_class_probs(COUNTS, 0, 10), ib)
    np.testing.assert_allclose(progressive_class_probs(COUNTS, 5, 10), 0.5 * ib + 0.5 * cb)
    np.testing.assert_allclose(progressive_class_probs(COUNTS, 9, 10), 0.1 * ib + 0.9 * cb)
    for t in range(10):
        assert progressive_class_probs(COUNTS, t, 10).sum() == pytest.approx(1.0)
    # the tail share grows monotonically
    tail = [progressive_class_probs(COUNTS, t, 10)[-1] for t in range(10)]
    assert all(a < b for a, b in zip(tail, tail[1:]))
    schedule = SamplingSchedule("progressive", TARGETS, 5, total_epochs=10)
    freq, n = drawn_class_frequencies(schedule, epoch=8)
    assert_multinomial_close(freq, 0.2 * ib + 0.8 * cb, n)
    with pytest.raises(ValueError):
        progressive_class_probs(COUNTS, 10, 10)


def test_deferred_resampling_switches_at_the_switch_epoch():
    schedule = SamplingSchedule("deferred", TARGETS, 5, total_epochs=10, switch_epoch=8)
    assert isinstance(schedule.sampler(7, torch.Generator()), RandomSampler)
    assert isinstance(schedule.sampler(8, torch.Generator()), WeightedRandomSampler)
    np.testing.assert_allclose(schedule.class_probs(7), power_class_probs(COUNTS, 1.0))
    freq, n = drawn_class_frequencies(schedule, epoch=8)
    assert_multinomial_close(freq, np.full(5, 0.2), n)
    with pytest.raises(ValueError, match="switch_epoch"):
        SamplingSchedule("deferred", TARGETS, 5, total_epochs=10)


def test_example_weights_and_bad_kind():
    w = example_weights(TARGETS, power_class_probs(COUNTS, 0.0)).numpy()
    per_class = np.bincount(TARGETS, weights=w)
    np.testing.assert_allclose(per_class, np.full(5, 0.2))
    with pytest.raises(ValueError, match="sampling must be one of"):
        SamplingSchedule("oversample", TARGETS, 5, total_epochs=1)


def test_same_seed_same_draws():
    schedule = SamplingSchedule("sqrt", TARGETS, 5, total_epochs=1)
    a = schedule.epoch_indices(0, torch.Generator().manual_seed(5))
    b = schedule.epoch_indices(0, torch.Generator().manual_seed(5))
    c = schedule.epoch_indices(0, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)

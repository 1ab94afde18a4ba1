"""Re-sampling: class frequencies drawn by torch's samplers (statistical, fixed seeds), the progressive
schedule, deferred re-sampling's switch, draws derived from (seed, epoch), and the global batches every
world size shares (without processes; tests/test_distributed_harness.py runs 2 ranks)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from cbbench import class_balanced_weights
from cbbench.harness.inputs import random_crop_flip
from cbbench.harness.samplers import (SAMPLINGS, GlobalBatchSampler, SamplingSchedule, cb_class_probs, epoch_seed,
                                      example_weights, power_class_probs, progressive_class_probs)

COUNTS = [400, 150, 60, 20, 6]
TARGETS = np.repeat(np.arange(len(COUNTS)), COUNTS)


def drawn_class_frequencies(schedule, epoch, seeds_drawn=40):
    drawn = np.concatenate([TARGETS[schedule.epoch_indices(epoch, seed).numpy()] for seed in range(seeds_drawn)])
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
    idx = schedule.epoch_indices(0, 1).numpy()
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


def test_draws_come_from_seed_and_epoch():
    schedule = SamplingSchedule("sqrt", TARGETS, 5, total_epochs=3)
    later = schedule.epoch_indices(2, 5)  # drawn first: no generator state carried between epochs
    a = schedule.epoch_indices(0, 5)
    assert torch.equal(a, schedule.epoch_indices(0, 5)) and torch.equal(later, schedule.epoch_indices(2, 5))
    assert not torch.equal(a, schedule.epoch_indices(0, 6)) and not torch.equal(a, later)
    # unlike DistributedSampler's seed + epoch, neighbouring seeds do not share an epoch's draws
    assert not torch.equal(schedule.epoch_indices(1, 5), schedule.epoch_indices(0, 6))
    assert epoch_seed(5, 1) != epoch_seed(6, 0) and epoch_seed(5, 1) == epoch_seed(5, 1)
    assert 0 <= epoch_seed(2 ** 63 - 1, 10 ** 6) < 2 ** 63
    for bad in [(-1, 0), (0, -1), (0.5, 0), (True, 0)]:
        with pytest.raises(ValueError, match="whole numbers"):
            epoch_seed(*bad)


def _schedule(kind):
    return SamplingSchedule(kind, TARGETS, 5, total_epochs=4, beta=0.99, switch_epoch=2)


@pytest.mark.parametrize("kind", SAMPLINGS)
@pytest.mark.parametrize("batch_size", [7, 64, 636])
def test_every_world_size_shares_the_global_batches(kind, batch_size):
    """W ranks' shares of each step, put together, are the batch of one process (636 rows: batches of 7
    end with a 6-row batch, of 64 with 60 rows; one batch of 636 is the whole epoch)."""
    for epoch in (3, 1):
        single = GlobalBatchSampler(_schedule(kind), batch_size, seed=2, num_replicas=1, rank=0)
        single.set_epoch(epoch)
        want = list(single)
        assert sum(len(b) for b in want) == len(TARGETS) and len(want) == len(single)
        assert want[0] == _schedule(kind).epoch_indices(epoch, 2)[:batch_size].tolist()
        for world in (2, 3, 4, 7):
            ranks = [GlobalBatchSampler(_schedule(kind), batch_size, seed=2, num_replicas=world, rank=r)
                     for r in range(world)]
            for sampler in ranks:
                sampler.set_epoch(epoch)
            shares = [list(sampler) for sampler in ranks]
            assert all(len(s) == len(want) == len(sampler) for s, sampler in zip(shares, ranks))
            for b, batch in enumerate(want):
                sizes = [len(s[b]) for s in shares]
                assert max(sizes) - min(sizes) <= 1
                joined = [None] * len(batch)
                for r in range(world):
                    joined[r::world] = shares[r][b]
                assert joined == batch, (kind, epoch, world, b)


def test_set_epoch_like_distributed_sampler():
    sampler = GlobalBatchSampler(_schedule("instance"), 10, seed=0, num_replicas=2, rank=1)
    first, again = list(sampler), list(sampler)
    assert first == again  # without set_epoch every epoch repeats epoch 0
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    # DRS: instance-balanced before the switch epoch, class-balanced (with replacement) from it
    drs = GlobalBatchSampler(_schedule("deferred"), len(TARGETS), seed=0)
    drs.set_epoch(1)
    assert sorted(drs.local_batches()[0].tolist()) == list(range(len(TARGETS)))
    drs.set_epoch(2)
    assert len(set(drs.local_batches()[0].tolist())) < len(TARGETS)


def test_drop_last_and_data_loader():
    sampler = GlobalBatchSampler(_schedule("sqrt"), 100, seed=4, num_replicas=3, rank=2, drop_last=True)
    batches = sampler.local_batches()
    assert len(batches) == len(sampler) == 6 and all(len(b) == 33 for b in batches)  # 100 = 34 + 33 + 33
    loader = DataLoader(torch.arange(len(TARGETS)) * 10, batch_sampler=sampler)
    assert [b.tolist() for b in loader] == [(b * 10).tolist() for b in batches]
    for bad in [dict(num_replicas=2, rank=2), dict(num_replicas=0, rank=0), dict(num_replicas=2, rank=-1)]:
        with pytest.raises(ValueError, match="rank must be in"):
            GlobalBatchSampler(_schedule("sqrt"), 10, **bad)
    with pytest.raises(ValueError, match="batch_size"):
        GlobalBatchSampler(_schedule("sqrt"), 0)


def test_augmentation_of_a_share_is_that_of_the_global_batch():
    """Each rank draws the crop/flip of the whole global batch and keeps its rows: W ranks augment every
    example as one process does, and their generators stay in step."""
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8)
    gen_whole = torch.Generator().manual_seed(3)
    whole = random_crop_flip(images, gen_whole)
    next_whole = torch.rand(1, generator=gen_whole)
    for world in (2, 3, 12):
        for r in range(world):
            gen = torch.Generator().manual_seed(3)
            share = random_crop_flip(images[r::world], gen, share=(r, world, len(images)))
            assert torch.equal(share, whole[r::world])
            assert torch.equal(torch.rand(1, generator=gen), next_whole)
    with pytest.raises(ValueError, match="its share is"):
        random_crop_flip(images[:3], torch.Generator(), share=(0, 2, 11))


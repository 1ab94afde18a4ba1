"""The effective number measured from features (cbbench/effective.py): against the known truth of
prototypes-LT, the null cases, invariances (sample order, duplicated samples, feature scale), the
occupancy fit, blocked computation, input errors and the weights it gives."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import cbbench
from cbbench import effective as eff
from cbbench.effective import effective_number_from_features, expected_distinct, fit_dataset_beta, prototypes_for
from cbbench.harness.datasets import make_prototypes_lt

PROTOTYPES = [5, 40, 300, 12, 150, 25, 80, 9]


@pytest.fixture(scope="module")
def proto():
    """8 classes of 600 ... 6 examples, each of a known number of prototypes (independent of its count),
    with a second view of every example."""
    return make_prototypes_lt(num_classes=8, n_max=600, prototypes=PROTOTYPES, dim=32, noise=0.2, views=True,
                              data_seed=3, test_per_class=1)


def _measure(data, **kw):
    return effective_number_from_features(data.x_train, data.y_train, data.num_classes, **kw)


def _log_errors(measured, truth):
    return np.abs(np.log(np.asarray(measured, dtype=float) / np.asarray(truth, dtype=float)))


def test_tracks_the_distinct_prototypes_of_each_class(proto):
    truth = proto.meta["distinct_prototypes"]
    m = _measure(proto, features_aug=proto.x_train_aug)
    errors = _log_errors(m.effective_number, truth)
    assert np.median(errors) <= 0.05 and errors.max() <= 0.15, (m.effective_number.tolist(), truth)
    assert spearmanr(m.effective_number, truth).correlation >= 0.95
    # the counts are not what it measures: E is far below n where a few prototypes repeat
    counts = proto.train_counts
    assert m.effective_number[0] <= 0.02 * counts[0]
    assert "two views" in m.radius_source and m.radius > 0


def test_the_cover_order_matters_density_first_beats_a_random_order(proto):
    """In random order an edge sample of a group of near-duplicates opens a centre and the far side opens
    more: the random-order cover over-counts where the dense-first cover does not."""
    truth = np.asarray(proto.meta["distinct_prototypes"], dtype=float)
    dense = _measure(proto, features_aug=proto.x_train_aug).effective_number.numpy()
    shuffled = _measure(proto, features_aug=proto.x_train_aug, order="random").effective_number.numpy()
    assert np.abs(dense - truth).sum() < np.abs(shuffled - truth).sum()
    assert (shuffled >= dense).all()


def test_null_every_sample_distinct_gives_n():
    """Every example its own prototype (drawn as prototypes-LT draws them), each view a fresh noise draw."""
    rng = np.random.RandomState(1)
    counts = [300, 120, 48, 19, 7]
    y = np.repeat(np.arange(5), counts)
    points = 2.0 * rng.normal(size=(5, 16))[y] + 1.5 * rng.normal(size=(len(y), 16))
    x, aug = (points + 0.05 * rng.normal(size=points.shape) for _ in range(2))
    m = effective_number_from_features(x, y, 5, features_aug=aug)
    assert m.effective_number.tolist() == counts
    assert all(math.isinf(p) for p in m.prototypes.tolist()) and m.beta.tolist() == [1.0] * 5


def test_null_one_prototype_gives_one():
    data = make_prototypes_lt(num_classes=5, n_max=1000, prototypes=1, dim=16, noise=0.3, views=True, data_seed=2,
                              test_per_class=1)
    m = _measure(data, features_aug=data.x_train_aug)
    assert m.effective_number.tolist() == [1.0] * 5
    assert m.prototypes.tolist() == [1.0] * 5 and m.dataset_beta == 0.0


def test_independent_of_sample_order(proto):
    m = _measure(proto, features_aug=proto.x_train_aug)
    perm = np.random.RandomState(0).permutation(len(proto.y_train))
    p = effective_number_from_features(proto.x_train[perm], proto.y_train[perm], 8,
                                       features_aug=proto.x_train_aug[perm])
    assert p.effective_number.tolist() == m.effective_number.tolist() and p.radius == m.radius
    # the same samples are the centres (indices follow the permutation)
    for c in range(8):
        assert sorted(perm[p.centres[c].numpy()].tolist()) == sorted(m.centres[c].tolist())
    # without views too (radius from nearest neighbours)
    a, b = _measure(proto), effective_number_from_features(proto.x_train[perm], proto.y_train[perm], 8)
    assert a.effective_number.tolist() == b.effective_number.tolist() and a.radius == b.radius


def test_duplicated_samples_change_nothing(proto):
    rng = np.random.RandomState(1)
    extra = rng.choice(len(proto.y_train), size=500)  # some samples 2 or 3 times, the tail included
    x = np.concatenate([proto.x_train, proto.x_train[extra]])
    y = np.concatenate([proto.y_train, proto.y_train[extra]])
    aug = np.concatenate([proto.x_train_aug, proto.x_train_aug[extra]])
    for kw, kw_dup in (({"features_aug": proto.x_train_aug}, {"features_aug": aug}), ({}, {})):
        m, d = _measure(proto, **kw), effective_number_from_features(x, y, 8, **kw_dup)
        assert d.effective_number.tolist() == m.effective_number.tolist() and d.radius == m.radius
        assert d.counts.tolist() == np.bincount(y, minlength=8).tolist()
        assert d.distinct.tolist() == m.distinct.tolist()


def test_independent_of_feature_scale(proto):
    m = _measure(proto, features_aug=proto.x_train_aug)
    for scale in (2.0, 1 / 1024):  # exact in floating point: the normalised features are bitwise equal
        s = effective_number_from_features(proto.x_train * scale, proto.y_train, 8,
                                           features_aug=proto.x_train_aug * scale)
        assert s.effective_number.tolist() == m.effective_number.tolist() and s.radius == m.radius
    # any positive scale per row, features and views alike (normalised: equal up to rounding)
    rows = np.random.RandomState(2).uniform(0.1, 30.0, size=(len(proto.y_train), 1)).astype(np.float32)
    s = effective_number_from_features(proto.x_train * rows, proto.y_train, 8, features_aug=proto.x_train_aug * rows)
    assert s.effective_number.tolist() == m.effective_number.tolist()
    assert s.radius == pytest.approx(m.radius, rel=1e-5)
    # without normalisation a global scale moves the radius with the data
    raw = _measure(proto, normalize=False)
    big = effective_number_from_features(proto.x_train * 8.0, proto.y_train, 8, normalize=False)
    assert big.effective_number.tolist() == raw.effective_number.tolist() and big.radius == 8.0 * raw.radius


def test_radius_controls_the_count(proto):
    """radius 0 counts distinct vectors; a radius beyond the diameter counts one per class."""
    zero = _measure(proto, radius=0.0)
    assert zero.effective_number.tolist() == zero.distinct.tolist() == proto.train_counts.tolist()
    assert _measure(proto, radius=2.0).effective_number.tolist() == [1.0] * 8  # unit vectors: diameter 2
    assert _measure(proto, radius=0.3).radius_source == "given"


def test_no_view_radius_comes_from_the_largest_class(proto):
    m = _measure(proto)
    assert "class 0" in m.radius_source and "nearest" in m.radius_source
    q = _measure(proto, quantile=0.2)
    assert q.radius < m.radius


@pytest.mark.parametrize("n, big_n", [(10, 3.0), (100, 37.5), (2000, 100.0), (5, 1e6), (50, 2.0)])
def test_occupancy_inversion_recovers_the_prototypes(n, big_n):
    e = expected_distinct(n, big_n)
    assert prototypes_for([e], [n])[0] == pytest.approx(big_n, rel=1e-8)


def test_occupancy_edge_cases():
    got = prototypes_for([5, 1, 1, 3, 0, 7], [5, 9, 1, 2, 4, 6])
    assert math.isinf(got[0]) and got[1] == 1.0 and math.isnan(got[2])
    assert math.isnan(got[3]) and math.isnan(got[4]) and math.isnan(got[5])  # E > n, E < 1: not a count
    # the paper's identity: N (1 - (1 - 1/N)^n) is (1 - beta^n) / (1 - beta) at beta = (N - 1) / N
    n = torch.tensor([1.0, 7.0, 300.0])
    np.testing.assert_allclose(expected_distinct(n.numpy(), 50.0), cbbench.effective_number(n, 49 / 50).numpy())


@pytest.mark.parametrize("beta", [0.0, 0.95, 0.9975, 0.999, 0.99995])  # mostly off the search grid
def test_dataset_beta_fits_the_curve_it_came_from(beta):
    counts = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    e = cbbench.effective_number(counts, beta).numpy()
    got = fit_dataset_beta(e, counts)
    assert -math.log10(1 - got) == pytest.approx(-math.log10(1 - beta), abs=1e-4)


def test_dataset_beta_needs_a_class_of_two():
    assert fit_dataset_beta([1, 1], [1, 1]) is None


def test_blocked_distances_stay_within_the_budget(proto, monkeypatch):
    want = _measure(proto, features_aug=proto.x_train_aug)
    sizes = []
    original = eff._sq_dist

    def recording(a, b):
        sizes.append(len(a) * len(b))
        return original(a, b)

    monkeypatch.setattr(eff, "_sq_dist", recording)
    got = _measure(proto, features_aug=proto.x_train_aug, block_elements=1024)
    assert max(sizes) <= 1024 and len(sizes) > 100
    assert got.effective_number.tolist() == want.effective_number.tolist()
    assert [c.tolist() for c in got.centres] == [c.tolist() for c in want.centres]


def test_density_from_a_reference_subset(proto):
    full = _measure(proto, features_aug=proto.x_train_aug)
    same = _measure(proto, features_aug=proto.x_train_aug, density_reference=10 ** 6)
    assert same.effective_number.tolist() == full.effective_number.tolist()
    sub = _measure(proto, features_aug=proto.x_train_aug, density_reference=64)
    truth = proto.meta["distinct_prototypes"]
    assert np.median(_log_errors(sub.effective_number, truth)) <= 0.1


def test_centres_are_samples_of_their_class_and_cover_it(proto):
    m = _measure(proto, features_aug=proto.x_train_aug)
    x = torch.nn.functional.normalize(torch.from_numpy(proto.x_train).double(), dim=1)
    for c in range(8):
        idx = m.centres[c]
        assert len(idx) == m.effective_number[c] and (proto.y_train[idx.numpy()] == c).all()
        members = torch.from_numpy(np.nonzero(proto.y_train == c)[0])
        d = torch.cdist(x[members], x[idx])
        assert (d.min(dim=1).values <= m.radius + 1e-5).all()  # every sample within r of a centre
        if len(idx) > 1:  # centres are more than r apart
            dc = torch.cdist(x[idx], x[idx]) + torch.eye(len(idx)) * 10
            assert dc.min() > m.radius - 1e-5


def test_empty_classes_measure_zero_and_follow_the_weight_policy(proto):
    m = effective_number_from_features(proto.x_train, proto.y_train, 10, features_aug=proto.x_train_aug)
    assert m.effective_number[8:].tolist() == [0.0, 0.0] and m.centres[9].numel() == 0
    with pytest.raises(ValueError, match=r"class\(es\) \[8, 9\] have zero training samples"):
        m.weights()
    w = m.weights(empty="zero")
    assert w[8:].tolist() == [0.0, 0.0] and float(w.sum()) == pytest.approx(8.0)
    e = m.effective_number[:8]
    np.testing.assert_allclose(w[:8].numpy(), ((1 / e) * 8 / (1 / e).sum()).numpy(), rtol=1e-6)


def test_measured_scheme_of_class_weights():
    w = cbbench.class_weights([100, 10, 1], "measured", effective=[20.0, 5.0, 1.0])
    raw = np.array([1 / 20, 1 / 5, 1.0])
    np.testing.assert_allclose(w.numpy(), raw * 3 / raw.sum(), rtol=1e-6)
    assert w.dtype == torch.float32
    with pytest.raises(ValueError, match="needs effective="):
        cbbench.class_weights([1, 2], "measured")
    with pytest.raises(ValueError, match="not of scheme='cb'"):
        cbbench.class_weights([1, 2], "cb", effective=[1, 2])
    with pytest.raises(ValueError, match=r"> 0 for every class with samples; class\(es\) \[1\]"):
        cbbench.class_weights([1, 2], "measured", effective=[1, 0])
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        cbbench.class_weights([1, 2, 3], "measured", effective=[1, 2])
    with pytest.raises(ValueError, match="must be finite"):
        cbbench.class_weights([1, 2], "measured", effective=[1, float("nan")])
    with pytest.raises(TypeError, match="numeric"):
        cbbench.class_weights([1, 2], "measured", effective=["a", "b"])


X = np.random.RandomState(0).normal(size=(12, 3)).astype(np.float32)
Y = np.arange(12) % 3


@pytest.mark.parametrize("call, error, message", [
    (lambda: effective_number_from_features(X[0], Y, 3), ValueError, r"features must be 2-D"),
    (lambda: effective_number_from_features(X, Y[:5], 3), ValueError, r"labels must have shape \(12,\)"),
    (lambda: effective_number_from_features(X, Y + 1, 3), ValueError, r"labels must be in \[0, 3\); out of range"),
    (lambda: effective_number_from_features(X, Y - 1, 3), ValueError, r"out of range at row\(s\) \[0, 3, 6, 9\]"),
    (lambda: effective_number_from_features(X, Y.astype(float), 3), TypeError, "labels must be whole numbers"),
    (lambda: effective_number_from_features(np.where(np.arange(12)[:, None] == 4, np.nan, X), Y, 3), ValueError,
     r"features must be finite; NaN or inf in row\(s\) \[4\]"),
    (lambda: effective_number_from_features(X, Y, 3, features_aug=np.full_like(X, np.inf)), ValueError,
     "features_aug must be finite"),
    (lambda: effective_number_from_features(X, Y, 3, features_aug=X[:4]), ValueError,
     "features_aug must have the shape of features"),
    (lambda: effective_number_from_features(X, Y, 3, features_aug=X, radius=0.1), ValueError, "not both"),
    (lambda: effective_number_from_features(X, Y, 3, radius=-1), ValueError, "radius must be a finite number >= 0"),
    (lambda: effective_number_from_features(X, Y, 3, quantile=1.5), ValueError, r"quantile must be in \[0, 1\]"),
    (lambda: effective_number_from_features(X, Y, 3, method="chao1"), ValueError, "method must be one of"),
    (lambda: effective_number_from_features(X, Y, 3, order="input"), ValueError, "order must be one of"),
    (lambda: effective_number_from_features(X, Y, 0), ValueError, "num_classes must be a whole number >= 1"),
    (lambda: effective_number_from_features(np.where(np.arange(12)[:, None] == 2, 0, X), Y, 3), ValueError,
     r"row\(s\) \[2\] are all zero and cannot be L2-normalised"),
    (lambda: effective_number_from_features(X.astype(np.complex64), Y, 3), TypeError, "real numbers"),
    (lambda: effective_number_from_features(X.tolist(), Y, 3), TypeError, "torch tensor or numpy array"),
    (lambda: effective_number_from_features(np.ones((12, 3)), Y, 3), ValueError, "no class has two distinct"),
])
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_tensors_and_float64_are_accepted(proto):
    a = _measure(proto, features_aug=proto.x_train_aug)
    b = effective_number_from_features(torch.from_numpy(proto.x_train).double(), torch.from_numpy(proto.y_train), 8,
                                       features_aug=torch.from_numpy(proto.x_train_aug).double())
    assert b.effective_number.tolist() == a.effective_number.tolist()


def test_summary_is_json(proto):
    import json

    m = _measure(proto, features_aug=proto.x_train_aug)
    d = json.loads(json.dumps(m.to_dict(centres=True)))
    assert d["effective_number"] == [int(v) for v in m.effective_number.tolist()]
    assert len(d["centres"]) == 8 and d["radius"] == m.radius and 0 <= d["dataset_beta"] < 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_measurement(proto):
    cpu = _measure(proto, features_aug=proto.x_train_aug)
    on_gpu = effective_number_from_features(torch.from_numpy(proto.x_train).cuda(), torch.from_numpy(proto.y_train),
                                            8, features_aug=torch.from_numpy(proto.x_train_aug).cuda())
    moved = _measure(proto, features_aug=proto.x_train_aug, device="cuda")
    for m in (on_gpu, moved):
        assert m.device.startswith("cuda") and m.effective_number.device.type == "cpu"
        assert m.effective_number.tolist() == cpu.effective_number.tolist()
        assert m.radius == pytest.approx(cpu.radius, rel=1e-5)

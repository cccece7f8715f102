"""The unlike-the-training-data score on features with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cxrcore.stats import ood


def test_scores_are_the_distance_to_the_nearest_class_mean():
    stats = ood.FeatureStats(
        means=np.array([[0.0, 0.0], [10.0, 0.0]]),
        precision=np.diag([1.0, 4.0]),  # variance 1 along x, 1/4 along y
        threshold=3.0,
        percentile=99.0,
        n_train=10,
        n_val=5,
    )
    # (3, 1): to (0, 0) sqrt(9 + 4) = 3.606; to (10, 0) sqrt(49 + 4) = 7.28
    # (9, 0.5): to (10, 0) sqrt(1 + 1) = 1.414
    assert stats.scores([[3.0, 1.0], [9.0, 0.5]]) == pytest.approx([np.sqrt(13), np.sqrt(2)])
    assert stats.flagged([[3.0, 1.0], [9.0, 0.5]]).tolist() == [True, False]
    with pytest.raises(ValueError, match="dimensions"):
        stats.scores([[1.0, 2.0, 3.0]])


def test_fit_sets_the_threshold_at_the_validation_percentile_and_flags_what_lies_far(tmp_path):
    rng = np.random.default_rng(0)
    d = 16
    train = np.concatenate([rng.normal(0, 1, (300, d)), rng.normal(3, 1, (300, d))])
    labels = np.repeat([0, 1], 300)
    val = np.concatenate([rng.normal(0, 1, (100, d)), rng.normal(3, 1, (100, d))])
    stats = ood.fit(train, labels, val, percentile=95.0)
    assert stats.means[1].mean() == pytest.approx(3.0, abs=0.15)
    assert stats.threshold == pytest.approx(np.percentile(stats.scores(val), 95.0))
    assert stats.flagged(val).mean() == pytest.approx(0.05, abs=0.011)  # 5% of validation beyond the 95th
    inside = np.concatenate([rng.normal(0, 1, (500, d)), rng.normal(3, 1, (500, d))])
    assert stats.flagged(inside).mean() < 0.12
    far = rng.normal(0, 1, (50, d)) + np.r_[8.0, -8.0, np.zeros(d - 2)]  # off both classes
    assert stats.flagged(far).all()

    stats.save(tmp_path / "ood.npz")
    back = ood.FeatureStats.load(tmp_path / "ood.npz")
    assert back.threshold == stats.threshold and back.n_train == 600 and back.n_val == 200
    assert back.scores(far[:3]) == pytest.approx(stats.scores(far[:3]), rel=1e-4)  # stored as float32

    found = ood.summary(stats, stats.scores(np.concatenate([inside[:10], far[:10]])))
    assert found["n"] == 20 and found["flagged"] >= 10 and found["fraction_flagged"] == found["flagged"] / 20


def test_fit_refuses_too_little():
    with pytest.raises(ValueError, match="training features"):
        ood.fit(np.zeros((1, 3)), [0], np.zeros((0, 3)))


@pytest.mark.parametrize("n, d", [(40, 60), (300, 8), (5, 1)])
def test_the_shrunk_covariance_is_scikit_learns_ledoit_wolf(n, d):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(n + d)
    x = rng.normal(0, 1, (n, d)) * rng.uniform(0.5, 3.0, d)
    reference = LedoitWolf(assume_centered=True, store_precision=True).fit(x)
    np.testing.assert_allclose(ood.shrunk_covariance(x), reference.covariance_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ood.precision_of(reference.covariance_), reference.precision_, rtol=1e-6, atol=1e-8)


def test_the_precision_of_a_singular_covariance_is_its_pseudo_inverse():
    # features that never vary: (1 - s) S + s mu I is all zeros when every row is zero
    singular = np.diag([2.0, 0.0])
    assert ood.precision_of(singular) == pytest.approx(np.diag([0.5, 0.0]))
    assert ood.precision_of(np.diag([2.0, 4.0])) == pytest.approx(np.diag([0.5, 0.25]))

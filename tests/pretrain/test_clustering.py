"""Feature preprocessing, k-means with re-seeding, NMI and the uniform-over-clusters sampler."""

from collections import Counter

import numpy as np
import pytest

from pipelines.pretrain import (
    UniformClusterSampler,
    cluster_features,
    kmeans,
    nmi,
    pca_whiten,
    preprocess_features,
    reseed_empty,
)


def test_whitened_features_have_pca_dim_columns_and_unit_norm() -> None:
    features = np.random.default_rng(0).normal(size=(200, 32)) * np.linspace(0.1, 5, 32)
    points = preprocess_features(features, pca_dim=8)
    assert points.shape == (200, 8) and points.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, rtol=1e-5)


def test_whitening_gives_unit_variance_and_clamps_the_dimension() -> None:
    features = np.random.default_rng(1).normal(size=(50, 16)) * np.linspace(0.1, 5, 16)
    white = pca_whiten(features, dim=256)
    assert white.shape == (50, 16)  # min(pca_dim, channels, images - 1)
    np.testing.assert_allclose(white.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    assert pca_whiten(features[:5], dim=256).shape == (5, 4)


def test_dead_channels_are_not_amplified() -> None:
    features = np.zeros((40, 8))
    features[:, :2] = np.random.default_rng(2).normal(size=(40, 2))
    white = pca_whiten(features, dim=8)
    assert np.isfinite(white).all()
    assert np.abs(white[:, 2:]).max() < 1e-3


def _duplicates() -> np.ndarray:
    # three distinct points, twelve rows: k-means into five clusters leaves some empty
    return np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)


def test_kmeans_can_leave_empty_clusters_and_reseeding_fills_them() -> None:
    points = _duplicates()
    labels, centroids = kmeans(points, 5, seed=0)
    assert (np.bincount(labels, minlength=5) == 0).sum() == 2
    filled, moved, reseeded = reseed_empty(points, labels, centroids, np.random.default_rng(0))
    assert reseeded == 2
    assert (np.bincount(filled, minlength=5) > 0).all()
    assert moved.shape == centroids.shape
    assert (np.bincount(labels, minlength=5) == 0).sum() == 2  # the input is left alone


def test_reseeding_splits_the_largest_cluster_along_a_point() -> None:
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(-5, 1, (30, 2)), rng.normal(5, 0.1, (3, 2))])
    labels = np.array([0] * 30 + [1] * 3)
    centroids = np.array([points[:30].mean(0), points[30:].mean(0), [100.0, 100.0]])
    filled, moved, reseeded = reseed_empty(points, labels, centroids, rng)
    sizes = np.bincount(filled, minlength=3)
    assert reseeded == 1 and sizes[1] == 3 and sizes[0] > 0 and sizes[2] > 0
    for c in range(3):
        np.testing.assert_allclose(moved[c], points[filled == c].mean(0), rtol=1e-5)


def test_cluster_features_leaves_no_empty_cluster() -> None:
    assignment = cluster_features(_duplicates(), 5, pca_dim=4, seed=0)
    assert assignment.reseeded == 2
    assert (assignment.sizes > 0).all() and assignment.sizes.sum() == 12


def test_fewer_points_than_clusters_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 5 images"):
        cluster_features(np.eye(4), 5, pca_dim=4)


def test_nmi_of_identical_and_permuted_assignments_is_one() -> None:
    a = np.array([0, 0, 1, 1, 2, 2])
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, (a + 1) % 3) == pytest.approx(1.0)  # cluster ids do not matter
    assert nmi(a, np.array([0, 1, 0, 1, 0, 1])) < 0.1


def test_sampler_draws_equally_from_each_cluster() -> None:
    labels = np.array([0] * 50 + [1] * 7 + [3] * 3)  # cluster 2 is empty
    sampler = UniformClusterSampler(labels, seed=0)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 3 * 20  # ceil(60 / 3 non-empty clusters)
    per_cluster = Counter(int(labels[i]) for i in drawn)
    assert per_cluster == {0: 20, 1: 20, 3: 20}
    small = Counter(i for i in drawn if labels[i] == 3)
    assert sorted(small.values()) == [6, 7, 7]  # cycled through, not drawn at random
    assert len(set(i for i in drawn if labels[i] == 0)) == 20  # no repeats in a big one


def test_sampler_is_seeded_and_epochs_differ() -> None:
    labels = np.arange(40) % 4
    a, b = UniformClusterSampler(labels, seed=5), UniformClusterSampler(labels, seed=5)
    first = list(a)
    assert first == list(b)
    assert first != list(a)

"""The clustering half of DeepCluster: PCA-whitening, L2, k-means, empty-cluster re-seeding, NMI.

Pure numpy and scikit-learn over a (N, C) feature matrix; nothing here knows about torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import normalized_mutual_info_score

# Whitening divides by sqrt(variance); directions with (almost) no variance would blow up
# their rounding noise, so the variance gets a floor relative to the largest one.
_VARIANCE_FLOOR = 1e-8
_TINY = 1e-12


@dataclass(frozen=True)
class Assignment:
    """One clustering of N images into K clusters.

    ``labels`` (N,) int64 in [0, K) (or (N, h, w), one per place, from
    :func:`cluster_places`); ``centroids`` (K, d) in the whitened, normalised space;
    ``reseeded`` counts the clusters k-means left empty and :func:`reseed_empty` filled.
    """

    labels: np.ndarray
    centroids: np.ndarray
    reseeded: int = 0

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        """Images (places, for dense labels) per cluster, (K,) int64."""
        return np.bincount(self.labels.ravel(), minlength=self.k)


def pca_whiten(features: np.ndarray, dim: int) -> np.ndarray:
    """Project ``features`` (N, C) on their top principal components and whiten them.

    Returns (N, d) float32 with d = min(dim, C, N - 1): zero mean, unit variance per column
    (columns of almost no variance are damped rather than amplified).
    Raises ValueError for fewer than two rows, a non-2-D input or dim < 1.
    """
    x = _matrix(features)
    if dim < 1:
        raise ValueError(f"PCA dimension must be at least 1, got {dim}")
    n, c = x.shape
    d = min(dim, c, n - 1)
    centred = x - x.mean(axis=0)
    # eigh on the C x C covariance: cheaper than an SVD of N x C when N >> C, and deterministic
    variances, vectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    order = np.argsort(variances)[::-1][:d]
    variances = np.clip(variances[order], 0.0, None)
    floor = _VARIANCE_FLOOR * max(float(variances[0]), 0.0) + _TINY
    return (centred @ vectors[:, order] / np.sqrt(variances + floor)).astype(np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm; an all-zero row stays zero. Returns float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, _TINY)).astype(np.float32)


def preprocess_features(features: np.ndarray, pca_dim: int) -> np.ndarray:
    """DeepCluster's feature preprocessing: PCA-whitening to ``pca_dim``, then L2 per row.

    Returns (N, min(pca_dim, C, N - 1)) float32. Raises ValueError as :func:`pca_whiten`.
    """
    return l2_normalise(pca_whiten(features, pca_dim))


def kmeans(
    points: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scikit-learn, one k-means++ initialisation) into ``k`` clusters.

    Returns ``(labels (N,) int64, centroids (k, d) float32)``; some clusters may be empty when
    the points have fewer than ``k`` distinct values (see :func:`reseed_empty`).
    Raises ValueError when there are fewer points than clusters.
    """
    x = _matrix(points)
    if k < 1 or x.shape[0] < k:
        raise ValueError(f"cannot make {k} clusters of {x.shape[0]} points")
    km = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # "fewer distinct clusters than n_clusters": the empty ones are re-seeded by the caller
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = km.fit_predict(x)
    return labels.astype(np.int64), km.cluster_centers_.astype(np.float32)


def reseed_empty(
    points: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fill every empty cluster by splitting the largest one, as DeepCluster does.

    For each empty cluster: pick a random point p of the largest cluster (centroid m),
    perturb m towards p and away from it, and reassign the largest cluster's points to the
    nearer of the two, so the points on p's side form the new cluster. Identical points
    cannot be split by distance; then p alone moves. Centroids become the two halves' means.

    Returns ``(labels, centroids, number re-seeded)`` as new arrays (inputs are not changed).
    Raises ValueError when there are fewer points than clusters (nothing left to split).
    """
    x = _matrix(points)
    labels = np.asarray(labels, dtype=np.int64).copy()
    centroids = np.asarray(centroids, dtype=np.float32).copy()
    k = centroids.shape[0]
    if x.shape[0] < k:
        raise ValueError(f"cannot fill {k} clusters with {x.shape[0]} points")
    sizes = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(sizes == 0)
    for e in empty:
        big = int(np.argmax(sizes))
        members = np.flatnonzero(labels == big)
        p = x[rng.choice(members)]
        offset = p - centroids[big]  # the split keeps m +/- offset's bisector: through m
        side = (x[members] - centroids[big]) @ offset > 0
        if side.all() or not side.any():
            side = np.all(x[members] == p, axis=1)
            side &= np.cumsum(side) == 1  # exactly one copy of p
        labels[members[side]] = e
        for c, idx in ((e, members[side]), (big, members[~side])):
            centroids[c] = x[idx].mean(axis=0)
            sizes[c] = idx.size
    return labels, centroids, int(empty.size)


def cluster_features(
    features: np.ndarray,
    k: int,
    *,
    pca_dim: int,
    seed: int = 0,
    max_iter: int = 20,
) -> Assignment:
    """The full DeepCluster assignment: whiten, normalise, k-means, re-seed empty clusters.

    Returns an :class:`Assignment` with no empty cluster.
    Raises ValueError when there are fewer feature rows than clusters.
    """
    n = int(np.shape(features)[0])
    if n < k:
        raise ValueError(f"cannot make {k} clusters of {n} images: give at least {k} images")
    points = preprocess_features(features, pca_dim)
    labels, centroids = kmeans(points, k, seed=seed, max_iter=max_iter)
    labels, centroids, reseeded = reseed_empty(
        points, labels, centroids, np.random.default_rng(seed)
    )
    return Assignment(labels=labels, centroids=centroids, reseeded=reseeded)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two assignments of the same images, in [0, 1]."""
    return float(normalized_mutual_info_score(a, b))


def _matrix(x: np.ndarray) -> np.ndarray:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2:
        raise ValueError(f"expected an (N >= 2, C) feature matrix, got shape {m.shape}")
    return m


@dataclass(frozen=True)
class PlaceClusters:
    """Clusters fitted on a sample of places: whitening (``mean``, ``project``), centroids
    (K, d) in the whitened, normalised space, and how many were re-seeded."""

    mean: np.ndarray
    project: np.ndarray
    centroids: np.ndarray
    sample_labels: np.ndarray
    reseeded: int

    def assign(self, features: np.ndarray) -> np.ndarray:
        """The nearest centroid of every place of (..., C) features: (...) int64 labels."""
        f = np.asarray(features, dtype=np.float32)
        flat = f.reshape(-1, f.shape[-1])
        out = np.empty(len(flat), dtype=np.int64)
        sq = (self.centroids.astype(np.float64) ** 2).sum(1)
        for start in range(0, len(flat), 65536):
            chunk = l2_normalise((flat[start : start + 65536] - self.mean) @ self.project)
            out[start : start + 65536] = np.argmax(2.0 * chunk @ self.centroids.T - sq, axis=1)
        return out.reshape(f.shape[:-1])


def fit_places(sample: np.ndarray, k: int, *, pca_dim: int, seed: int = 0,
               max_iter: int = 20) -> PlaceClusters:
    """Whitening, k-means and re-seeding fitted on (S, C) sampled place features.

    Raises ValueError for fewer places than clusters.
    """
    fit = _matrix(sample)
    if len(fit) < k:
        raise ValueError(f"cannot make {k} clusters of {len(fit)} places")
    mean = fit.mean(axis=0)
    d = min(pca_dim, fit.shape[1], len(fit) - 1)
    variances, vectors = np.linalg.eigh(np.cov(fit - mean, rowvar=False))
    order = np.argsort(variances)[::-1][:d]
    variances = np.clip(variances[order], 0.0, None)
    project = vectors[:, order] / np.sqrt(variances + _VARIANCE_FLOOR * variances[0] + _TINY)
    points = l2_normalise((fit - mean) @ project)
    labels, centroids = kmeans(points, k, seed=seed, max_iter=max_iter)
    labels, centroids, reseeded = reseed_empty(points, labels, centroids,
                                               np.random.default_rng(seed))
    return PlaceClusters(mean.astype(np.float32), project.astype(np.float32), centroids,
                         labels, reseeded)


def cluster_places(
    features: np.ndarray,
    k: int,
    *,
    pca_dim: int,
    sample: int,
    seed: int = 0,
    max_iter: int = 20,
) -> Assignment:
    """DeepCluster's assignment for every place of (N, h, w, C) dense features.

    The whitening and k-means are fitted on ``sample`` places drawn at random (all of them
    when there are fewer), empty clusters re-seeded there (:func:`fit_places`); then every
    place goes to its nearest centroid. Returns an :class:`Assignment` whose ``labels`` are
    (N, h, w). Raises ValueError for fewer places than clusters.
    """
    f = np.asarray(features, dtype=np.float32)
    flat = f.reshape(-1, f.shape[-1])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(flat), size=min(sample, len(flat)), replace=False)
    fitted = fit_places(flat[chosen], k, pca_dim=pca_dim, seed=seed, max_iter=max_iter)
    return Assignment(labels=fitted.assign(f), centroids=fitted.centroids,
                      reseeded=fitted.reseeded)

"""How unlike the training data an image is: a distance in the model's own feature space.

A classifier gives a probability for every input, a holiday photo included. To say when an
image is unlike anything the model was trained on, each image's pooled backbone features (the
global average of the backbone's last feature map, which the head sees) are compared with the
training split's: the score is the Mahalanobis distance to the nearest class mean, with one
covariance shared by the classes (Lee et al. 2018), shrunk towards a scaled identity
(Ledoit-Wolf) because there are usually fewer training images than feature dimensions.

The threshold is the :data:`DEFAULT_PERCENTILE` th percentile of the validation images'
scores: about 1 in 100 images like the training data is flagged, and anything beyond it is
reported as unlike the training data. The statistics are computed once, at the end of
training, and kept with the run (``ood.npz``); they are the only thing prediction needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_PERCENTILE = 99.0
#: training images the statistics are computed from, at most (a seeded sample of larger splits)
MAX_TRAIN_IMAGES = 5000


@dataclass(frozen=True)
class FeatureStats:
    """The training split's class means (k, d), the shared precision matrix (d, d) and the threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float
    n_train: int
    n_val: int

    def scores(self, features) -> np.ndarray:
        """Distance of each row of ``features`` (n, d) to the nearest class mean."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"features have {x.shape[1]} dimensions, the statistics {self.means.shape[1]}")
        best = np.full(x.shape[0], np.inf)
        for mean in self.means:
            diff = x - mean
            best = np.minimum(best, ((diff @ self.precision) * diff).sum(axis=1))  # diff P diff^T, row by row
        return np.sqrt(np.maximum(best, 0.0))

    def flagged(self, features) -> np.ndarray:
        return self.scores(features) > self.threshold

    def save(self, path: str | Path) -> None:
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(
            tmp,
            means=self.means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            threshold=self.threshold,
            percentile=self.percentile,
            n_train=self.n_train,
            n_val=self.n_val,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        with np.load(path) as found:
            return cls(
                means=found["means"].astype(np.float64),
                precision=found["precision"].astype(np.float64),
                threshold=float(found["threshold"]),
                percentile=float(found["percentile"]),
                n_train=int(found["n_train"]),
                n_val=int(found["n_val"]),
            )


def shrunk_covariance(centred) -> np.ndarray:
    """The Ledoit-Wolf shrunk covariance (d, d) of already centred rows ``centred`` (n, d):
    ``(1 - s) S + s mu I`` with ``S = X^T X / n``, ``mu = trace(S) / d`` and the shrinkage ``s`` of
    Ledoit and Wolf (2004), in the form scikit-learn's ``ledoit_wolf_shrinkage(assume_centered=True)``
    computes. One (d, d) product: the sum of ``(X**2)^T X**2``, which scikit-learn forms as a second
    product, is the sum of each row's squared norm squared."""
    x = np.asarray(centred, dtype=np.float64)
    n, d = x.shape
    cov = x.T @ x
    cov /= n
    if d == 1:
        return cov
    squared_norms = np.einsum("nd,nd->n", x, x)
    mu = np.trace(cov) / d
    delta_ = np.vdot(cov, cov)  # sum of the squared coefficients of X^T X, over n^2
    beta = (np.sum(squared_norms**2) / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * np.trace(cov) + d * mu**2) / d
    shrinkage = 0.0 if beta == 0 else min(beta, delta) / delta
    cov *= 1.0 - shrinkage  # in place: a (d, d) matrix is large for this machine's memory traffic
    cov.flat[:: d + 1] += shrinkage * mu
    return cov


def precision_of(covariance) -> np.ndarray:
    """The inverse of a symmetric covariance matrix: by Cholesky where it is positive definite (a
    shrunk covariance with any spread is), else the pseudo-inverse (features that never vary)."""
    from scipy import linalg

    covariance = np.asarray(covariance, dtype=np.float64)
    factor, info = linalg.lapack.dpotrf(covariance, lower=True, clean=False)
    if info == 0:
        inverse, info = linalg.lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info != 0:  # not positive definite
        return linalg.pinvh(covariance)
    inverse = np.tril(inverse)  # dpotri fills the lower triangle only
    inverse += np.tril(inverse, -1).T
    return inverse


def fit(train_features, train_labels, val_features, percentile: float = DEFAULT_PERCENTILE) -> FeatureStats:
    """Class means and shrunk shared covariance from the training split's features, the threshold from
    the validation split's scores. Classes absent from the training features are left out."""
    x = np.array(train_features, dtype=np.float64)  # a copy: centred in place below
    y = np.asarray(train_labels, dtype=int)
    if x.ndim != 2 or x.shape[0] != y.size or y.size < 2:
        raise ValueError(f"need (n >= 2, d) training features with n labels, got {x.shape} and {y.size}")
    classes, index = np.unique(y, return_inverse=True)
    members = np.zeros((len(classes), y.size))
    members[index, np.arange(y.size)] = 1.0
    means = (members @ x) / members.sum(axis=1, keepdims=True)
    for c in range(len(classes)):
        x[index == c] -= means[c]
    precision = precision_of(shrunk_covariance(x))
    provisional = FeatureStats(means, precision, np.inf, percentile, int(y.size), 0)
    val = np.asarray(val_features, dtype=np.float64)
    reference = provisional.scores(val) if len(val) else provisional.scores(x + means[index])
    return FeatureStats(
        means, precision, float(np.percentile(reference, percentile)), float(percentile), int(y.size), int(len(val))
    )


def summary(stats: FeatureStats, scores) -> dict:
    """The ``ood`` entry of metrics.json: how many of these images are beyond the threshold."""
    scores = np.asarray(scores, dtype=float)
    flagged = scores > stats.threshold
    return {
        "threshold": stats.threshold,
        "percentile": stats.percentile,
        "n": int(scores.size),
        "flagged": int(flagged.sum()),
        "fraction_flagged": float(flagged.mean()) if scores.size else None,
        "median_score": float(np.median(scores)) if scores.size else None,
    }

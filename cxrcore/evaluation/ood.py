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
            best = np.minimum(best, np.einsum("nd,de,ne->n", diff, self.precision, diff))
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


def fit(train_features, train_labels, val_features, percentile: float = DEFAULT_PERCENTILE) -> FeatureStats:
    """Class means and shrunk shared covariance from the training split's features, the threshold from
    the validation split's scores. Classes absent from the training features are left out."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels, dtype=int)
    if x.ndim != 2 or x.shape[0] != y.size or y.size < 2:
        raise ValueError(f"need (n >= 2, d) training features with n labels, got {x.shape} and {y.size}")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    provisional = FeatureStats(means, precision, np.inf, percentile, int(y.size), 0)
    val = np.asarray(val_features, dtype=np.float64)
    reference = provisional.scores(val) if len(val) else provisional.scores(x)
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

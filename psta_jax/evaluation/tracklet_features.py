"""Clip features to tracklet features: the mean of each tracklet's clips (the release's).

The release averages the BN-neck clip features of a tracklet before L2 normalisation (which
the cosine distance then applies).
"""

from __future__ import annotations

import numpy as np


def average_clip_features(
    features: np.ndarray, tracklet_ids: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean clip feature per tracklet, in ascending tracklet-id order (= split order).

    features (N, D), tracklet_ids (N,), mask (N,) bool or None -> ((M,) ids, (M, D) float32).
    Rows with a negative tracklet id (padding) are dropped even without mask.
    """
    features = np.asarray(features, np.float32)
    tracklet_ids = np.asarray(tracklet_ids)
    if features.ndim != 2 or tracklet_ids.shape != features.shape[:1]:
        raise ValueError(
            f"expected features (N, D) and tracklet_ids (N,), got {features.shape} and "
            f"{tracklet_ids.shape}"
        )
    if mask is not None:
        mask = np.asarray(mask, bool)
        features, tracklet_ids = features[mask], tracklet_ids[mask]
    keep = tracklet_ids >= 0
    features, tracklet_ids = features[keep], tracklet_ids[keep]
    ids, inverse, counts = np.unique(tracklet_ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), features.shape[1]), np.float64)
    np.add.at(sums, inverse, features)
    return ids, (sums / counts[:, None]).astype(np.float32)

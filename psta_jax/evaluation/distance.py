"""Query x gallery distance matrices from embeddings, NumPy float32, chunked over queries."""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")

_NORMALISE_EPS = 1e-12
_CHUNK_ROWS = 1024


def validate_features(name: str, features: np.ndarray) -> np.ndarray:
    """(N, D) finite float32 features, or a ValueError naming `name`."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"{name}: expected shape (num_items, feature_dim), got {features.shape}")
    if features.shape[0] == 0:
        raise ValueError(f"{name}: is empty (0 items)")
    if features.shape[1] == 0:
        raise ValueError(f"{name}: has feature_dim 0")
    features = features.astype(np.float32, copy=False)
    if not np.all(np.isfinite(features)):
        first = int(np.argwhere(~np.isfinite(features))[0, 0])
        raise ValueError(f"{name}: contains NaN or infinite values (first in item {first})")
    return features


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, _NORMALISE_EPS)


def pairwise_distance(
    query_features: np.ndarray, gallery_features: np.ndarray, metric: Metric = "cosine"
) -> np.ndarray:
    """(num_query, num_gallery) float32 distances, smaller = more similar.

    'cosine': -(q̂ · ĝ) with L2-normalised rows, in [-1, 1] (the release's test distance).
    'euclidean': the SQUARED Euclidean distance |q - g|^2, clamped at 0 (torchreid's default);
    it ranks exactly as the Euclidean distance does.

    Args:
      query_features: (num_query, D).
      gallery_features: (num_gallery, D).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    query = validate_features("query_features", query_features)
    gallery = validate_features("gallery_features", gallery_features)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_features and gallery_features have different feature dims: "
            f"{query.shape[1]} vs {gallery.shape[1]}"
        )
    if metric == "cosine":
        query, gallery = l2_normalise(query), l2_normalise(gallery)
    else:
        gallery_sq = np.sum(gallery * gallery, axis=1)
    out = np.empty((query.shape[0], gallery.shape[0]), np.float32)
    for start in range(0, query.shape[0], _CHUNK_ROWS):
        block = query[start : start + _CHUNK_ROWS]
        dots = out[start : start + block.shape[0]]
        np.matmul(block, gallery.T, out=dots)
        if metric == "cosine":
            np.negative(dots, out=dots)
        else:
            dots *= -2.0
            dots += np.sum(block * block, axis=1, keepdims=True)
            dots += gallery_sq[None, :]
            np.maximum(dots, 0.0, out=dots)
    return out


REPORTED_AS = {"cosine": "1 - cosine similarity", "euclidean": "squared Euclidean distance"}


def reported_distance(distances: np.ndarray | float, metric: Metric) -> np.ndarray | float:
    """Distances as lists and figures print them (`REPORTED_AS`): cosine as 1 - cos, in
    [0, 2] (`pairwise_distance` ranks by -cos, the release's, which reads as a negative
    distance), squared Euclidean as is. The ranking is the same."""
    return distances + 1.0 if metric == "cosine" else distances

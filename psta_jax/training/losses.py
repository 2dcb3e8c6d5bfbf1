"""The release's training loss: label-smoothed cross-entropy plus batch-hard triplet.

PSTA supervises every pyramid level (deep supervision): with one (logits, BN feature) pair
per head, loss = mean_k CE_ls(logits_k) + mean_k Triplet(features_k), weights 1 : 1.
Everything is computed in at least float32 (bfloat16 activations included; float64 inputs
stay float64, for the float64 parity tests).
All functions are pure jnp, so they jit, grad and shard like any other array code; shape
checks are static and raise ValueError at trace time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp

Distance = Literal["cosine", "euclidean"]
DISTANCES: tuple[str, ...] = ("cosine", "euclidean")

# The release clamps squared distances at 1e-12 before the square root; the clamp also makes
# the gradient finite (zero) for duplicate features.
_MIN_SQUARED_DISTANCE = 1e-12
_NORMALISE_EPS = 1e-12


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _check_labels(labels: jax.Array) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels: expected shape (B,), got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels: expected an integer dtype, got {labels.dtype}")


def _check_matrix(name: str, array: jax.Array, batch: int) -> None:
    if array.ndim != 2 or array.shape[0] != batch:
        raise ValueError(
            f"{name}: expected shape (B, N) with B = {batch} (the number of labels), "
            f"got {array.shape}"
        )


def cross_entropy_label_smooth(
    logits: jax.Array, labels: jax.Array, *, num_classes: int, epsilon: float = 0.1
) -> jax.Array:
    """Cross-entropy against (1 - eps) * onehot + eps / num_classes, averaged over the batch.

    Args:
      logits: (B, num_classes).
      labels: (B,) integer class ids in [0, num_classes).
    Returns:
      A scalar, float32 (float64 for float64 inputs).
    """
    _check_labels(labels)
    _check_matrix("logits", logits, labels.shape[0])
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits: expected {num_classes} classes (num_classes) in the last axis, "
            f"got shape {logits.shape}"
        )
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon (label smoothing) must be in [0, 1), got {epsilon}")
    dtype = _compute_dtype(logits)
    log_probs = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    # The release builds the smoothed targets in float32 (torch.zeros' default dtype) even
    # for float64 logits: so do we, which keeps float64 runs equal to its float64 run.
    targets = (1.0 - epsilon) * jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    targets = (targets + epsilon / num_classes).astype(dtype)
    return jnp.mean(jnp.sum(-targets * log_probs, axis=-1))


def pairwise_distance(features: jax.Array, *, distance: Distance = "cosine") -> jax.Array:
    """All-pairs distances within one batch, at least float32.

    'cosine': -(x̂ · ŷ) with L2-normalised rows (the release's --triplet_distance cosine);
    'euclidean': sqrt(max(|x - y|^2, 1e-12)), as the release (the clamp keeps the gradient
    finite for duplicate features).

    Args:
      features: (B, D).
    Returns:
      (B, B) distances.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if features.ndim != 2:
        raise ValueError(f"features: expected shape (B, D), got {features.shape}")
    x = features.astype(_compute_dtype(features))
    if distance == "cosine":
        norms = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        x = x / jnp.maximum(norms, _NORMALISE_EPS)
        return -(x @ x.T)
    squared_norms = jnp.sum(x * x, axis=-1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (x @ x.T)
    return jnp.sqrt(jnp.maximum(squared, _MIN_SQUARED_DISTANCE))


def batch_hard_triplet(
    features: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.3,
    distance: Distance = "cosine",
) -> jax.Array:
    """Batch-hard triplet loss over the whole batch, mean(max(0, d_ap - d_an + margin)).

    Per anchor: hardest positive = max distance over items with the same label (the anchor
    itself included, as in the release), hardest negative = min over items with another
    label. An anchor with no negative in the batch contributes 0.

    Args:
      features: (B, D).
      labels: (B,) integer labels.
    Returns:
      A scalar, float32 (float64 for float64 inputs).
    """
    _check_labels(labels)
    _check_matrix("features", features, labels.shape[0])
    dist = pairwise_distance(features, distance=distance)
    same = labels[:, None] == labels[None, :]
    hardest_positive = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
    hardest_negative = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
    return jnp.mean(jax.nn.relu(hardest_positive - hardest_negative + margin))


def _as_heads(name: str, value: jax.Array | Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    heads = (value,) if hasattr(value, "ndim") else tuple(value)
    if not heads:
        raise ValueError(f"{name}: expected at least one head, got an empty sequence")
    return heads


def psta_loss(
    logits: jax.Array | Sequence[jax.Array],
    features: jax.Array | Sequence[jax.Array],
    labels: jax.Array,
    *,
    num_classes: int,
    label_smoothing: float = 0.1,
    margin: float = 0.3,
    distance: Distance = "cosine",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The release's deep-supervised loss: mean_k CE_ls(logits_k) + mean_k Triplet(features_k).

    Args:
      logits: one (B, num_classes) array per head (a tuple), or a single array.
      features: one (B, D) array per head (the BN-neck outputs), or a single array.
      labels: (B,) dense integer labels.
    Returns:
      (total, {'ce': mean CE, 'triplet': mean triplet}), scalars (float32, or float64
      for float64 inputs).
    """
    logit_heads = _as_heads("logits", logits)
    feature_heads = _as_heads("features", features)
    if len(logit_heads) != len(feature_heads):
        raise ValueError(
            f"expected one feature array per logits array, got {len(logit_heads)} logits "
            f"and {len(feature_heads)} features"
        )
    ce = jnp.mean(
        jnp.stack(
            [
                cross_entropy_label_smooth(
                    head, labels, num_classes=num_classes, epsilon=label_smoothing
                )
                for head in logit_heads
            ]
        )
    )
    triplet = jnp.mean(
        jnp.stack(
            [
                batch_hard_triplet(head, labels, margin=margin, distance=distance)
                for head in feature_heads
            ]
        )
    )
    return ce + triplet, {"ce": ce, "triplet": triplet}


def bound_psta_loss(
    num_classes: int,
    *,
    label_smoothing: float = 0.1,
    margin: float = 0.3,
    triplet_distance: Distance = "cosine",
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """`psta_loss` with its options bound: f(logits, features, labels) -> (total, parts), what
    the train step calls. The keyword arguments are the fields of `config.loss`."""
    return functools.partial(
        psta_loss,
        num_classes=num_classes,
        label_smoothing=label_smoothing,
        margin=margin,
        distance=triplet_distance,
    )

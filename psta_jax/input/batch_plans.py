"""What each training batch holds, as a pure NumPy function of (seed, step).

`train_batch_plan` draws a global batch's identities, tracklets, frame indices, flip flags
and erasing rectangles. Restarting at step N therefore yields batch N again, and every
process of a multi-host run computes the same global plan and keeps its slice of it.

Batches follow the release's `RandomIdentitySampler`: an epoch visits every identity once in
a random order, K tracklets each (distinct when the identity has at least K, with
replacement only when it has fewer), grouped P identities per batch with the remainder
dropped (steps_per_epoch = num_identities // P; MARS: 625 // 8 = 78). Labels are the dense
relabelling 0..num_ids-1 of the *sorted* raw pids (the release uses `enumerate(set(pids))`,
whose order is an implementation detail of Python sets).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from psta_jax.input import samplers
from psta_jax.input.preprocess import TrainPipelineConfig
from psta_jax.runtime.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class IdentityIndex:
    """Training tracklets grouped by dense label.

    labels: (N,) int32, dense relabelling of the sorted raw pids.
    label_pids: (num_identities,) int64, the raw pid of each label.
    tracklets_by_label: tracklet positions of each label, ascending.
    """

    labels: np.ndarray
    label_pids: np.ndarray
    tracklets_by_label: tuple[np.ndarray, ...]

    @property
    def num_identities(self) -> int:
        return len(self.label_pids)


def build_identity_index(pids: np.ndarray) -> IdentityIndex:
    label_pids, labels = np.unique(np.asarray(pids), return_inverse=True)
    order = np.argsort(labels, kind="stable")
    splits = np.cumsum(np.bincount(labels, minlength=len(label_pids)))[:-1]
    return IdentityIndex(
        labels.astype(np.int32), label_pids.astype(np.int64), tuple(np.split(order, splits))
    )


def num_identities(pids: np.ndarray) -> int:
    """The classes of a training split: its distinct pids (`build_identity_index`'s labels)."""
    return len(np.unique(np.asarray(pids)))


def steps_per_epoch(num_identities: int, identities_per_batch: int) -> int:
    """Batches of P identities in an epoch (every identity once, the remainder dropped)."""
    steps = num_identities // identities_per_batch
    if steps < 1:
        raise ConfigError(
            f"the training split has {num_identities} identities, fewer than the "
            f"{identities_per_batch} of one batch (config.batch.identities)"
        )
    return steps


def draw_erasing_boxes(
    rng: np.random.Generator, count: int, height: int, width: int, config: TrainPipelineConfig
) -> np.ndarray:
    """The release's RandomErasing rectangle for ``count`` clips: (count, 4) int32.

    Rows are (top, left, h, w); h = w = 0 means no erasing. Per clip: erase with probability
    erasing_prob; up to erasing_max_tries candidates with area U(area range) * H * W and
    aspect r = U(min, 1 / min), h = round(sqrt(area r)), w = round(sqrt(area / r)); the first
    with w < W and h < H wins, placed uniformly (top in 0..H-h, left in 0..W-w).
    """
    tries = config.erasing_max_tries
    apply = rng.random(count) < config.erasing_prob
    area = rng.uniform(*config.erasing_area, size=(count, tries)) * height * width
    aspect = rng.uniform(
        config.erasing_min_aspect, 1 / config.erasing_min_aspect, size=(count, tries)
    )
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w < width) & (h < height)
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    h, w = h[rows, first], w[rows, first]
    keep = apply & fits.any(axis=1)
    h, w = np.where(keep, h, 0), np.where(keep, w, 0)
    top = rng.integers(0, height - h + 1)
    left = rng.integers(0, width - w + 1)
    return np.stack([top, left, h, w], axis=1).astype(np.int32)


def train_batch_plan(
    index: IdentityIndex,
    num_frames: np.ndarray,
    config: TrainPipelineConfig,
    seed: int,
    step: int,
) -> dict[str, np.ndarray]:
    """What global training batch ``step`` holds; a pure function of (seed, step).

    Returns tracklets (B,) int64 positions in the split, frames (B, T) int64 indices within
    each tracklet, labels (B,) int32, flip (B,) bool, erase (B, 4) int32 (see
    draw_erasing_boxes), B = P * K, clips ordered identity by identity (K consecutive clips).
    Flip and erasing are drawn even when switched off (then forced off), so switching an
    augmentation does not change the other draws.
    """
    p, k = config.identities_per_batch, config.instances_per_identity
    epoch_steps = steps_per_epoch(index.num_identities, p)
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    epoch, position = divmod(step, epoch_steps)
    identity_order = np.random.default_rng([seed, 0, epoch]).permutation(index.num_identities)
    batch_labels = identity_order[position * p : (position + 1) * p]
    rng = np.random.default_rng([seed, 1, step])
    tracklets = np.concatenate(
        [
            rng.choice(
                index.tracklets_by_label[label],
                size=k,
                replace=len(index.tracklets_by_label[label]) < k,
            )
            for label in batch_labels
        ]
    ).astype(np.int64)
    sampler = samplers.train_sampler(config.sampler)
    frames = np.stack([sampler(int(num_frames[t]), config.seq_len, rng) for t in tracklets])
    flip = (rng.random(p * k) < config.flip_prob) & config.flip
    erase = draw_erasing_boxes(rng, p * k, *config.image_size, config)
    erase = erase * np.int32(config.erasing)
    return dict(
        tracklets=tracklets,
        frames=frames,
        labels=index.labels[tracklets],
        flip=flip,
        erase=erase,
    )

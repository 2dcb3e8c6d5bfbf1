"""Tiny in-memory splits with the dataset contract's features, for the input tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from psta_jax import datasets
from psta_jax.input import preprocess

T = 4
SIZE = (8, 4)  # (H, W) of the stored frames and of the clips: nothing is resized
SIGNATURE = dict(
    frames=tf.TensorSpec([None], tf.string),
    pid=tf.TensorSpec([], tf.int64),
    camid=tf.TensorSpec([], tf.int64),
    tracklet_id=tf.TensorSpec([], tf.int64),
    num_frames=tf.TensorSpec([], tf.int64),
)

# pid, camid, length; pid 50 has 1 tracklet (< K), pid 20 has 5, identities unsorted.
LAYOUT = [
    (30, 0, 9),
    (30, 1, 3),
    (20, 0, 17),
    (20, 1, 12),
    (20, 0, 5),
    (20, 1, 8),
    (20, 0, 30),
    (50, 1, 1),
    (10, 0, 7),
    (10, 1, 25),
    (40, 0, 4),
    (40, 1, 6),
]


def encode(image: np.ndarray, fmt: str) -> bytes:
    image = tf.constant(image, tf.uint8)
    return (tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image)).numpy()


def examples(tracklets, fmt: str = "png") -> tf.data.Dataset:
    """A split as TFDS yields it; tracklets: list of (pid, camid, frames (L, H, W, 3) uint8)."""
    rows = [
        dict(
            frames=np.array([encode(f, fmt) for f in frames], dtype=object),
            pid=np.int64(pid),
            camid=np.int64(camid),
            tracklet_id=np.int64(i),
            num_frames=np.int64(len(frames)),
        )
        for i, (pid, camid, frames) in enumerate(tracklets)
    ]
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=SIGNATURE)


def store(tracklets, fmt: str = "png") -> datasets.TrackletStore:
    return datasets.load_tracklets(examples(tracklets, fmt))


def index_frames(length: int, tracklet: int) -> np.ndarray:
    """Solid frames whose red channel is 8 * frame index and green 8 * tracklet position."""
    frames = np.zeros((length, *SIZE, 3), np.uint8)
    frames[..., 0] = 8 * np.arange(length)[:, None, None]
    frames[..., 1] = 8 * tracklet
    return frames


def index_store() -> datasets.TrackletStore:
    return store([(pid, cam, index_frames(n, i)) for i, (pid, cam, n) in enumerate(LAYOUT)])


def train_config(**overrides) -> preprocess.TrainPipelineConfig:
    values = dict(
        identities_per_batch=2,
        instances_per_identity=2,
        seq_len=T,
        image_size=SIZE,
        num_parallel_calls=2,
    )
    values.update(overrides)
    return preprocess.TrainPipelineConfig(**values)


def finished(batch: dict, config: preprocess.ImageConfig) -> np.ndarray:
    """A batch's uint8 clips as the steps see them (flipped, normalised, erased)."""
    return np.asarray(
        preprocess.finish_clips(
            batch["clips"], batch.get("erase"), batch.get("flip"), config=config
        )
    )

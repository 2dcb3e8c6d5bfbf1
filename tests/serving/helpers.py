"""Tracklet folders and embedding files for the serving tests."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from psta_jax.serving.embedding_file import CheckpointIdentity, Embeddings

IDENTITY = CheckpointIdentity(config_hash="0123456789abcdef", step=7, path="/ckpt")


def write_tracklet(folder: pathlib.Path, frames: np.ndarray, suffix: str = ".png") -> None:
    """frames (L, H, W, 3) uint8 as frame_000.png, frame_001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index:03d}{suffix}")


def random_frames(rng: np.random.Generator, count: int, size=(32, 16)) -> np.ndarray:
    return rng.integers(0, 256, (count, *size, 3), dtype=np.uint8)


def labelled_embeddings(
    rng: np.random.Generator,
    pids,
    camids,
    *,
    dim: int = 8,
    source: dict | None = None,
    names=None,
    **fields,
) -> Embeddings:
    """Embeddings clustered by pid (so rankings are meaningful), with labels."""
    pids = np.asarray(pids, np.int64)
    centres = {int(p): rng.standard_normal(dim) for p in np.unique(pids)}
    features = np.stack([centres[int(p)] + 0.8 * rng.standard_normal(dim) for p in pids])
    names = (
        names
        if names is not None
        else [f"{p}_{c}_{i}" for i, (p, c) in enumerate(zip(pids, camids, strict=True))]
    )
    return Embeddings(
        embeddings=features.astype(np.float32),
        names=names,
        num_frames=np.full(len(pids), 5),
        checkpoint=IDENTITY,
        pids=pids,
        camids=np.asarray(camids, np.int64),
        source=source or {},
        **fields,
    )

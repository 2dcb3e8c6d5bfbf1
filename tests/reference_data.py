"""The release's reference outputs (tests/reference/) and the inputs they were computed on.

tests/reference/ holds what the authors' PyTorch release computed (see its README.md for
every key) and the release's state_dict layout. The weights and clips those outputs were
computed on are rebuilt here, deterministically, from the same seeds:

- `release_state_dict(seed)`: one array per layout entry, drawn in layout order from
  `np.random.default_rng(seed)`: conv weights N(0, (0.7 sqrt(2 / fan_in))^2), Linear
  weights N(0, 0.05^2) and biases N(0, 0.01^2), BatchNorm scales U[0.5, 1], biases
  N(0, 0.05^2), running means N(0, 0.05^2), running variances U[0.5, 1.5]; float32.
- `noise_clips(seed, batch)`: N(0, 1) clips.
- `person_clips(seed, num_ids, per_id)`: person-like clips (a body with per-identity
  clothing colours, stripes and build over a per-tracklet textured background, lighting,
  position and drift; pixel noise per frame), ImageNet-normalised.

Clips come in our layout (B, T, H, W, 3). Everything is float32, as the release drew it;
its float64 run used the same float32 values.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import numpy as np

REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "reference"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@functools.cache
def load(name: str) -> dict[str, np.ndarray]:
    """A reference file of tests/reference/ (e.g. 'rerank_dev_seed5') as a dict."""
    with np.load(REFERENCE_DIR / f"{name}.npz") as data:
        return dict(data)


@functools.cache
def release_layout_file() -> dict[str, Any]:
    """psta_official_layout.json: `entries`, `total_trainable_params`,
    `trainable_params_by_module`, ..."""
    return json.loads((REFERENCE_DIR / "psta_official_layout.json").read_text())


def release_layout() -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    """The release's state_dict entries in order: (name, shape, trainable)."""
    return tuple(
        (e["name"], tuple(e["shape"]), bool(e.get("trainable", False)))
        for e in release_layout_file()["entries"]
    )


def _draw(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], linear_modules: set[str]
) -> np.ndarray | None:
    module, _, leaf = name.rpartition(".")
    if leaf == "num_batches_tracked":
        return None  # no draw
    if leaf == "running_mean":
        return rng.normal(0.0, 0.05, shape)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape)
    if leaf == "weight" and len(shape) >= 3:  # conv (out, in, kh, kw) or Conv1d (out, in, 1)
        return rng.normal(0.0, 0.7 * np.sqrt(2.0 / np.prod(shape[1:])), shape)
    if leaf == "weight" and len(shape) == 2:  # Linear
        return rng.normal(0.0, 0.05, shape)
    if leaf == "weight":  # BatchNorm scale
        return rng.uniform(0.5, 1.0, shape)
    if leaf == "bias" and module in linear_modules:
        return rng.normal(0.0, 0.01, shape)
    if leaf == "bias":  # BatchNorm bias
        return rng.normal(0.0, 0.05, shape)
    raise ValueError(f"no weight rule for state_dict entry {name!r}")


def release_state_dict(seed: int) -> dict[str, np.ndarray]:
    """The deterministic stand-in release weights of the reference files (PyTorch layout)."""
    layout = release_layout()
    linear_modules = {
        name.rpartition(".")[0]
        for name, shape, _ in layout
        if name.endswith(".weight") and len(shape) == 2
    }
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape, _ in layout:
        value = _draw(rng, name, shape, linear_modules)
        state[name] = np.zeros(shape, np.int64) if value is None else np.asarray(value, np.float32)
    return state


def noise_clips(
    seed: int, batch: int, seq_len: int = 8, size: tuple[int, int] = (256, 128)
) -> np.ndarray:
    """(batch, seq_len, H, W, 3) float32 N(0, 1) clips (drawn in PyTorch's NCHW order)."""
    rng = np.random.default_rng(seed)
    clips = rng.standard_normal((batch, seq_len, 3, *size)).astype(np.float32)
    return clips.transpose(0, 1, 3, 4, 2)


def labels(num_ids: int, per_id: int) -> np.ndarray:
    """P x K labels: identity i for rows i * per_id ... (i + 1) * per_id - 1."""
    return np.repeat(np.arange(num_ids), per_id)


def _person_frames(
    rng: np.random.Generator,
    identity: dict[str, Any],
    seq_len: int,
    grid: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """One tracklet: (seq_len, 3, H, W) float32 in [0, 1]."""
    yy, xx = grid
    background = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    wave = rng.uniform(1.0, 4.0, 2)
    light = rng.uniform(0.7, 1.3)
    x_offset = rng.uniform(-0.1, 0.1)
    y_offset = rng.uniform(-0.05, 0.05)
    drift = rng.uniform(-0.01, 0.01, 2)
    # The scene without the person is the same in every frame.
    texture = 0.5 + 0.5 * np.sin(2 * np.pi * (wave[0] * xx + wave[1] * yy))
    scene = background[:, None, None] * (0.6 + 0.4 * texture)[None]
    stripes = 0.75 + 0.25 * np.sin(2 * np.pi * identity["stripes"] * yy)
    shirt = identity["top"][:, None, None] * stripes[None]
    frames = np.empty((seq_len, 3, *xx.shape), np.float32)
    half_width = identity["half_width"]
    for t in range(seq_len):
        cx = 0.5 + x_offset + drift[0] * t
        cy = y_offset + drift[1] * t
        dx = xx - cx
        torso = (np.abs(dx) < half_width) & (yy > cy + 0.2) & (yy < cy + 0.55)
        lower = (np.abs(dx) < 0.8 * half_width) & (yy >= cy + 0.55) & (yy < cy + 0.95)
        head = dx**2 / 0.01 + (yy - cy - 0.12) ** 2 / 0.004 < 1.0
        image = np.where(torso[None], shirt, scene)
        image = np.where(lower[None], identity["legs"][:, None, None], image)
        image = np.where(head[None], identity["skin"][:, None, None], image)
        noisy = image * light + rng.normal(0.0, 0.03, image.shape)
        frames[t] = np.clip(noisy, 0.0, 1.0)
    return frames


def person_clips(
    seed: int, num_ids: int, per_id: int, seq_len: int = 8, size: tuple[int, int] = (256, 128)
) -> np.ndarray:
    """(num_ids * per_id, seq_len, H, W, 3) float32 person-like clips, ImageNet-normalised;
    identity i owns rows i * per_id ... (labels: `labels(num_ids, per_id)`)."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    grid = (rows / np.float32(height), cols / np.float32(width))
    clips = []
    for _ in range(num_ids):
        top, legs, skin = rng.uniform(0.0, 1.0, (3, 3)).astype(np.float32)
        identity = dict(
            top=top,
            legs=legs,
            skin=skin,
            stripes=rng.uniform(4.0, 16.0),
            half_width=rng.uniform(0.18, 0.3),
        )
        for _ in range(per_id):
            frames = _person_frames(rng, identity, seq_len, grid)
            clips.append((frames - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None])
    return np.stack(clips).transpose(0, 1, 3, 4, 2)

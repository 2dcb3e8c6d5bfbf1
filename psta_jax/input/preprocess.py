"""What a clip is and how the device finishes it: the pipeline configs and `finish_clips`.

The host's tf.data pipeline (`input.pipeline`) stops at uint8 clips, resized to the model's
size (4x fewer bytes than float32 through the host and the transfer); the augmentation it
drew (`input.batch_plans`: flip flags, erasing rectangles) rides along with each batch, and
`finish_clips` flips, normalises and erases inside the jitted step. Free of TensorFlow, so
programs that only compute on clips (the steps, the benchmarks) import no tf.data.

The release's augmentation: resize (bicubic for training, bilinear for evaluation, PIL's
antialiased kernels) -> horizontal flip of the whole clip (p = 0.5) -> scale to [0, 1] ->
ImageNet normalisation -> random erasing with one rectangle for every frame of the clip,
filled *after* normalisation with the raw constants (0.485, 0.456, 0.406).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from psta_jax.input import samplers
from psta_jax.runtime.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTOTUNE = -1  # tf.data.AUTOTUNE: tf.data picks the parallelism

# (uint8 clips (B, T, H, W, 3), erase (B, 4) or None, flip (B,) or None) -> model input.
PrepareClips = Callable[[jax.Array, jax.Array | None, jax.Array | None], jax.Array]


def compute_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a config's ``dtype`` ("float32", "bfloat16", jnp.bfloat16, ...)."""
    try:
        return jnp.dtype(dtype)
    except TypeError as error:
        raise ConfigError(
            f"not a dtype: {dtype!r} (config.model.dtype; expected e.g. 'float32' or 'bfloat16')"
        ) from error


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Fields shared by training and evaluation."""

    seq_len: int = 8
    image_size: tuple[int, int] = (256, 128)  # (H, W)
    antialias: bool = True
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dtype: Any = "float32"  # what finish_clips hands the model (the compute dtype)
    num_parallel_calls: int = AUTOTUNE
    prefetch: int = 2

    def _validate(self) -> None:
        name = type(self).__name__
        if self.seq_len < 1:
            raise ConfigError(
                f"{name}.seq_len (config.model.seq_len) must be >= 1, got {self.seq_len}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(
                f"{name}.image_size (config.model.image_size) must be (H, W) with "
                f"positive entries, got {self.image_size}"
            )
        compute_dtype(self.dtype)


@dataclasses.dataclass(frozen=True)
class TrainPipelineConfig(ImageConfig):
    """Training input: P x K identity batches, ``sampler`` in samplers.TRAIN_SAMPLERS."""

    identities_per_batch: int = 8  # P
    instances_per_identity: int = 4  # K
    sampler: str = "rrs"  # the paper's RRS; the release trains with "random_interval"
    resize_method: str = "bicubic"
    flip: bool = True
    flip_prob: float = 0.5
    erasing: bool = True
    erasing_prob: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)  # fraction of H * W, uniform
    erasing_min_aspect: float = 0.3  # aspect h / w uniform in [min, 1 / min]
    erasing_max_tries: int = 100
    erasing_fill: tuple[float, float, float] = IMAGENET_MEAN  # written after normalisation
    # Decode and resize every training frame once, into host memory, when they take at most
    # this many GiB there (0: decode the sampled frames at every step; input.pipeline).
    cache_decoded_gb: float = 0.0

    def __post_init__(self):
        self._validate()
        if self.sampler not in samplers.TRAIN_SAMPLERS:
            raise ConfigError(
                f"unknown training frame sampler {self.sampler!r} "
                f"(config.input.train_sampler); expected one of "
                f"{samplers.TRAIN_SAMPLERS}"
            )
        if self.identities_per_batch < 1 or self.instances_per_identity < 1:
            raise ConfigError(
                "config.batch.identities (P) and config.batch.instances (K) must be >= 1, got "
                f"{self.identities_per_batch} x {self.instances_per_identity}"
            )
        if not 0.0 <= self.erasing_prob <= 1.0:
            raise ConfigError(
                f"config.input.erasing_prob must be in [0, 1], got {self.erasing_prob}"
            )

    @property
    def global_batch_size(self) -> int:
        return self.identities_per_batch * self.instances_per_identity


@dataclasses.dataclass(frozen=True)
class EvalPipelineConfig(ImageConfig):
    """Evaluation input: every tracklet cut into clips by ``sampler`` (samplers.EVAL_SAMPLERS)."""

    sampler: str = "rrs"  # the release tests MARS with "begin_interval", Duke with "dense"
    resize_method: str = "bilinear"
    dense_max_clips: int | None = samplers.DENSE_MAX_CLIPS
    seed: int = 0  # chooses the kept run of clips when dense exceeds dense_max_clips

    def __post_init__(self):
        self._validate()
        if self.sampler not in samplers.EVAL_SAMPLERS:
            raise ConfigError(
                f"unknown evaluation frame sampler {self.sampler!r} "
                f"(config.input.test_sampler); expected one of "
                f"{samplers.EVAL_SAMPLERS}"
            )


def normalization(config: ImageConfig) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), (3,) float32: x_uint8 * scale + offset = (x / 255 - mean) / std."""
    mean = np.asarray(config.mean if config.normalize else (0.0, 0.0, 0.0), np.float32)
    std = np.asarray(config.std if config.normalize else (1.0, 1.0, 1.0), np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def finish_clips(
    clips: jax.Array,
    erase: jax.Array | None = None,
    flip: jax.Array | None = None,
    *,
    config: ImageConfig,
) -> jax.Array:
    """Flip, normalise and erase uint8 clips, in jax.numpy (inside the jitted steps).

    clips (B, T, H, W, 3) uint8, erase (B, 4) int32 (top, left, h, w; h = 0: none) or None,
    flip (B,) bool or None (evaluation batches: None) -> (B, T, H, W, 3) ``config.dtype``.
    """
    chex.assert_rank(clips, 5)
    chex.assert_axis_dimension(clips, -1, 3)
    if flip is not None:
        clips = jnp.where(jnp.asarray(flip)[:, None, None, None, None], clips[:, :, :, ::-1], clips)
    if erase is None:
        erase = jnp.zeros((clips.shape[0], 4), jnp.int32)
    height, width = clips.shape[2:4]
    scale, offset = normalization(config)
    out = clips.astype(jnp.float32) * scale + offset
    top, left, h, w = (jnp.asarray(erase)[:, i, None] for i in range(4))
    rows, cols = jnp.arange(height)[None, :], jnp.arange(width)[None, :]
    in_rows = (rows >= top) & (rows < top + h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + w)  # (B, W)
    inside = in_rows[:, None, :, None, None] & in_cols[:, None, None, :, None]
    fill = jnp.asarray(getattr(config, "erasing_fill", IMAGENET_MEAN), jnp.float32)
    return jnp.where(inside, fill, out).astype(compute_dtype(config.dtype))


def clip_preparation(config: ImageConfig) -> PrepareClips:
    """`finish_clips` bound to a pipeline config: what the steps call on a batch's clips."""
    return functools.partial(finish_clips, config=config)

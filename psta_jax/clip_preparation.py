"""What the input pipeline hands the device: pipeline configs and device-side clip finishing.

The contract between the host's tf.data pipeline (`psta_jax.input_pipeline`, with the image
work in `psta_jax.augment`) and the jitted steps (`psta_jax.steps`), free of TensorFlow so
that programs which only compute on clips (the steps, benchmarks on accelerator hosts)
import no tf.data:

* `TrainPipelineConfig` / `EvalPipelineConfig`: clip length and size, dtype, the
  augmentation switches and the samplers, built from a run's config by
  `train_pipeline_config` / `eval_pipeline_config`.
* `finish_clips`: the host path's last steps (flip, ImageNet normalisation, random erasing)
  in jax.numpy, for ``uint8_clips`` batches finished inside the jitted step;
  `prepare_train_clips` / `prepare_eval_clips` bind it to a run's config (a
  `steps.PrepareClips`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psta_jax import sampling
from psta_jax.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTOTUNE = -1  # tf.data.AUTOTUNE: tf.data picks the parallelism


def compute_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a config's ``dtype`` ("float32", "bfloat16", jnp.bfloat16, ...)."""
    try:
        return jnp.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"not a dtype: {dtype!r} (expected e.g. 'float32' or 'bfloat16')"
                        ) from error


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Fields shared by training and evaluation."""

    seq_len: int = 8
    image_size: tuple[int, int] = (256, 128)  # (H, W)
    antialias: bool = True
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # A NumPy/JAX dtype or its name ("bfloat16", jnp.bfloat16); the host path also needs
    # tf.as_dtype to know it (float32, bfloat16, float16 do).
    dtype: Any = "float32"
    num_parallel_calls: int = AUTOTUNE
    prefetch: int = 2
    # True: the host stops after resizing; ``clips`` are uint8, training batches also carry
    # ``flip`` (B,) and ``erase`` (B, 4), and ``finish_clips`` (jnp, in the jitted
    # step) gives exactly the host path's clips. A quarter of the host work and transfer.
    uint8_clips: bool = False

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None, **overrides: Any):
        """Builds the config from a dict / ml_collections.ConfigDict; unknown keys are errors."""
        values = dict(mapping.to_dict() if hasattr(mapping, "to_dict") else (mapping or {}))
        values.update(overrides)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; expected some of "
                             f"{sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def _validate(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"{type(self).__name__}.seq_len must be >= 1, got {self.seq_len}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"{type(self).__name__}.image_size must be (H, W) with positive "
                             f"entries, got {self.image_size}")
        compute_dtype(self.dtype)  # raises a TypeError naming the bad dtype


@dataclasses.dataclass(frozen=True)
class TrainPipelineConfig(ImageConfig):
    """Training pipeline: P x K identity batches, ``sampler`` in sampling.TRAIN_SAMPLERS."""

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

    def __post_init__(self):
        self._validate()
        sampling.train_sampler(self.sampler)
        if self.identities_per_batch < 1 or self.instances_per_identity < 1:
            raise ValueError("TrainPipelineConfig: identities_per_batch (P) and "
                             "instances_per_identity (K) must be >= 1, got "
                             f"{self.identities_per_batch} x {self.instances_per_identity}")

    @property
    def global_batch_size(self) -> int:
        return self.identities_per_batch * self.instances_per_identity


@dataclasses.dataclass(frozen=True)
class EvalPipelineConfig(ImageConfig):
    """Evaluation pipeline: ``sampler`` in sampling.EVAL_SAMPLERS."""

    sampler: str = "rrs"  # the release tests MARS with "begin_interval", Duke with "dense"
    resize_method: str = "bilinear"
    dense_max_clips: int | None = sampling.DENSE_MAX_CLIPS
    seed: int = 0  # chooses the kept run of clips when dense exceeds dense_max_clips

    def __post_init__(self):
        self._validate()
        if self.sampler not in sampling.EVAL_SAMPLERS:
            raise ValueError(f"EvalPipelineConfig.sampler must be one of "
                             f"{sampling.EVAL_SAMPLERS}, got {self.sampler!r}")


def as_config(config, cls):
    """`config` as a `cls` (an instance, a mapping of its fields, or None for defaults)."""
    if isinstance(config, cls):
        return config
    if config is None or isinstance(config, Mapping) or hasattr(config, "to_dict"):
        return cls.from_mapping(config)
    raise TypeError(f"expected a {cls.__name__} or a mapping of its fields, got {type(config)}")


def _image_fields(config: ml_collections.ConfigDict) -> dict:
    return dict(
        seq_len=config.model.seq_len,
        image_size=tuple(config.model.image_size),
        dtype=config.model.dtype,
        num_parallel_calls=config.input.num_parallel_calls,
        # The host stops at uint8 (4x fewer bytes to write and to copy to the devices);
        # normalisation and erasing run inside the jitted step (prepare_train/eval_clips).
        uint8_clips=True,
    )


def train_pipeline_config(config: ml_collections.ConfigDict) -> TrainPipelineConfig:
    """The training pipeline a run's config describes."""
    with _config_checks():
        return TrainPipelineConfig(
            identities_per_batch=config.batch.identities,
            instances_per_identity=config.batch.instances,
            sampler=config.input.train_sampler,
            flip=config.input.flip,
            erasing=config.input.erasing_prob > 0,
            erasing_prob=config.input.erasing_prob,
            **_image_fields(config),
        )


def eval_pipeline_config(config: ml_collections.ConfigDict) -> EvalPipelineConfig:
    """The evaluation pipeline a run's config describes."""
    with _config_checks():
        return EvalPipelineConfig(
            sampler=config.input.test_sampler, seed=config.seed, **_image_fields(config)
        )


@contextlib.contextmanager
def _config_checks() -> Iterator[None]:
    """A pipeline config's validation error, reported as a config error (no traceback)."""
    try:
        yield
    except ValueError as error:
        raise ConfigError(f"invalid config.input / config.model value: {error}") from error


# ----------------------------------------------------------------------------- device side


def normalization(config: ImageConfig) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), (3,) float32: x_uint8 * scale + offset = (x / 255 - mean) / std."""
    mean = np.asarray(config.mean if config.normalize else (0.0, 0.0, 0.0), np.float32)
    std = np.asarray(config.std if config.normalize else (1.0, 1.0, 1.0), np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def finish_clips(clips, erase=None, flip=None, *, config: ImageConfig):
    """The host path's last steps for ``uint8_clips`` batches, in jax.numpy (jit-friendly).

    clips (B, T, H, W, 3) uint8, erase (B, 4) int32 (top, left, h, w; h = 0: none) or None,
    flip (B,) bool or None (evaluation batches: None) -> (B, T, H, W, 3) ``config.dtype``:
    flipped, normalised, erased with ``erasing_fill``.
    """
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"finish_clips: expected clips (B, T, H, W, 3), got {clips.shape}")
    if flip is not None:
        clips = jnp.where(jnp.asarray(flip)[:, None, None, None, None], clips[:, :, :, ::-1],
                          clips)
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


def prepare_train_clips(config: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """Device-side flip, normalisation and erasing of the training pipeline's uint8 clips (a
    `steps.PrepareClips`)."""
    return functools.partial(finish_clips, config=train_pipeline_config(config))


def prepare_eval_clips(config: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """Device-side normalisation of the evaluation pipeline's uint8 clips."""
    return functools.partial(finish_clips, config=eval_pipeline_config(config))

"""Per-frame image work of the input pipeline: decode, resize, flip, normalise, erase.

The release's augmentation, each step switchable by the pipeline config: resize to
``image_size`` (bicubic for training, bilinear for evaluation) -> horizontal flip of the whole
clip (p = 0.5) -> scale to [0, 1] -> ImageNet normalisation -> random erasing with one
rectangle for every frame of the clip, filled *after* normalisation with the raw constants
(0.485, 0.456, 0.406).

Resizing uses ``tf.image.resize(..., antialias=True)``: its bicubic kernel (Keys, a = -0.5)
and its kernel widening when downscaling are PIL's, so it tracks PIL ``BICUBIC`` /
``BILINEAR`` (what the release's PIL transforms use) to about one grey level on natural images
(PIL clips to uint8 between its two passes, so pixel noise upscaled 8x can differ by tens of
levels; without antialias, downscaling differs by up to 10 levels); the result is
rounded and clipped to [0, 255] as PIL's uint8 output is, and a frame already at the target
size is left untouched (PIL returns a copy). MARS frames are 256x128, so at the default size
nothing is resized.

Random draws (flip flags, erasing rectangles) are made on the host by NumPy as part of a
batch plan (``draw_erasing_boxes``), so the tf.data graph only applies them.
``finish_clips`` is the jax.numpy twin of the host's normalise-and-erase, for ``uint8_clips``
batches finished inside the jitted step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from psta_jax.input_pipeline import ImageConfig, TrainPipelineConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def draw_erasing_boxes(rng: np.random.Generator, count: int, height: int, width: int,
                       config: TrainPipelineConfig) -> np.ndarray:
    """The release's RandomErasing rectangle for ``count`` clips: (count, 4) int32.

    Rows are (top, left, h, w); h = w = 0 means no erasing. Per clip: erase with probability
    erasing_prob; up to erasing_max_tries candidates with area U(area range) * H * W and
    aspect r = U(min, 1 / min), h = round(sqrt(area r)), w = round(sqrt(area / r)); the first
    with w < W and h < H wins, placed uniformly (top in 0..H-h, left in 0..W-w).
    """
    tries = config.erasing_max_tries
    apply = rng.random(count) < config.erasing_prob
    area = rng.uniform(*config.erasing_area, size=(count, tries)) * height * width
    aspect = rng.uniform(config.erasing_min_aspect, 1 / config.erasing_min_aspect,
                         size=(count, tries))
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


def decode_resize(encoded: tf.Tensor, size: tuple[int, int], method: str,
                  antialias: bool) -> tf.Tensor:
    """One encoded JPEG/PNG -> (H, W, 3) uint8, resized and rounded as PIL's uint8 output."""
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")  # PNG too
    image.set_shape([None, None, 3])
    source = tf.shape(image)[:2]
    same_size = tf.reduce_all(source == tf.constant(size))
    # Antialiasing only changes downscaling (upscaled results are identical) and costs up to
    # 4x the plain kernel, so it is used only when a side shrinks.
    shrinks = tf.reduce_any(source > tf.constant(size)) if antialias else tf.constant(False)

    def resize(with_antialias: bool):
        resized = tf.image.resize(image, size, method=method, antialias=with_antialias)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    resized = tf.cond(same_size, lambda: image, lambda: tf.cond(
        shrinks, lambda: resize(True), lambda: resize(False)))
    return tf.ensure_shape(resized, [*size, 3])


def normalization(config: ImageConfig) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), (3,) float32: x_uint8 * scale + offset = (x / 255 - mean) / std."""
    mean = np.asarray(config.mean if config.normalize else (0.0, 0.0, 0.0), np.float32)
    std = np.asarray(config.std if config.normalize else (1.0, 1.0, 1.0), np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def finish_clips(clips, erase, config: ImageConfig):
    """The host path's last steps for ``uint8_clips`` batches, in jax.numpy (jit-friendly).

    clips (B, T, H, W, 3) uint8, erase (B, 4) int32 (top, left, h, w; h = 0: none) or None
    (evaluation batches) -> (B, T, H, W, 3) ``config.dtype``: normalised, erased with
    ``erasing_fill``.
    """
    import jax.numpy as jnp

    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"finish_clips: expected clips (B, T, H, W, 3), got {clips.shape}")
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
    return jnp.where(inside, fill, out).astype(np.dtype(tf.as_dtype(config.dtype).as_numpy_dtype))


def frame_transform(config: ImageConfig, augment: bool):
    """f(encoded, flip, erase) -> one (H, W, 3) frame of a clip, in ``config.dtype``.

    decode -> resize -> flip (if ``flip``; still uint8) -> scale to [0, 1] and normalise (one
    multiply-add) -> erase the (top, left, h, w) rectangle ``erase`` (if h > 0). The clip's
    flip flag and rectangle ride along with each of its frames, so all T frames get the same.
    With ``config.uint8_clips`` it stops after the flip (see finish_clips).
    """
    size = tuple(config.image_size)
    scale, offset = (tf.constant(v) for v in normalization(config))
    fill = tf.constant(getattr(config, "erasing_fill", IMAGENET_MEAN), tf.float32)
    rows, cols = tf.range(size[0])[:, None, None], tf.range(size[1])[None, :, None]
    dtype = tf.as_dtype(config.dtype)

    def erased(image: tf.Tensor, erase: tf.Tensor) -> tf.Tensor:
        top, left, h, w = tf.unstack(erase)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        return tf.where(inside, fill, image)

    def transform(encoded: tf.Tensor, flip: tf.Tensor, erase: tf.Tensor) -> tf.Tensor:
        image = decode_resize(encoded, size, config.resize_method, config.antialias)
        if augment:
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        if config.uint8_clips:
            return image
        image = tf.cast(image, tf.float32) * scale + offset
        if augment:
            image = tf.cond(erase[2] > 0, lambda: erased(image, erase), lambda: image)
        return tf.cast(image, dtype)

    return transform

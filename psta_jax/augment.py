"""Per-clip image work of the input pipeline: decode, resize, flip, normalise, erase.

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
``clip_preparation.finish_clips`` is the jax.numpy twin of the host's flip, normalise and
erase, for ``uint8_clips`` batches finished inside the jitted step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from psta_jax.clip_preparation import IMAGENET_MEAN, normalization

if TYPE_CHECKING:
    from psta_jax.clip_preparation import ImageConfig, TrainPipelineConfig


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


def decode_resize_clip(encoded: tf.Tensor, seq_len: int, size: tuple[int, int], method: str,
                       antialias: bool) -> tf.Tensor:
    """(T,) encoded JPEG/PNG frames -> (T, H, W, 3) uint8, each resized to ``size`` and
    rounded as PIL's uint8 output (left untouched where it already has that size)."""
    frames = []
    for t in range(seq_len):
        image = tf.io.decode_jpeg(encoded[t], channels=3, dct_method="INTEGER_ACCURATE")
        image.set_shape([None, None, 3])  # decode_jpeg reads PNG too
        frames.append(image)
    sizes = tf.stack([tf.shape(image)[:2] for image in frames])  # (T, 2)
    target = tf.constant(size)

    def resize(image: tf.Tensor) -> tf.Tensor:
        # Antialiasing only changes downscaling (upscaled results are identical) and costs up
        # to 4x the plain kernel, so it is used only when a side shrinks.
        shrinks = tf.reduce_any(tf.shape(image)[:2] > target) if antialias else False

        def resized(with_antialias: bool) -> tf.Tensor:
            out = tf.image.resize(image, size, method=method, antialias=with_antialias)
            return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

        out = tf.cond(tf.reduce_all(tf.shape(image)[:2] == target),
                      lambda: image,
                      lambda: tf.cond(shrinks, lambda: resized(True), lambda: resized(False)))
        return tf.ensure_shape(out, [*size, 3])

    # One branch for the common case of a whole clip already at the target size.
    clip = tf.cond(tf.reduce_all(sizes == target),
                   lambda: tf.stack([tf.ensure_shape(image, [*size, 3]) for image in frames]),
                   lambda: tf.stack([resize(image) for image in frames]))
    return tf.ensure_shape(clip, [seq_len, *size, 3])


def clip_transform(config: ImageConfig, augment: bool):
    """f(encoded (T,) string, flip () bool, erase (4,) int32) -> one (T, H, W, 3) clip in
    ``config.dtype``.

    Each frame: decode -> resize; then the whole clip: flip (if ``flip``; still uint8) ->
    scale to [0, 1] and normalise (one multiply-add) -> erase the (top, left, h, w) rectangle
    ``erase`` (if h > 0), so all T frames get the same flip and rectangle. With
    ``config.uint8_clips`` it stops before the flip (``clip_preparation.finish_clips`` flips,
    normalises and erases on the device).

    One call per clip, not per frame, and one branch per clip: a tf.data element or a
    tf.cond costs 30-100 us of CPU, against ~0.35 ms to decode a 256x128 frame.
    """
    size, seq_len = tuple(config.image_size), config.seq_len
    scale, offset = (tf.constant(v) for v in normalization(config))
    fill = tf.constant(getattr(config, "erasing_fill", IMAGENET_MEAN), tf.float32)
    rows, cols = tf.range(size[0])[:, None, None], tf.range(size[1])[None, :, None]
    dtype = tf.as_dtype(config.dtype)

    def erased(clip: tf.Tensor, erase: tf.Tensor) -> tf.Tensor:
        top, left, h, w = tf.unstack(erase)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        return tf.where(inside, fill, clip)

    def transform(encoded: tf.Tensor, flip: tf.Tensor, erase: tf.Tensor) -> tf.Tensor:
        clip = decode_resize_clip(encoded, seq_len, size, config.resize_method,
                                  config.antialias)
        if config.uint8_clips:
            return clip
        if augment:
            clip = tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
        clip = tf.cast(clip, tf.float32) * scale + offset
        if augment:
            clip = tf.cond(erase[2] > 0, lambda: erased(clip, erase), lambda: clip)
        return tf.cast(clip, dtype)

    return transform

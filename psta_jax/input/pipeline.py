"""Batches from a split in host memory: P x K identity batches for training, every tracklet
once for evaluation (the tf.data side of the input; docs/design.md, "Data").

* A split's encoded frames are in host memory (`datasets.TrackletStore`); only the sampled
  frames are ever decoded.
* What a batch holds is planned in NumPy (`input.batch_plans` for training, the test
  sampler's clips for evaluation); tf.data only gathers, decodes and resizes: one parallel,
  order-preserving map element per clip (no Python per clip), then clips regroup into a
  batch. A tf.data element or a `tf.cond` costs far less than decoding a frame, but not
  nothing, so there is one of each per clip, not per frame.
* Clips leave the host as uint8, resized; `input.preprocess.finish_clips` flips, normalises
  and erases them in the jitted step.
* Training can decode and resize every frame of the split once instead, into host memory
  (`TrainPipelineConfig.cache_decoded_gb`: when the decoded frames fit in that budget); a
  batch is then one gather, and the host's CPU goes to the step. Batches are identical.

Resizing uses `tf.image.resize(..., antialias=True)`: its bicubic kernel (Keys, a = -0.5)
and its kernel widening when downscaling are PIL's, so it tracks the release's PIL
`BICUBIC` / `BILINEAR` to about one grey level on natural images; the result is rounded
and clipped to [0, 255] as PIL's uint8 output is, and a frame already at the target size is
left untouched. MARS frames are 256x128, so at the default size nothing is resized.

Batches are dicts of NumPy arrays, this process's slice of the global batch: training
`clips` (B, T, H, W, 3) uint8, `flip` (B,) bool, `erase` (B, 4) int32, `labels` (B,) int32,
`camids` (B,) int32; evaluation `clips`, `tracklet_ids` (B,) int64, `pids` (B,) int64,
`camids` (B,) int32, `mask` (B,) bool (False on padding, where ids are -1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from psta_jax.datasets.loading import TrackletStore
from psta_jax.input import batch_plans, samplers
from psta_jax.input.preprocess import EvalPipelineConfig, ImageConfig, TrainPipelineConfig


def decode_resize_clip(
    encoded: tf.Tensor, seq_len: int, size: tuple[int, int], method: str, antialias: bool
) -> tf.Tensor:
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
        # Antialiasing only changes downscaling (upscaled results are identical) and costs
        # several times the plain kernel, so it is used only when a side shrinks.
        shrinks = tf.reduce_any(tf.shape(image)[:2] > target) if antialias else False

        def resized(with_antialias: bool) -> tf.Tensor:
            out = tf.image.resize(image, size, method=method, antialias=with_antialias)
            return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

        out = tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == target),
            lambda: image,
            lambda: tf.cond(shrinks, lambda: resized(True), lambda: resized(False)),
        )
        return tf.ensure_shape(out, [*size, 3])

    # One branch for the common case of a whole clip already at the target size.
    clip = tf.cond(
        tf.reduce_all(sizes == target),
        lambda: tf.stack([tf.ensure_shape(image, [*size, 3]) for image in frames]),
        lambda: tf.stack([resize(image) for image in frames]),
    )
    return tf.ensure_shape(clip, [seq_len, *size, 3])


def decode_all_frames(store: TrackletStore, config: ImageConfig) -> tf.Tensor:
    """Every frame of `store` decoded and resized as `decode_resize_clip` does it:
    (total_frames, H, W, 3) uint8, in parallel (tf.data, config.num_parallel_calls)."""
    size = tuple(config.image_size)

    def frame(encoded):
        clip = decode_resize_clip(encoded[None], 1, size, config.resize_method, config.antialias)
        return clip[0]

    frames = (
        tf.data.Dataset.from_tensor_slices(store.frames)
        .map(frame, num_parallel_calls=config.num_parallel_calls, deterministic=True)
        .batch(1024)
    )
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    chunks = list(frames.with_options(options).as_numpy_iterator())
    return tf.constant(np.concatenate(chunks) if chunks else np.zeros((0, *size, 3), np.uint8))


def _clip_dataset(
    plans: tf.data.Dataset,
    store: TrackletStore,
    config: ImageConfig,
    clips_per_batch: int,
    keep: tuple[str, ...],
) -> tf.data.Dataset:
    """Plans -> batches {'clips' (b, T, H, W, 3) uint8, and the plan's ``keep`` entries}.

    A plan holds per-clip rows: 'frame_ids' (b, T) rows of store.frames and the ``keep``
    entries. Every clip is one element of a parallel, order-preserving map that decodes and
    resizes its frames and carries its plan row along, then clips regroup into batches (a
    zip of plans with images costs measurably more CPU: docs/benchmarks.md).
    """
    frames = store.frames
    size, seq_len = tuple(config.image_size), config.seq_len

    def clip(row):
        encoded = tf.gather(frames, row["frame_ids"])
        clips = decode_resize_clip(encoded, seq_len, size, config.resize_method, config.antialias)
        return {"clips": clips, **{k: row[k] for k in keep}}

    batches = (
        plans.flat_map(tf.data.Dataset.from_tensor_slices)
        .map(clip, num_parallel_calls=config.num_parallel_calls, deterministic=True)
        .batch(clips_per_batch, drop_remainder=True)
    )
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return batches.prefetch(config.prefetch).with_options(options)


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous share of a global batch."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"expected 0 <= process_index < process_count, got {process_index} of {process_count}"
        )
    if global_batch % process_count:
        raise ValueError(
            f"the global batch of {global_batch} clips does not split evenly over "
            f"{process_count} processes"
        )
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


class TrainBatches:
    """The training split under a training pipeline config: this process's slice of every
    global batch, from any start step; batch n is a function of (seed, n).

    Attributes: num_identities (the classes), steps_per_epoch, global_batch_size,
    local_batch_size.
    """

    _SIGNATURE = dict(
        frame_ids=(2, tf.int64),
        labels=(1, tf.int32),
        camids=(1, tf.int32),
        flip=(1, tf.bool),
        erase=(2, tf.int32),
    )

    def __init__(
        self,
        store: TrackletStore,
        config: TrainPipelineConfig,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """Decodes the split's frames now when they fit `config.cache_decoded_gb`
        (`caches_decoded`)."""
        if seed < 0:
            raise ValueError(f"the seed must be non-negative, got {seed}")
        self.store = store
        self.config = config
        self.seed = seed
        self.index = batch_plans.build_identity_index(store.pids)
        self.num_identities = self.index.num_identities
        self.steps_per_epoch = batch_plans.steps_per_epoch(
            self.num_identities, config.identities_per_batch
        )
        self.global_batch_size = config.global_batch_size
        self._slice = local_slice(self.global_batch_size, process_index, process_count)
        self.local_batch_size = self._slice.stop - self._slice.start
        height, width = config.image_size
        self.decoded_gb = int(store.frames.shape[0]) * height * width * 3 / 2**30
        self.caches_decoded = 0 < self.decoded_gb <= config.cache_decoded_gb
        self._decoded = None
        if self.caches_decoded:
            start = time.monotonic()
            self._decoded = decode_all_frames(store, config)
            logging.info(
                "decoded the %d training frames once, into %.2f GiB of host memory, in %.0f s "
                "(config.input.cache_decoded_gb=%g)",
                int(store.frames.shape[0]),
                self.decoded_gb,
                time.monotonic() - start,
                config.cache_decoded_gb,
            )

    def plan(self, step: int) -> dict[str, np.ndarray]:
        """The global batch plan of ``step`` (see batch_plans.train_batch_plan), with camids."""
        plan = batch_plans.train_batch_plan(
            self.index, self.store.num_frames, self.config, self.seed, step
        )
        plan["camids"] = self.store.camids[plan["tracklets"]].astype(np.int32)
        return plan

    def _local_plan(self, step: int) -> dict[str, np.ndarray]:
        plan = {k: v[self._slice] for k, v in self.plan(step).items()}
        plan["frame_ids"] = self.store.offsets[plan["tracklets"], None] + plan["frames"]
        return plan

    def dataset(self, start_step: int = 0) -> tf.data.Dataset:
        """The batches from ``start_step`` on, as an endless tf.data pipeline."""
        b, t = self.local_batch_size, self.config.seq_len
        shapes = {"frame_ids": [b, t], "erase": [b, 4]}
        signature = {k: (shapes.get(k, [b]), dtype) for k, (_, dtype) in self._SIGNATURE.items()}

        def arrays_of_step(step: np.ndarray) -> list[np.ndarray]:
            plan = self._local_plan(int(step))
            return [plan[k] for k in signature]

        def plan_of_step(step):
            dtypes = [dtype for _, dtype in signature.values()]
            values = tf.numpy_function(arrays_of_step, [step], dtypes, stateful=False)
            return {
                k: tf.ensure_shape(v, shape)
                for (k, (shape, _)), v in zip(signature.items(), values, strict=True)
            }

        plans = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(plan_of_step)
        keep = ("labels", "camids", "flip", "erase")
        if self._decoded is None:
            return _clip_dataset(plans, self.store, self.config, b, keep)
        decoded = self._decoded  # a batch is one gather of decoded frames

        def gathered(plan):
            return {"clips": tf.gather(decoded, plan["frame_ids"]), **{k: plan[k] for k in keep}}

        batches = plans.map(gathered, num_parallel_calls=2, deterministic=True)
        options = tf.data.Options()
        options.deterministic = True
        # Nothing here is AUTOTUNE, and autotune's model thread only delays the end of a run:
        # deleting the iterator waits for it to leave a sleep of up to 60 s.
        options.autotune.enabled = False
        return batches.prefetch(self.config.prefetch).with_options(options)

    def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """NumPy batches from ``start_step`` on."""
        return self.dataset(start_step).as_numpy_iterator()


class EvalBatches:
    """Every tracklet of a split once per pass, as clips in bounded batches.

    Each ``iter()`` is a fresh pass (plan once, evaluate many times). The global clip list
    (tracklets in dataset order, a tracklet's clips consecutive) is cut into global batches of
    ``batch_size`` clips, the last one padded with mask False; each process yields its
    contiguous slice of every global batch, so every process yields ``num_batches`` batches.
    Attributes: tracklet_ids, pids, camids ((N,) in dataset order), num_clips, num_batches.
    """

    def __init__(
        self,
        store: TrackletStore,
        config: EvalPipelineConfig,
        *,
        batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.config = config
        self.batch_size = batch_size
        self._slice = local_slice(batch_size, process_index, process_count)
        self.local_batch_size = self._slice.stop - self._slice.start
        self.tracklet_ids = store.tracklet_ids
        self.pids = store.pids
        self.camids = store.camids.astype(np.int32)
        clip_frames, clip_tracklets = [], []
        for position, length in enumerate(store.num_frames.tolist()):
            rng = None
            if (
                config.sampler == "dense"
                and config.dense_max_clips is not None
                and length // config.seq_len > config.dense_max_clips
            ):
                rng = np.random.default_rng([config.seed, position])
            clips = samplers.eval_clips(
                config.sampler, length, config.seq_len, rng, config.dense_max_clips
            )
            clip_frames.append(clips + store.offsets[position])
            clip_tracklets.append(np.full(len(clips), position))
        frame_ids = np.concatenate(clip_frames)
        positions = np.concatenate(clip_tracklets)
        self.num_clips = len(positions)
        self.num_batches = math.ceil(self.num_clips / batch_size)
        padding = self.num_batches * batch_size - self.num_clips
        mask = np.concatenate([np.ones(self.num_clips, bool), np.zeros(padding, bool)])
        positions = np.concatenate([positions, np.full(padding, positions[-1])])
        frame_ids = np.concatenate([frame_ids, np.repeat(frame_ids[-1:], padding, axis=0)])

        def local(x: np.ndarray) -> np.ndarray:
            return x.reshape(self.num_batches, batch_size, *x.shape[1:])[:, self._slice]

        def ids(values: np.ndarray) -> np.ndarray:
            return local(np.where(mask, values[positions], -1))

        self._plans = dict(
            frame_ids=local(frame_ids),
            mask=local(mask),
            tracklet_ids=ids(store.tracklet_ids),
            pids=ids(store.pids),
            camids=ids(store.camids).astype(np.int32),
        )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        plans = tf.data.Dataset.from_tensor_slices(self._plans)
        keep = ("tracklet_ids", "pids", "camids", "mask")
        dataset = _clip_dataset(plans, self.store, self.config, self.local_batch_size, keep)
        return dataset.as_numpy_iterator()

    def __len__(self) -> int:
        return self.num_batches

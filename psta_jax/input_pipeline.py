"""Config -> batches: P x K identity batches for training, every tracklet once for eval.

`open_dataset(config)` loads the dataset's splits into host memory, `TrainData` and
`eval_iterator` turn a split and the config into batch iterators; the per-clip image work
(decode, resize, flip, normalise, erase) is `psta_jax.augment`. Design (docs/design.md, Data):

* A split's encoded frames are loaded once into host memory (``TrackletStore``: one flat
  tf.string tensor plus per-tracklet offsets). Only the sampled frames are ever decoded.
* What goes into a training batch is a pure NumPy function of (seed, step):
  ``train_batch_plan`` gives the tracklets, their frame indices, the flip flags and the
  erasing rectangles. Restarting at step N therefore yields batch N again, and every process
  of a multi-host run computes the same global plan and keeps its contiguous slice of it.
* tf.data only gathers and transforms: one parallel, order-preserving map element per clip
  (no Python per clip) decodes and resizes its T frames, flips, normalises and erases the
  clip; then clips regroup into a batch.
* Normalised float clips are 4x the bytes of the decoded JPEGs; ``uint8_clips=True`` stops the
  host after resizing and leaves flip, normalisation and erasing to
  ``clip_preparation.finish_clips`` in the jitted step (same result; measured host cost then
  close to decoding alone, see benchmarks/input_pipeline.py).

Training batches follow the release's ``RandomIdentitySampler``: an epoch visits every
identity once in a random order, K tracklets each (distinct when the identity has at least K,
with replacement only when it has fewer), grouped P identities per batch with the remainder
dropped (steps_per_epoch = num_identities // P; MARS: 625 // 8 = 78). Labels are the dense
relabelling 0..num_ids-1 of the *sorted* raw pids (the release uses ``enumerate(set(pids))``,
whose order is an implementation detail of Python sets).

Batches are dicts of NumPy arrays (this process's slice of the global batch):
training ``clips`` (B, T, H, W, 3) ``config.dtype``, ``labels`` (B,) int32, ``camids`` (B,)
int32; evaluation ``clips``, ``tracklet_ids`` (B,) int64, ``pids`` (B,) int64, ``camids``
(B,) int32, ``mask`` (B,) bool (False on padding, where ids are -1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from psta_jax import datasets, distributed, sampling
from psta_jax.augment import clip_transform, draw_erasing_boxes
from psta_jax.clip_preparation import (
    EvalPipelineConfig,
    ImageConfig,
    TrainPipelineConfig,
    as_config,
    eval_pipeline_config,
    train_pipeline_config,
)
from psta_jax.datasets import preparation
from psta_jax.errors import ConfigError

REQUIRED_FEATURES = ("frames", "pid", "camid", "tracklet_id")


# ----------------------------------------------------------------------------- host-memory split


@dataclasses.dataclass(frozen=True)
class TrackletStore:
    """One split's encoded frames in host memory, tracklets in dataset order.

    frames: (total_frames,) tf.string, every tracklet's frames back to back.
    offsets: (N + 1,) int64; tracklet i owns frames[offsets[i]:offsets[i + 1]].
    pids, camids, tracklet_ids: (N,) int64 as stored in the dataset.
    """

    frames: tf.Tensor
    offsets: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    tracklet_ids: np.ndarray

    @property
    def num_tracklets(self) -> int:
        return len(self.pids)

    @property
    def num_frames(self) -> np.ndarray:
        return np.diff(self.offsets)


def load_tracklets(examples: tf.data.Dataset) -> TrackletStore:
    """Reads every example of a split (the dataset contract of docs/architecture.md) once."""
    spec = examples.element_spec
    if not isinstance(spec, Mapping) or any(k not in spec for k in REQUIRED_FEATURES):
        raise ValueError(f"expected examples with features {REQUIRED_FEATURES}, got {spec}")
    frames_spec = spec["frames"]
    if frames_spec.dtype != tf.string or frames_spec.shape.rank != 1:
        raise ValueError(
            "expected 'frames' as a 1-D tf.string tensor of encoded images (read the TFDS split "
            f"with decoders={{'frames': tfds.decode.SkipDecoding()}}), got {frames_spec}")
    keys = [k for k in (*REQUIRED_FEATURES, "num_frames") if k in spec]
    encoded, lengths, pids, camids, tracklet_ids = [], [], [], [], []
    for i, example in enumerate(examples.map(lambda ex: {k: ex[k] for k in keys})
                                .as_numpy_iterator()):
        count = len(example["frames"])
        if count == 0 or ("num_frames" in example and example["num_frames"] != count):
            raise ValueError(f"example {i} (tracklet_id {example['tracklet_id']}) has "
                             f"{count} frames but num_frames={example.get('num_frames')}; "
                             "expected at least one frame and matching counts")
        encoded.append(example["frames"])
        lengths.append(count)
        pids.append(example["pid"])
        camids.append(example["camid"])
        tracklet_ids.append(example["tracklet_id"])
    if not encoded:
        raise ValueError("the split has no examples")
    return TrackletStore(
        frames=tf.convert_to_tensor(np.concatenate(encoded), dtype=tf.string),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        pids=np.asarray(pids, np.int64),
        camids=np.asarray(camids, np.int64),
        tracklet_ids=np.asarray(tracklet_ids, np.int64),
    )


# ----------------------------------------------------------------------------- batch plans


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
    return IdentityIndex(labels.astype(np.int32), label_pids.astype(np.int64),
                         tuple(np.split(order, splits)))


def train_batch_plan(index: IdentityIndex, num_frames: np.ndarray, config: TrainPipelineConfig,
                     seed: int, step: int) -> dict[str, np.ndarray]:
    """What global training batch ``step`` holds; a pure function of (seed, step).

    Returns tracklets (B,) int64 positions in the split, frames (B, T) int64 indices within
    each tracklet, labels (B,) int32, flip (B,) bool, erase (B, 4) int32 (see
    augment.draw_erasing_boxes), B = P * K, clips ordered identity by identity (K consecutive
    clips).
    Flip and erasing are drawn even when switched off (then forced off), so switching an
    augmentation does not change the other draws.
    """
    p, k = config.identities_per_batch, config.instances_per_identity
    steps_per_epoch = index.num_identities // p
    if steps_per_epoch < 1:
        raise ValueError(f"{index.num_identities} identities cannot fill one batch of "
                         f"P={p} identities")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    epoch, position = divmod(step, steps_per_epoch)
    identity_order = np.random.default_rng([seed, 0, epoch]).permutation(index.num_identities)
    batch_labels = identity_order[position * p:(position + 1) * p]
    rng = np.random.default_rng([seed, 1, step])
    tracklets = np.concatenate([
        rng.choice(index.tracklets_by_label[label], size=k,
                   replace=len(index.tracklets_by_label[label]) < k)
        for label in batch_labels
    ]).astype(np.int64)
    sampler = sampling.train_sampler(config.sampler)
    frames = np.stack([sampler(int(num_frames[t]), config.seq_len, rng) for t in tracklets])
    flip = (rng.random(p * k) < config.flip_prob) & config.flip
    erase = draw_erasing_boxes(rng, p * k, *config.image_size, config)
    erase = erase * np.int32(config.erasing)
    return dict(tracklets=tracklets, frames=frames, labels=index.labels[tracklets],
                flip=flip, erase=erase)


# ----------------------------------------------------------------------------- tf.data graph


def _clip_dataset(plans: tf.data.Dataset, store: TrackletStore, config: ImageConfig,
                  clips_per_batch: int, augment: bool, keep: tuple[str, ...]) -> tf.data.Dataset:
    """Plans -> batches {'clips' (b, T, H, W, 3), and the plan's ``keep`` entries}.

    A plan holds per-clip rows: 'frame_ids' (b, T) rows of store.frames, 'flip' (b,),
    'erase' (b, 4) and the ``keep`` entries. Every clip is one element of a parallel,
    order-preserving map that does all the per-pixel work (decode and resize each frame;
    flip, normalise, erase the clip) and carries its plan row along, then clips regroup into
    batches (no zip of plans with images: that costs ~8% of the pipeline's CPU time).
    """
    frames = store.frames
    transform = clip_transform(config, augment)

    def clip(row):
        clips = transform(tf.gather(frames, row["frame_ids"]), row["flip"], row["erase"])
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


def _local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"expected 0 <= process_index < process_count, got "
                         f"{process_index} of {process_count}")
    if global_batch % process_count:
        raise ValueError(f"the global batch of {global_batch} clips does not split evenly "
                         f"over {process_count} processes")
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


# ----------------------------------------------------------------------------- training


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Endless training batches from ``start_step`` on; batch n is a function of (seed, n).

    Attributes: num_identities (classes), steps_per_epoch, global_batch_size,
    local_batch_size, step (the step of the next batch).
    """

    def __init__(self, store: TrackletStore, config: TrainPipelineConfig, *, seed: int,
                 start_step: int = 0, process_index: int = 0, process_count: int = 1):
        self.store = store
        self.config = config
        self.seed = seed
        self.index = build_identity_index(store.pids)
        self.num_identities = self.index.num_identities
        self.steps_per_epoch = self.num_identities // config.identities_per_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training split has {self.num_identities} identities, fewer "
                             f"than P={config.identities_per_batch}")
        self.global_batch_size = config.global_batch_size
        self._slice = _local_slice(self.global_batch_size, process_index, process_count)
        self.local_batch_size = self._slice.stop - self._slice.start
        self.step = start_step
        self._iterator = None  # built on the first next(): plan() alone starts no tf.data work

    def plan(self, step: int) -> dict[str, np.ndarray]:
        """The global batch plan of ``step`` (see train_batch_plan), with camids."""
        plan = train_batch_plan(self.index, self.store.num_frames, self.config, self.seed, step)
        plan["camids"] = self.store.camids[plan["tracklets"]].astype(np.int32)
        return plan

    def _local_plan(self, step: int) -> dict[str, np.ndarray]:
        plan = {k: v[self._slice] for k, v in self.plan(step).items()}
        plan["frame_ids"] = self.store.offsets[plan["tracklets"], None] + plan["frames"]
        return plan

    def _dataset(self, start_step: int) -> tf.data.Dataset:
        b, t = self.local_batch_size, self.config.seq_len
        signature = dict(frame_ids=([b, t], tf.int64), labels=([b], tf.int32),
                         camids=([b], tf.int32), flip=([b], tf.bool), erase=([b, 4], tf.int32))

        def arrays_of_step(step: np.ndarray) -> list[np.ndarray]:
            plan = self._local_plan(int(step))
            return [plan[k] for k in signature]

        def plan_of_step(step):
            values = tf.numpy_function(arrays_of_step, [step],
                [dtype for _, dtype in signature.values()], stateful=False)
            return {k: tf.ensure_shape(v, shape)
                    for (k, (shape, _)), v in zip(signature.items(), values, strict=True)}

        plans = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(plan_of_step)
        keep = ("labels", "camids")
        if self.config.uint8_clips:  # clip_preparation.finish_clips flips and erases on device
            keep += ("flip", "erase")
        return _clip_dataset(plans, self.store, self.config, b, True, keep)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = self._dataset(self.step).as_numpy_iterator()
        batch = next(self._iterator)
        self.step += 1
        return batch


def create_train_iterator(examples: tf.data.Dataset | TrackletStore,
                          config: TrainPipelineConfig | Mapping[str, Any] | None = None, *,
                          seed: int, start_step: int = 0, process_index: int = 0,
                          process_count: int = 1) -> TrainIterator:
    """Training batches of this process: its contiguous 1/process_count of each global batch.

    ``examples``: the train split (dataset contract), or a TrackletStore already loaded.
    """
    config = as_config(config, TrainPipelineConfig)
    store = examples if isinstance(examples, TrackletStore) else load_tracklets(examples)
    return TrainIterator(store, config, seed=seed, start_step=start_step,
                         process_index=process_index, process_count=process_count)


# ----------------------------------------------------------------------------- evaluation


class EvalIterable:
    """Every tracklet of a split once per pass, as clips in bounded batches.

    Each ``iter()`` is a fresh pass (load once, evaluate many times). The global clip list
    (tracklets in dataset order, a tracklet's clips consecutive) is cut into global batches of
    ``batch_size`` clips, the last one padded with mask False; each process yields its
    contiguous slice of every global batch, so every process yields ``num_batches`` batches.
    Attributes: tracklet_ids, pids, camids ((N,) in dataset order), num_clips, num_batches.
    """

    def __init__(self, store: TrackletStore, config: EvalPipelineConfig, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.config = config
        self.batch_size = batch_size
        self._slice = _local_slice(batch_size, process_index, process_count)
        self.local_batch_size = self._slice.stop - self._slice.start
        self.tracklet_ids = store.tracklet_ids
        self.pids = store.pids
        self.camids = store.camids.astype(np.int32)
        clip_frames, clip_tracklets = [], []
        for position, length in enumerate(store.num_frames.tolist()):
            rng = None
            if config.sampler == "dense" and config.dense_max_clips is not None and (
                    length // config.seq_len > config.dense_max_clips):
                rng = np.random.default_rng([config.seed, position])
            clips = sampling.eval_clips(config.sampler, length, config.seq_len, rng,
                                        config.dense_max_clips)
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

        self._plans = dict(
            frame_ids=local(frame_ids), mask=local(mask),
            flip=local(np.zeros(len(mask), bool)), erase=local(np.zeros((len(mask), 4), np.int32)),
            tracklet_ids=local(np.where(mask, store.tracklet_ids[positions], -1)),
            pids=local(np.where(mask, store.pids[positions], -1)),
            camids=local(np.where(mask, store.camids[positions], -1).astype(np.int32)))

    def _dataset(self) -> tf.data.Dataset:
        plans = tf.data.Dataset.from_tensor_slices(self._plans)
        keep = ("tracklet_ids", "pids", "camids", "mask")
        return _clip_dataset(plans, self.store, self.config, self.local_batch_size, False, keep)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._dataset().as_numpy_iterator()

    def __len__(self) -> int:
        return self.num_batches


def create_eval_iterator(examples: tf.data.Dataset | TrackletStore,
                         config: EvalPipelineConfig | Mapping[str, Any] | None = None, *,
                         batch_size: int, process_index: int = 0,
                         process_count: int = 1) -> EvalIterable:
    """Evaluation batches of a query or gallery split; ``batch_size`` is the global batch."""
    config = as_config(config, EvalPipelineConfig)
    store = examples if isinstance(examples, TrackletStore) else load_tracklets(examples)
    return EvalIterable(store, config, batch_size=batch_size, process_index=process_index,
                        process_count=process_count)


def average_clip_features(features: np.ndarray, tracklet_ids: np.ndarray,
                          mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean clip feature per tracklet, in ascending tracklet-id order (= split order).

    features (N, D), tracklet_ids (N,), mask (N,) bool or None -> ((M,) ids, (M, D) float32).
    Rows with a negative tracklet id (the pipeline's padding) are dropped even without mask.
    The release averages the BN-neck clip features before L2 normalisation.
    """
    features = np.asarray(features, np.float32)
    tracklet_ids = np.asarray(tracklet_ids)
    if features.ndim != 2 or tracklet_ids.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, D) and tracklet_ids (N,), got "
                         f"{features.shape} and {tracklet_ids.shape}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        features, tracklet_ids = features[mask], tracklet_ids[mask]
    keep = tracklet_ids >= 0
    features, tracklet_ids = features[keep], tracklet_ids[keep]
    ids, inverse, counts = np.unique(tracklet_ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), features.shape[1]), np.float64)
    np.add.at(sums, inverse, features)
    return ids, (sums / counts[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- from a config


@dataclasses.dataclass(frozen=True)
class Splits:
    """The three splits of one dataset as host-memory tracklet stores."""

    name: str
    train: TrackletStore
    query: TrackletStore
    gallery: TrackletStore


def _prepare(config: ml_collections.ConfigDict):
    if config.dataset.synthetic:
        from psta_jax.datasets import synthetic

        synthetic.ensure(
            datasets.raw_data_dir(
                config.dataset.name, config.data_dir, config.dataset.raw_dir or None
            )
        )
    return datasets.build(
        config.dataset.name,
        data_dir=config.data_dir,
        raw_dir=config.dataset.raw_dir or None,
        builder_config=config.dataset.builder_config or None,
        skip_bad_frames=config.dataset.get("skip_bad_frames", False),
    )


def open_dataset(config: ml_collections.ConfigDict) -> Splits:
    """Prepares (once, by process 0) and loads the dataset `config.dataset` names."""
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            _prepare(config)
        distributed.barrier("dataset_prepared")
    builder = _prepare(config)
    stores = {}
    for split in ("train", "query", "gallery"):
        try:
            stores[split] = load_tracklets(datasets.load_split(builder, split))
        except tf.errors.OpError as error:  # DataLossError: a damaged prepared file.
            raise preparation.read_error(builder, split, error) from error
    return Splits(name=config.dataset.name, **stores)


class TrainData:
    """The training split with the config's P x K sampling, for any start step."""

    def __init__(self, store: TrackletStore, config: ml_collections.ConfigDict):
        self.store = store
        self.pipeline_config = train_pipeline_config(config)
        index = build_identity_index(store.pids)
        self.num_identities = index.num_identities
        self.steps_per_epoch = self.num_identities // self.pipeline_config.identities_per_batch
        self.global_batch_size = self.pipeline_config.global_batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {self.num_identities} identities, fewer than "
                f"config.batch.identities={self.pipeline_config.identities_per_batch}"
            )
        if self.global_batch_size % jax.device_count():
            raise ConfigError(
                f"the global batch of {self.global_batch_size} clips (config.batch.identities x "
                f"config.batch.instances) must divide evenly over {jax.device_count()} devices"
            )

    def iterator(self, *, seed: int, start_step: int) -> TrainIterator:
        """This process's slice of every global batch from `start_step` on."""
        return create_train_iterator(
            self.store,
            self.pipeline_config,
            seed=seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """The configured eval batch rounded up to a multiple of the device count."""
    devices = jax.device_count()
    return -(-config.input.eval_batch_size // devices) * devices


def eval_iterator(store: TrackletStore, config: ml_collections.ConfigDict) -> EvalIterable:
    """This process's evaluation batches of one split (query or gallery) under `config`."""
    return create_eval_iterator(
        store,
        eval_pipeline_config(config),
        batch_size=eval_batch_size(config),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def disable_tf_accelerators() -> None:
    """tf.data runs on the host; accelerators belong to JAX."""
    tf.config.set_visible_devices([], "GPU")

"""A dataset's splits in host memory, opened from the dataset a run names.

`open_dataset(spec)` prepares the dataset once (process 0 first in a multi-process run;
generating the synthetic MARS when `spec.synthetic` asks for it) and loads each split into
a `TrackletStore`: every tracklet's encoded frames back to back in one tf.string tensor,
so that the input pipeline decodes only the frames it samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from psta_jax import datasets
from psta_jax.datasets import preparation
from psta_jax.runtime import distributed

SPLITS = ("train", "query", "gallery")
REQUIRED_FEATURES = ("frames", "pid", "camid", "tracklet_id")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Which dataset a run reads, and from where.

    name: a builder name in `datasets.BUILDERS`; data_dir: the dataset root; raw_dir: the raw
    folder (default `<data_dir>/<the dataset's folder>`); builder_config: iLIDS-VID /
    PRID-2011 split ('split_0'..'split_9'); synthetic: generate the synthetic MARS into
    raw_dir when it is missing, with the `synthetic.SyntheticConfig` fields named in
    synthetic_sizes ((field, value) pairs) changed from its defaults; skip_bad_frames:
    prepare without undecodable frames.
    """

    name: str
    data_dir: str = "data"
    raw_dir: str | None = None
    builder_config: str | None = None
    synthetic: bool = False
    synthetic_sizes: tuple[tuple[str, int | float], ...] = ()
    skip_bad_frames: bool = False

    @property
    def raw_folder(self) -> str:
        return datasets.raw_data_dir(self.name, self.data_dir, self.raw_dir)


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

    def decoded_frames(self, position: int, count: int) -> list[np.ndarray]:
        """Up to `count` frames of tracklet `position`, evenly spaced, each decoded to
        (H, W, 3) uint8 (for display)."""
        single = self.tracklet(position)
        picks = evenly_spaced(int(single.num_frames[0]), count)
        return [tf.io.decode_image(single.frames[int(i)], channels=3).numpy() for i in picks]

    def tracklet(self, position: int) -> TrackletStore:
        """The store of the single tracklet at `position`."""
        if not 0 <= position < self.num_tracklets:
            raise IndexError(
                f"tracklet position {position} out of range: the split has "
                f"{self.num_tracklets} tracklets"
            )
        start, stop = int(self.offsets[position]), int(self.offsets[position + 1])
        keep = slice(position, position + 1)
        return TrackletStore(
            frames=self.frames[start:stop],
            offsets=np.asarray([0, stop - start], np.int64),
            pids=self.pids[keep],
            camids=self.camids[keep],
            tracklet_ids=self.tracklet_ids[keep],
        )


def evenly_spaced(length: int, count: int) -> np.ndarray:
    """Up to `count` evenly spaced indices into `length` items, first and last included."""
    return np.unique(np.linspace(0, length - 1, num=min(count, length)).astype(int))


def store_from_frames(
    encoded: Sequence[Sequence[bytes]],
    pids: np.ndarray | None = None,
    camids: np.ndarray | None = None,
) -> TrackletStore:
    """A store of tracklets given as lists of encoded frames (ids 0..N-1; unknown pids and
    camids are -1)."""
    counts = np.asarray([len(frames) for frames in encoded], np.int64)
    unknown = np.full(len(encoded), -1, np.int64)
    return TrackletStore(
        frames=tf.constant([f for frames in encoded for f in frames], dtype=tf.string),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        pids=unknown if pids is None else np.asarray(pids, np.int64),
        camids=unknown if camids is None else np.asarray(camids, np.int64),
        tracklet_ids=np.arange(len(encoded), dtype=np.int64),
    )


def load_tracklets(examples: tf.data.Dataset) -> TrackletStore:
    """Reads every example of a split (the dataset contract of docs/architecture.md) once."""
    spec = examples.element_spec
    if not isinstance(spec, Mapping) or any(k not in spec for k in REQUIRED_FEATURES):
        raise ValueError(f"expected examples with features {REQUIRED_FEATURES}, got {spec}")
    frames_spec = spec["frames"]
    if frames_spec.dtype != tf.string or frames_spec.shape.rank != 1:
        raise ValueError(
            "expected 'frames' as a 1-D tf.string tensor of encoded images (read the TFDS split "
            f"with datasets.load_split, which leaves them encoded), got {frames_spec}"
        )
    keys = [k for k in (*REQUIRED_FEATURES, "num_frames") if k in spec]
    encoded, lengths, pids, camids, tracklet_ids = [], [], [], [], []
    selected = examples.map(lambda example: {k: example[k] for k in keys})
    for i, example in enumerate(selected.as_numpy_iterator()):
        count = len(example["frames"])
        if count == 0 or ("num_frames" in example and example["num_frames"] != count):
            raise ValueError(
                f"example {i} (tracklet_id {example['tracklet_id']}) has {count} frames but "
                f"num_frames={example.get('num_frames')}; expected at least one frame and "
                "matching counts"
            )
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


@dataclasses.dataclass(frozen=True)
class Splits:
    """The three splits of one dataset as host-memory tracklet stores."""

    name: str
    train: TrackletStore
    query: TrackletStore
    gallery: TrackletStore


def prepare(spec: DatasetSpec):
    """The prepared TFDS builder of `spec` (generating the synthetic MARS first if asked)."""
    if spec.synthetic:
        from psta_jax.datasets import synthetic  # noqa: PLC0415

        synthetic.ensure(spec.raw_folder, synthetic.config_with(dict(spec.synthetic_sizes)))
    return datasets.build(
        spec.name,
        data_dir=spec.data_dir,
        raw_dir=spec.raw_dir,
        builder_config=spec.builder_config,
        skip_bad_frames=spec.skip_bad_frames,
    )


def _prepared_by_process_zero(spec: DatasetSpec):
    import jax  # noqa: PLC0415 (a multi-process run has started JAX already)

    if jax.process_count() > 1:
        if jax.process_index() == 0:
            prepare(spec)
        distributed.barrier("dataset_prepared")
    return prepare(spec)


def open_split(spec: DatasetSpec, split: str, builder=None) -> TrackletStore:
    """One split of `spec` in host memory; a damaged prepared file says how to rebuild it."""
    builder = builder if builder is not None else _prepared_by_process_zero(spec)
    try:
        return load_tracklets(datasets.load_split(builder, split))
    except tf.errors.OpError as error:  # DataLossError: a damaged prepared file.
        raise preparation.read_error(builder, split, error) from error


def open_dataset(spec: DatasetSpec) -> Splits:
    """Prepares (once, by process 0 first) and loads the train, query and gallery splits."""
    builder = _prepared_by_process_zero(spec)
    stores = {split: open_split(spec, split, builder) for split in SPLITS}
    return Splits(name=spec.name, **stores)

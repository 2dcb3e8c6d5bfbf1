"""Video re-ID datasets as TFDS builders (MARS, DukeMTMC-VideoReID, iLIDS-VID, PRID-2011, ...).

Importing this package registers every builder of `BUILDERS` with TFDS (by folder name:
'mars', 'duke_video_reid', ...); it does not import TensorFlow or touch any data. `BUILDERS` is
discovered: every sub-package `<name>/` with a `<name>_dataset_builder.py` defining `Builder`
(the TFDS layout) is a dataset, so adding one touches only its folder, its config and its test.
Each builder class carries the dataset's facts: `name`, `EVAL_PROTOCOL`, `RELEASE_TEST_SAMPLER`,
`RAW_FOLDER`, `NUM_CAMERAS`, `NUM_TRAIN_IDS` (see `reid_builder.ReidBuilder`).

    from psta_jax import datasets
    builder = datasets.build("mars", data_dir="data", raw_dir="data/synthetic_mars")
    train = datasets.load_split(builder, "train")   # one element per tracklet, frames undecoded
    facts = datasets.reid_info(builder)             # num_train_ids, num_cameras, eval_protocol
    splits = datasets.open_dataset(datasets.DatasetSpec("mars", raw_dir="data/synthetic_mars"))
    splits.train                                    # a TrackletStore: frames in host memory

Raw data is read from `raw_dir` (default `<data_dir>/<raw folder>`, e.g. data/MARS); the
prepared TFRecords go to `<data_dir>/tfds/<basename of raw_dir>/`, so a synthetic MARS and the
real MARS never share a cache. Preparation decodes every frame and stops with the list of bad
files (or leaves them out with `skip_bad_frames`). A prepared copy records its source (split
files, every frame's name, size and mtime): when the raw folder changes, it is prepared again.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
from typing import TYPE_CHECKING

import tensorflow_datasets as tfds

from psta_jax.datasets import preparation, reid_builder
from psta_jax.datasets.raw_io import CorruptRawDataError, MissingRawDataError, RawDataError
from psta_jax.runtime.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

# `loading` imports TensorFlow: loaded on first use (PEP 562), so that naming a dataset's
# facts in a config file costs no TensorFlow import.
_LOADING = (
    "DatasetSpec",
    "Splits",
    "TrackletStore",
    "load_tracklets",
    "open_dataset",
    "open_split",
    "store_from_frames",
)

__all__ = [
    *_LOADING,
    "BUILDERS",
    "CorruptRawDataError",
    "MissingRawDataError",
    "RawDataError",
    "ReidInfo",
    "build",
    "builder_class",
    "load_split",
    "prepared_data_dir",
    "raw_data_dir",
    "reid_info",
]


def _discover_builders() -> dict[str, type[reid_builder.ReidBuilder]]:
    """{name: Builder} of every sub-package `<name>/<name>_dataset_builder.py`, by name."""
    builders = {}
    for package in pkgutil.iter_modules(__path__):
        module_name = f"{__name__}.{package.name}.{package.name}_dataset_builder"
        if not package.ispkg or importlib.util.find_spec(module_name) is None:
            continue
        cls = importlib.import_module(module_name).Builder
        if not issubclass(cls, reid_builder.ReidBuilder) or cls.name != package.name:
            raise TypeError(
                f"{module_name}.Builder must subclass reid_builder.ReidBuilder and be named "
                f"{package.name!r} (TFDS names builders after their module), got {cls!r}"
            )
        builders[cls.name] = cls
    return dict(sorted(builders.items()))


BUILDERS: dict[str, type[reid_builder.ReidBuilder]] = _discover_builders()


@dataclasses.dataclass(frozen=True)
class ReidInfo:
    """Facts about a prepared dataset that training and evaluation need."""

    name: str  # TFDS builder name, e.g. "mars".
    config: str | None  # Builder config ("split_3") for iLIDS-VID / PRID-2011, else None.
    eval_protocol: str  # "mars", "duke", "ilids_vid" or "prid2011".
    num_train_ids: int  # Distinct pids in the train split (= classifier width).
    num_cameras: int  # max camid + 1 over all splits.
    num_tracklets: dict[str, int]  # Examples per split.
    num_ids: dict[str, int]  # Distinct pids per split (gallery counts distractor pid 0).


def builder_class(name: str) -> type[reid_builder.ReidBuilder]:
    """The builder class registered under `name`."""
    if name not in BUILDERS:
        raise ConfigError(
            f"unknown dataset {name!r} (config.dataset.name); expected one of {sorted(BUILDERS)}"
        )
    return BUILDERS[name]


def raw_data_dir(name: str, data_dir: str = "data", raw_dir: str | None = None) -> str:
    """The raw folder read by `build`: `raw_dir`, or `<data_dir>/<default raw folder>`."""
    return (
        raw_dir if raw_dir is not None else os.path.join(data_dir, builder_class(name).RAW_FOLDER)
    )


def prepared_data_dir(data_dir: str, raw_dir: str) -> str:
    """TFDS data_dir for prepared TFRecords: `<data_dir>/tfds/<basename of raw_dir>`."""
    return os.path.join(data_dir, "tfds", os.path.basename(os.path.normpath(raw_dir)))


def _config_name(cls: type[reid_builder.ReidBuilder], config: str | int | None) -> str | None:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config is None:
        return names[0] if names else None
    if isinstance(config, int):
        config = f"split_{config}"
    if config not in names:
        expected = names or "no config (this dataset has one fixed split)"
        raise ConfigError(
            f"{cls.name}: unknown config.dataset.builder_config {config!r}; expected {expected}"
        )
    return config


def build(
    name: str,
    *,
    data_dir: str = "data",
    raw_dir: str | None = None,
    builder_config: str | int | None = None,
    skip_bad_frames: bool = False,
) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder of dataset `name`, preparing it from the raw folder if needed.

    Preparation decodes every frame first and stops with a list of the bad ones; a copy
    prepared from a raw folder that has changed since is prepared again (`preparation`).

    Args:
      name: 'mars', 'duke_video_reid', 'ilids_vid' or 'prid2011'.
      data_dir: dataset root; raw folders default to `<data_dir>/<raw folder>` and prepared
        TFRecords go to `<data_dir>/tfds/<basename of the raw folder>/`.
      raw_dir: the raw dataset folder (e.g. 'data/synthetic_mars' for the synthetic MARS).
      builder_config: iLIDS-VID / PRID-2011 split, 'split_0'..'split_9' or 0..9 (default 0).
      skip_bad_frames: leave undecodable frames out (the tracklet counts as shorter) instead
        of stopping.
    """
    cls = builder_class(name)
    config = _config_name(cls, builder_config)
    raw = raw_data_dir(name, data_dir, raw_dir)
    prepared = prepared_data_dir(data_dir, raw)
    return preparation.prepare(
        cls, prepared_dir=prepared, config=config, raw=raw, skip_bad_frames=skip_bad_frames
    )


class EncodedFrames(tfds.decode.SkipDecoding):
    """Leaves a tracklet's frames encoded: a 1-D tf.string tensor of JPEG/PNG bytes.

    TFDS's `SkipDecoding` maps over a sequence's frames one by one (`tf.map_fn`, through two
    deprecated TensorFlow and TFDS APIs that log warnings); skipping the decoding of the whole
    sequence is the identity.
    """

    def decode_batch_example(self, serialized_batch):
        return serialized_batch


def load_split(
    builder: tfds.core.DatasetBuilder,
    split: str,
    *,
    read_config: tfds.ReadConfig | None = None,
) -> tf.data.Dataset:
    """One element per tracklet, in tracklet_id order, with `frames` left encoded.

    Element: {'frames': (num_frames,) tf.string JPEG/PNG bytes, 'pid', 'camid', 'tracklet_id',
    'num_frames': int64 scalars}.
    """
    if split not in builder.info.splits:
        raise ValueError(
            f"{builder.name}: unknown split {split!r}; expected one of {list(builder.info.splits)}"
        )
    return builder.as_dataset(
        split=split,
        decoders={"frames": EncodedFrames()},
        shuffle_files=False,
        read_config=read_config,
    )


def reid_info(builder: tfds.core.DatasetBuilder) -> ReidInfo:
    """Facts recorded when `builder` was prepared (see `reid_builder.split_metadata`)."""
    metadata = builder.info.metadata
    if not metadata or "num_train_ids" not in metadata:
        raise ValueError(
            f"{builder.name}: no re-ID metadata at {builder.data_dir}; is the dataset prepared?"
        )
    return ReidInfo(
        name=builder.name,
        config=builder.builder_config.name if builder.builder_config else None,
        eval_protocol=metadata["eval_protocol"],
        num_train_ids=int(metadata["num_train_ids"]),
        num_cameras=int(metadata["num_cameras"]),
        num_tracklets={s: builder.info.splits[s].num_examples for s in reid_builder.SPLITS},
        num_ids={s: int(n) for s, n in metadata["num_ids"].items()},
    )


def __getattr__(name: str):
    if name in _LOADING:
        return getattr(importlib.import_module(f"{__name__}.loading"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

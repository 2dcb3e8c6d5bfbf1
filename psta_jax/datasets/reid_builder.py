"""What every video re-ID TFDS builder shares: the tracklet record, features and example writing.

A builder only has to say how to scan its raw folder into `{split: [Tracklet, ...]}`
(`_scan_splits`); this module turns the tracklets into examples that follow the dataset
contract in docs/architecture.md (one example per tracklet, frames stored as the original
encoded bytes in temporal order).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from psta_jax.datasets import raw_io

SPLITS = ("train", "query", "gallery")


@dataclasses.dataclass(frozen=True)
class Tracklet:
    """One tracklet on disk: its frame files in temporal order, identity and 0-based camera."""

    frame_paths: tuple[str, ...]
    pid: int
    camid: int


def sequence_tracklet(dataset: str, folder: str, pid: int, camid: int) -> Tracklet:
    """A tracklet stored as a folder of numbered PNG/JPEG frames, sorted by frame number."""
    names = raw_io.sort_frames_numerically(raw_io.list_images(folder, (".png", ".jpg", ".jpeg")))
    if not names:
        raise raw_io.CorruptRawDataError(f"{dataset}: sequence folder {folder} holds no frames")
    return Tracklet(
        frame_paths=tuple(os.path.join(folder, name) for name in names), pid=pid, camid=camid
    )


def reid_features() -> tfds.features.FeaturesDict:
    """The features of every split of every builder (the dataset contract)."""
    return tfds.features.FeaturesDict(
        {
            "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3))),
            "pid": np.int64,
            "camid": np.int64,
            "tracklet_id": np.int64,
            "num_frames": np.int64,
        }
    )


def tracklet_example(dataset: str, tracklet: Tracklet, tracklet_id: int) -> dict[str, Any]:
    """Reads a tracklet's frames (original bytes) and checks them.

    Every frame must carry JPEG/PNG magic bytes; the first frame is fully decoded, which
    catches most corrupt files for the price of one decode per tracklet.
    """
    if not tracklet.frame_paths:
        raise raw_io.CorruptRawDataError(
            f"{dataset}: tracklet {tracklet_id} (pid {tracklet.pid}, camid {tracklet.camid}) "
            "has no frames"
        )
    frames = [raw_io.read_image_bytes(dataset, path) for path in tracklet.frame_paths]
    raw_io.check_decodable(dataset, tracklet.frame_paths[0], frames[0])
    return {
        "frames": frames,
        "pid": tracklet.pid,
        "camid": tracklet.camid,
        "tracklet_id": tracklet_id,
        "num_frames": len(frames),
    }


def split_metadata(splits: Mapping[str, Sequence[Tracklet]], eval_protocol: str) -> dict[str, Any]:
    """JSON-able facts stored with a prepared dataset (read by `psta_jax.datasets.reid_info`)."""
    camids = {t.camid for tracklets in splits.values() for t in tracklets}
    return {
        "eval_protocol": eval_protocol,
        "num_train_ids": len({t.pid for t in splits["train"]}),
        "num_cameras": max(camids) + 1,
        "num_ids": {name: len({t.pid for t in tracklets}) for name, tracklets in splits.items()},
    }


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class of the video re-ID builders (not registered itself).

    Subclasses set the class attributes below and implement `_scan_splits`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    TITLE: ClassVar[str]  # Human-readable name used in error messages, e.g. "MARS".
    RAW_FOLDER: ClassVar[str]  # Default raw folder name under the data root, e.g. "MARS".
    EVAL_PROTOCOL: ClassVar[str]  # Evaluation protocol name, e.g. "mars".
    NUM_CAMERAS: ClassVar[int]  # Cameras in the real dataset.
    NUM_TRAIN_IDS: ClassVar[int]  # Training identities in the real dataset (per split).
    # Metadata files (relative to the raw folder) whose contents define the splits: a change
    # there makes `psta_jax.datasets.build` prepare the dataset again.
    FINGERPRINT_FILES: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str]
    CITATION: ClassVar[str]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=reid_features(),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            # Examples keep their tracklet_id order on disk, so evaluation order is stable.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    @classmethod
    def raw_fingerprint(cls, root: os.PathLike | str) -> str:
        return raw_io.fingerprint(root, cls.FINGERPRINT_FILES)

    @abc.abstractmethod
    def _scan_splits(self, root: str) -> dict[str, list[Tracklet]]:
        """Lists the tracklets of 'train', 'query' and 'gallery' under the raw folder `root`."""

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        splits = self._scan_splits(os.fspath(dl_manager.manual_dir))
        if set(splits) != set(SPLITS):
            raise AssertionError(f"_scan_splits must return {SPLITS}, got {sorted(splits)}")
        for name, tracklets in splits.items():
            if not tracklets:
                raise raw_io.CorruptRawDataError(
                    f"{self.TITLE}: split {name!r} has no tracklets under {dl_manager.manual_dir}"
                )
        self.info.metadata.update(split_metadata(splits, self.EVAL_PROTOCOL))
        self.info.metadata["raw_fingerprint"] = self.raw_fingerprint(dl_manager.manual_dir)
        return {name: self._generate_examples(splits[name]) for name in SPLITS}

    def _generate_examples(
        self, tracklets: Sequence[Tracklet]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for tracklet_id, tracklet in enumerate(tracklets):
            yield tracklet_id, tracklet_example(self.TITLE, tracklet, tracklet_id)


def ls_set_split(ls_set: np.ndarray, people: list[str], index: int) -> tuple[list[str], list[str]]:
    """(train, test) person folders of split `index` of an `ls_set` split table.

    The iLIDS-VID and PRID-2011 .mat split files hold `ls_set` (num_splits x num_people).
    Each row is a permutation of 1-based indices into the sorted person folders; its first
    half is the test persons, its second half the training persons.
    """
    row = ls_set[index]
    if sorted(row.tolist()) != list(range(1, len(people) + 1)):
        raise raw_io.CorruptRawDataError(
            f"split {index}: ls_set row must be a permutation of 1..{len(people)} "
            f"(one entry per person folder), got {len(row)} entries in {row.min()}..{row.max()}"
        )
    half = len(row) // 2
    test = sorted(people[i - 1] for i in row[:half])
    train = sorted(people[i - 1] for i in row[half:])
    return train, test


def split_configs(num_splits: int = 10) -> list[tfds.core.BuilderConfig]:
    """One config per standard train/test split: 'split_0' .. 'split_{n-1}'."""
    return [
        tfds.core.BuilderConfig(name=f"split_{i}", description=f"Standard train/test split {i}.")
        for i in range(num_splits)
    ]


def split_index(config: tfds.core.BuilderConfig | None) -> int:
    """'split_3' -> 3."""
    if config is None or not config.name.startswith("split_"):
        raise ValueError(f"expected a 'split_<k>' builder config, got {config}")
    return int(config.name.removeprefix("split_"))

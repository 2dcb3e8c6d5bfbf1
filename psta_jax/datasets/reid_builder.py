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
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from psta_jax.datasets import raw_io

SPLITS = ("train", "query", "gallery")
SOURCE_FINGERPRINT = "source_fingerprint"  # Metadata key: `raw_io.fingerprint` of the source.
BAD_FRAMES_REPORT = "bad_frames.txt"  # Written next to the prepared data when frames are bad.


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
    """Reads a tracklet's frames (original bytes, magic bytes checked) into one example.

    The frames were fully decoded before (`check_frames`), so only the bytes are read here.
    """
    if not tracklet.frame_paths:
        raise raw_io.CorruptRawDataError(
            f"{dataset}: tracklet {tracklet_id} (pid {tracklet.pid}, camid {tracklet.camid}) "
            "has no frames"
        )
    frames = [raw_io.read_image_bytes(dataset, path) for path in tracklet.frame_paths]
    return {
        "frames": frames,
        "pid": tracklet.pid,
        "camid": tracklet.camid,
        "tracklet_id": tracklet_id,
        "num_frames": len(frames),
    }


SKIP_FLAG = "--config.dataset.skip_bad_frames=True"
_MAX_LISTED = 100  # Bad frames named in the error message; the report file lists all of them.


def bad_frame_lines(
    root: str, splits: Mapping[str, Sequence[Tracklet]], problems: Mapping[str, str]
) -> list[str]:
    """One line per bad frame: the file (relative to `root`), its tracklet and the problem."""
    lines = []
    for split, tracklets in splits.items():
        for index, tracklet in enumerate(tracklets):
            for path in tracklet.frame_paths:
                if path in problems:
                    lines.append(
                        f"{os.path.relpath(path, root)}: {problems[path]} "
                        f"[{split} tracklet {index}, pid {tracklet.pid}, camid {tracklet.camid}, "
                        f"frame {tracklet.frame_paths.index(path) + 1} of "
                        f"{len(tracklet.frame_paths)}]"
                    )
    return lines


def without_bad_frames(
    splits: Mapping[str, Sequence[Tracklet]], problems: Mapping[str, str]
) -> tuple[dict[str, list[Tracklet]], list[str]]:
    """The tracklets with their bad frames removed; tracklets left with no frame are dropped.

    Returns the new splits and a description of every dropped tracklet.
    """
    kept: dict[str, list[Tracklet]] = {}
    dropped = []
    for split, tracklets in splits.items():
        kept[split] = []
        for index, tracklet in enumerate(tracklets):
            good = tuple(p for p in tracklet.frame_paths if p not in problems)
            if good:
                kept[split].append(dataclasses.replace(tracklet, frame_paths=good))
            else:
                dropped.append(f"{split} tracklet {index} (pid {tracklet.pid})")
    return kept, dropped


def check_frames(
    dataset: str,
    root: str,
    splits: Mapping[str, Sequence[Tracklet]],
    *,
    skip_bad_frames: bool,
    report_path: str | None = None,
) -> tuple[dict[str, list[Tracklet]], list[str]]:
    """Decodes every frame of every split (in parallel) before anything is written.

    Bad frames raise one `CorruptRawDataError` listing all of them with their tracklets, or,
    with `skip_bad_frames`, are left out with a warning (each tracklet then counts as
    shorter). The full list also goes to `report_path` when given.

    Returns the splits to write and the bad frames left out (paths relative to `root`).
    """
    paths = [p for tracklets in splits.values() for t in tracklets for p in t.frame_paths]
    started = time.perf_counter()
    problems = raw_io.find_bad_frames(paths)
    logging.info(
        "%s: decoded all %d frames in %.1f s; %d bad",
        dataset,
        len(paths),
        time.perf_counter() - started,
        len(problems),
    )
    if not problems:
        if report_path and os.path.exists(report_path):
            os.remove(report_path)  # Stale: the frames it names have been fixed.
        return {name: list(tracklets) for name, tracklets in splits.items()}, []
    lines = bad_frame_lines(root, splits, problems)
    listed = "\n".join(f"  {line}" for line in lines[:_MAX_LISTED])
    if len(lines) > _MAX_LISTED:
        listed += f"\n  ... and {len(lines) - _MAX_LISTED} more"
    if report_path:
        os.makedirs(os.path.dirname(report_path), exist_ok=True)
        with open(report_path, "w") as f:
            f.write("".join(f"{line}\n" for line in lines))
        listed += f"\n(the full list is in {report_path})"
    summary = f"{dataset}: {len(problems)} of {len(paths)} frames under {root} are bad:\n{listed}"
    if not skip_bad_frames:
        raise raw_io.CorruptRawDataError(
            f"{summary}\nReplace these files with intact copies, or prepare the dataset without "
            f"them: {SKIP_FLAG} (each tracklet then counts as shorter)."
        )
    kept, dropped = without_bad_frames(splits, problems)
    logging.warning(
        "%s\nskip_bad_frames is set: preparing without these frames%s",
        summary,
        f"; dropped tracklets with no frame left: {', '.join(dropped)}" if dropped else "",
    )
    return kept, sorted(os.path.relpath(p, root) for p in problems)


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
    # The frame sampler the release tests with (config preset `release`), e.g. "dense".
    RELEASE_TEST_SAMPLER: ClassVar[str]
    NUM_CAMERAS: ClassVar[int]  # Cameras in the real dataset.
    NUM_TRAIN_IDS: ClassVar[int]  # Training identities in the real dataset (per split).
    # Metadata files (relative to the raw folder) whose contents define the splits; they and
    # every frame's name, size and mtime make the source fingerprint: a change there makes
    # `psta_jax.datasets.build` prepare the dataset again.
    FINGERPRINT_FILES: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str]
    CITATION: ClassVar[str]

    # Set by `psta_jax.datasets.build`: leave undecodable frames out instead of stopping.
    skip_bad_frames: bool = False

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... prepared to"
    # to stdout around a preparation; `preparation.prepare` logs what was prepared instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

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

    def frame_paths(self, root: str) -> list[str]:
        """Every frame file the splits under `root` use, in split and tracklet order."""
        splits = self._scan_splits(root)
        return [p for tracklets in splits.values() for t in tracklets for p in t.frame_paths]

    def source_fingerprint(self, root: os.PathLike | str) -> str:
        """What a preparation from `root` would be built from (see `raw_io.fingerprint`)."""
        root = os.fspath(root)
        return raw_io.fingerprint(root, self.FINGERPRINT_FILES, self.frame_paths(root))

    @abc.abstractmethod
    def _scan_splits(self, root: str) -> dict[str, list[Tracklet]]:
        """Lists the tracklets of 'train', 'query' and 'gallery' under the raw folder `root`."""

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        splits = self._scan_splits(root)
        if set(splits) != set(SPLITS):
            raise AssertionError(f"_scan_splits must return {SPLITS}, got {sorted(splits)}")
        for name, tracklets in splits.items():
            if not tracklets:
                raise raw_io.CorruptRawDataError(
                    f"{self.TITLE}: split {name!r} has no tracklets under {root}"
                )
        # Taken before decoding: a frame replaced during preparation then counts as changed.
        fingerprint = raw_io.fingerprint(
            root,
            self.FINGERPRINT_FILES,
            [p for tracklets in splits.values() for t in tracklets for p in t.frame_paths],
        )
        splits, skipped = check_frames(
            self.TITLE,
            root,
            splits,
            skip_bad_frames=self.skip_bad_frames,
            report_path=os.path.join(os.fspath(self.data_dir_root), BAD_FRAMES_REPORT),
        )
        self.info.metadata.update(split_metadata(splits, self.EVAL_PROTOCOL))
        self.info.metadata[SOURCE_FINGERPRINT] = fingerprint
        self.info.metadata["skipped_frames"] = skipped
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

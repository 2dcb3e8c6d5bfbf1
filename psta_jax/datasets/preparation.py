"""Preparing a raw dataset into TFRecords once, and never reusing a stale or damaged preparation.

A prepared dataset records the fingerprint of what it was built from (the split files and
every frame's name, size and mtime; `ReidBuilder.source_fingerprint`). When the raw folder no
longer matches, or a prepared file is missing or truncated, the preparation is rebuilt with a
warning (or, without the raw folder, stops with `PreparedDataError`). Preparation holds a file
lock on the prepared folder, so two runs sharing a data folder prepare it once, and folders
left by an interrupted preparation (TFDS `incomplete.*`) are removed with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from psta_jax.datasets import raw_io, reid_builder

LOCK_FILE = ".prepare.lock"
_TFRECORD_FRAMING = 16  # Bytes per record besides the example: uint64 length, 2 x CRC32.


@contextlib.contextmanager
def _locked(prepared_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on `prepared_dir` (waits for another preparation to finish)."""
    os.makedirs(prepared_dir, exist_ok=True)
    with open(os.path.join(prepared_dir, LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_interrupted(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Deletes the `incomplete.*` folders an interrupted preparation left beside the dataset.

    Only call with the preparation lock held: then no live preparation owns them.
    """
    parent = os.path.dirname(os.path.normpath(os.fspath(builder.data_dir)))
    if not os.path.isdir(parent):
        return []
    leftovers = sorted(
        os.path.join(parent, name) for name in os.listdir(parent) if name.startswith("incomplete.")
    )
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    if leftovers:
        logging.warning(
            "removed %d folder(s) left by an interrupted dataset preparation: %s",
            len(leftovers),
            ", ".join(leftovers),
        )
    return leftovers


class PreparedDataError(raw_io.RawDataError):
    """A prepared (TFRecord) copy of a dataset is damaged; preparing it again fixes it."""


def rebuild_hint(builder: tfds.core.DatasetBuilder) -> str:
    """How to rebuild a damaged prepared copy: delete `data/tfds/<raw folder name>`."""
    return (
        f"delete {os.fspath(builder.data_dir_root)} to prepare the dataset again from its raw "
        "folder"
    )


def damaged_files(builder: tfds.core.DatasetBuilder) -> list[str]:
    """The prepared files that are missing or whose sizes do not add up to what TFDS recorded.

    One description per problem ('<file>: missing', '<split>: <files> hold N bytes, M
    recorded'); empty for an intact copy. Costs one stat per shard.
    """
    problems = []
    if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
        return problems  # The size rule below is TFRecord's.
    for name, split in builder.info.splits.items():
        files = [os.fspath(f) for f in split.filepaths]
        missing = [f for f in files if not os.path.isfile(f)]
        problems += [f"{f}: missing" for f in missing]
        if missing or not split.num_bytes:
            continue
        # TFDS records the example bytes; each TFRecord adds a length and two checksums.
        expected = int(split.num_bytes) + _TFRECORD_FRAMING * split.num_examples
        found = sum(os.path.getsize(f) for f in files)
        if found != expected:
            problems.append(
                f"{', '.join(files)} (split {name!r}): {found} bytes on disk, {expected} written"
            )
    return problems


def _reusable(builder: reid_builder.ReidBuilder, raw: str) -> bool:
    """Whether the prepared `builder` is intact and was built from exactly what `raw` holds."""
    damaged = damaged_files(builder)
    if damaged and not os.path.isdir(raw):
        raise PreparedDataError(
            f"{builder.TITLE}: the prepared copy at {builder.data_dir} is damaged (truncated or "
            f"deleted files): {'; '.join(damaged)}. Restore the raw folder {raw} and "
            f"{rebuild_hint(builder)}."
        )
    if damaged:
        logging.warning(
            "%s: the prepared copy at %s is damaged (%s); preparing it again from %s",
            builder.TITLE,
            builder.data_dir,
            "; ".join(damaged),
            raw,
        )
        return False
    if not os.path.isdir(raw):
        logging.info(
            "%s: raw folder %s is absent; using the copy prepared at %s unchecked",
            builder.TITLE,
            raw,
            builder.data_dir,
        )
        return True
    recorded = builder.info.metadata.get(reid_builder.SOURCE_FINGERPRINT)
    if recorded == builder.source_fingerprint(raw):
        skipped = builder.info.metadata.get("skipped_frames") or []
        if skipped:
            logging.warning(
                "%s: %s was prepared without %d bad frame(s) of %s (skip_bad_frames), e.g. %s",
                builder.TITLE,
                builder.data_dir,
                len(skipped),
                raw,
                skipped[0],
            )
        return True
    logging.warning(
        "%s: %s changed since %s was prepared (%s); preparing it again",
        builder.TITLE,
        raw,
        builder.data_dir,
        "frames or split files were added, removed or modified"
        if recorded
        else "it was prepared by a version that did not record its source",
    )
    return False


def _has_dataset_info(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether a preparation finished here (TFDS's `is_prepared`, without the warning it logs
    about a version folder that holds no dataset_info.json yet)."""
    return os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def prepare(
    cls: type[reid_builder.ReidBuilder],
    *,
    prepared_dir: str,
    config: str | None,
    raw: str,
    skip_bad_frames: bool = False,
) -> reid_builder.ReidBuilder:
    """The builder of `cls` prepared from `raw` into `prepared_dir`, reused when still current."""
    with _locked(prepared_dir):
        builder = cls(data_dir=prepared_dir, config=config, file_format="tfrecord")
        remove_interrupted(builder)
        if _has_dataset_info(builder):
            if _reusable(builder, raw):
                return builder
            shutil.rmtree(builder.data_dir)
            builder = cls(data_dir=prepared_dir, config=config, file_format="tfrecord")
        if not os.path.isdir(raw):
            raise raw_io.MissingRawDataError(
                f"{cls.TITLE}: raw dataset folder not found at {raw} (and nothing prepared at "
                f"{builder.data_dir}).\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        builder.skip_bad_frames = skip_bad_frames
        logging.info("%s: preparing %s into %s (once)", cls.TITLE, raw, builder.data_dir)
        started = time.monotonic()
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=raw), file_format="tfrecord"
        )
        splits = ", ".join(f"{n} {s.num_examples}" for n, s in builder.info.splits.items())
        logging.info(
            "%s: prepared in %.0f s (tracklets: %s)", cls.TITLE, time.monotonic() - started, splits
        )
        return builder


def read_error(
    builder: tfds.core.DatasetBuilder, split: str, error: Exception
) -> PreparedDataError:
    """The error for a prepared split that TensorFlow cannot read (e.g. `DataLossError`)."""
    files = ", ".join(os.fspath(f) for f in builder.info.splits[split].filepaths)
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return PreparedDataError(
        f"{getattr(builder, 'TITLE', builder.name)}: cannot read the prepared {split!r} split "
        f"({files}): {detail}. The file is damaged; {rebuild_hint(builder)}."
    )

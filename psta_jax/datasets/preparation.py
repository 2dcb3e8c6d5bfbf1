"""Preparing a raw dataset into TFRecords once, and never reusing a stale or damaged preparation.

A prepared dataset records the fingerprint of what it was built from (the split files and
every frame's name, size and mtime; `ReidBuilder.source_fingerprint`). When the raw folder no
longer matches, or a prepared file is missing or truncated, the preparation is rebuilt with a
warning (or, without the raw folder, stops with `PreparedDataError`). An empty raw folder
counts as missing.

A complete and current preparation is used without writing anything, so a prepared folder on
a read-only mount works. Only when something must be written does preparation take a file
lock on the prepared folder (two runs sharing a data folder prepare it once) and remove the
folders an interrupted preparation left (TFDS `incomplete.*`), with a warning. A read-only
folder that must be written, or a full disk, stops with one `PreparationWriteError` (the
folder, the free space, the fix), and leaves nothing half-written that a later run would
take as prepared.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from psta_jax.datasets import raw_io, reid_builder
from psta_jax.runtime import errors
from psta_jax.runtime.errors import UserError

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


def remove_interrupted(builder: tfds.core.DatasetBuilder, *, quiet: bool = False) -> list[str]:
    """Deletes the `incomplete.*` folders an interrupted preparation left beside the dataset
    (TFDS names the folders it writes before renaming them so; nothing else is named so).

    Only call with the preparation lock held: then no live preparation owns them.
    """
    parent = os.path.dirname(os.path.normpath(os.fspath(builder.data_dir)))
    leftovers = sorted(os.path.join(parent, name) for name in _leftovers(builder))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    if leftovers and not quiet:
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


def _has_dataset_info(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether a preparation finished here (TFDS's `is_prepared`, without the warning it logs
    about a version folder that holds no dataset_info.json yet)."""
    return os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def raw_present(raw: str) -> bool:
    """Whether the raw folder exists and holds anything (an empty one counts as missing)."""
    return os.path.isdir(raw) and bool(os.listdir(raw))


def _missing_raw(
    cls: type[reid_builder.ReidBuilder], raw: str, prepared: str
) -> raw_io.MissingRawDataError:
    found = "it exists but is empty; " if os.path.isdir(raw) else ""
    return raw_io.MissingRawDataError(
        f"{cls.TITLE}: raw dataset folder not found at {raw} ({found}nothing is prepared at "
        f"{prepared} either).\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )


def _outdated(builder: reid_builder.ReidBuilder, raw: str) -> str | None:
    """Why the prepared `builder` must be prepared again; None when it is complete and was
    built from exactly what `raw` holds (or `raw` is missing or empty: then it is used
    unchecked). Writes nothing; logs nothing."""
    if not _has_dataset_info(builder):
        return "nothing is prepared there yet"
    damaged = damaged_files(builder)
    if damaged and not raw_present(raw):
        raise PreparedDataError(
            f"{builder.TITLE}: the prepared copy at {builder.data_dir} is damaged (truncated or "
            f"deleted files): {'; '.join(damaged)}. Restore the raw folder {raw} and "
            f"{rebuild_hint(builder)}."
        )
    if damaged:
        return f"the prepared copy is damaged ({'; '.join(damaged)})"
    if not raw_present(raw):
        return None
    recorded = builder.info.metadata.get(reid_builder.SOURCE_FINGERPRINT)
    if recorded == builder.source_fingerprint(raw):
        return None
    if recorded:
        return (
            f"{raw} changed since it was prepared: frames or split files were added, removed "
            "or modified"
        )
    return "it was prepared by a version that did not record its source"


def _log_reuse(builder: reid_builder.ReidBuilder, raw: str) -> None:
    if not raw_present(raw):
        logging.info(
            "%s: raw folder %s is absent or empty; using the copy prepared at %s unchecked",
            builder.TITLE,
            raw,
            builder.data_dir,
        )
        return
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


def _leftovers(builder: tfds.core.DatasetBuilder) -> list[str]:
    parent = os.path.dirname(os.path.normpath(os.fspath(builder.data_dir)))
    if not os.path.isdir(parent):
        return []
    return [name for name in os.listdir(parent) if name.startswith("incomplete.")]


class PreparationWriteError(raw_io.RawDataError, OSError):
    """Preparing a dataset must write but cannot: a read-only folder or a full disk. Nothing
    half-written is left that a later run would take as prepared."""


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def _write_fault(
    error: BaseException, cls: type[reid_builder.ReidBuilder], prepared_dir: str, raw: str, why: str
) -> PreparationWriteError | None:
    """The one message for a preparation that failed because `prepared_dir` is read-only or
    its disk is full; None for any other failure."""
    full = errors.find_os_error(error, errors.FULL_DISK_ERRNOS)
    place = "a folder with room" if full is not None else "a writable folder"
    elsewhere = (
        f"--config.data_dir=<{place}> --config.dataset.raw_dir={raw} (the dataset is then "
        "prepared there)"
    )
    if full is not None:
        return PreparationWriteError(
            f"{cls.TITLE}: cannot prepare {raw} into {prepared_dir}: {os.strerror(full[0])} "
            f"({errors.free_space(prepared_dir)} there). Nothing half-written was left, so the "
            f"next run prepares it again. Free disk space there, or prepare it elsewhere: "
            f"{elsewhere}."
        )
    found = errors.find_os_error(error, errors.NOT_WRITABLE_ERRNOS)
    if found is None:
        return None
    code, cause = found
    # Permission errors also come from reading the raw folder: only writes here count.
    filename = getattr(cause, "filename", None)
    ours = _inside(os.fspath(filename), prepared_dir) if filename else prepared_dir in str(cause)
    if code != errno.EROFS and not ours:
        return None
    kept = "Nothing was changed" if code == errno.EROFS else "Nothing half-written was left"
    return PreparationWriteError(
        f"{cls.TITLE}: preparing {raw} must write to {prepared_dir} ({why}), but that folder "
        f"is not writable ({os.strerror(code)}). {kept}. Make it writable, or prepare the "
        f"dataset in a writable place: {elsewhere}."
    )


def prepare(
    cls: type[reid_builder.ReidBuilder],
    *,
    prepared_dir: str,
    config: str | None,
    raw: str,
    skip_bad_frames: bool = False,
) -> reid_builder.ReidBuilder:
    """The builder of `cls` prepared from `raw` into `prepared_dir`, reused when still current.

    A complete and current preparation is used without writing anything (a read-only
    `prepared_dir` works); only when something must be written is the lock taken. A missing
    or empty raw folder with nothing prepared raises `MissingRawDataError`; a read-only
    folder or a full disk `PreparationWriteError`.
    """
    builder = cls(data_dir=prepared_dir, config=config, file_format="tfrecord")
    why = _outdated(builder, raw)
    if why is None:
        if _leftovers(builder):
            builder = _without_leftovers(cls, prepared_dir, config)
        _log_reuse(builder, raw)
        return builder
    if not raw_present(raw):
        raise _missing_raw(cls, raw, os.fspath(builder.data_dir))
    try:
        with _locked(prepared_dir):
            return _prepare_locked(cls, prepared_dir, config, raw, skip_bad_frames)
    except UserError:
        raise
    except Exception as error:
        fault = _write_fault(error, cls, prepared_dir, raw, why)
        if fault is None:
            raise
        raise fault from error


def _without_leftovers(
    cls: type[reid_builder.ReidBuilder], prepared_dir: str, config: str | None
) -> reid_builder.ReidBuilder:
    """Removes what an interrupted preparation left (under the lock); on a read-only folder
    they stay, with a warning."""
    try:
        with _locked(prepared_dir):
            builder = cls(data_dir=prepared_dir, config=config, file_format="tfrecord")
            remove_interrupted(builder)
            return builder
    except OSError as error:
        if errors.find_os_error(error, errors.NOT_WRITABLE_ERRNOS) is None:
            raise
        logging.warning(
            "%s: cannot remove the folders an interrupted preparation left in %s (%s); "
            "they do no harm",
            cls.TITLE,
            prepared_dir,
            error,
        )
        return cls(data_dir=prepared_dir, config=config, file_format="tfrecord")


def _prepare_locked(
    cls: type[reid_builder.ReidBuilder],
    prepared_dir: str,
    config: str | None,
    raw: str,
    skip_bad_frames: bool,
) -> reid_builder.ReidBuilder:
    """`prepare` with the lock held: checks again (another run may have prepared it
    meanwhile), then prepares; a failure leaves no half-written version folder."""
    builder = cls(data_dir=prepared_dir, config=config, file_format="tfrecord")
    remove_interrupted(builder)
    why = _outdated(builder, raw)
    if why is None:
        _log_reuse(builder, raw)
        return builder
    if _has_dataset_info(builder):
        logging.warning("%s: %s: %s; preparing it again", cls.TITLE, builder.data_dir, why)
        shutil.rmtree(builder.data_dir)
        builder = cls(data_dir=prepared_dir, config=config, file_format="tfrecord")
    builder.skip_bad_frames = skip_bad_frames
    logging.info("%s: preparing %s into %s (once)", cls.TITLE, raw, builder.data_dir)
    started = time.monotonic()
    existed = os.path.isdir(builder.data_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=raw), file_format="tfrecord"
        )
    except BaseException:
        # TFDS writes into `incomplete.*` and renames it at the end; whatever a failure left
        # (that folder, or a version folder that was not there before) was written by this
        # call: nothing of it may be taken as prepared later.
        remove_interrupted(builder, quiet=True)
        if not existed and os.path.isdir(builder.data_dir):
            shutil.rmtree(builder.data_dir, ignore_errors=True)
        raise
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

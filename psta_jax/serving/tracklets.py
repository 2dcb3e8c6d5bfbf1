"""New tracklets from disk: a folder of tracklet sub-folders, or a prepared TFDS split, as the
input pipeline's `TrackletStore` with names; and the frames of one tracklet for display.

A tracklet folder holds one sub-folder per tracklet with its frames as .jpg / .jpeg / .png
files, in natural name order (runs of digits compare as numbers: 2.jpg before 10.jpg, as the
dataset builders order frames). Identities and cameras come from `labels.csv` beside the
sub-folders (header `tracklet,pid,camera`, one row per sub-folder; a UTF-8 byte-order mark is
fine; a repeated row must repeat the same pid and camera) or, without it, from sub-folder
names `<pid>_<camera>_<anything>` (every name must match, else they stay unknown).

Bad input is a `ServingInputError` that names the folder or file: no sub-folders, a
sub-folder without frames, a frame that is not a JPEG or PNG by its first bytes (a WEBP or
BMP file named .jpg) or does not decode, a labels.csv that does not cover the sub-folders or
gives one tracklet two identities. Tracklets shorter than the clip length are fine: the test
sampler repeats frames (rrs and dense repeat the last frame / cycle, as on the datasets).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from psta_jax.datasets.raw_io import image_format
from psta_jax.runtime import atomic_files
from psta_jax.serving.errors import ServingInputError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("tracklet", "pid", "camera")
_NAME_LABELS = re.compile(r"^(-?\d+)_(\d+)_.+$")
_DIGITS = re.compile(r"(\d+)")
_DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class TrackletFolder:
    """A scanned tracklet folder: names (N,) and each tracklet's frame files in order.

    pids, camids: (N,) int64, or None when the folder does not say.
    """

    root: pathlib.Path
    names: tuple[str, ...]
    frame_paths: tuple[tuple[pathlib.Path, ...], ...]
    pids: np.ndarray | None
    camids: np.ndarray | None

    @property
    def num_frames(self) -> np.ndarray:
        return np.asarray([len(p) for p in self.frame_paths], np.int64)


def natural_key(name: str) -> tuple:
    """Sort key of a file name with its runs of digits compared as numbers: '2.jpg' before
    '10.jpg', 'f9_b' before 'f10_a'; names equal as numbers ('01' / '1') keep name order."""
    parts = _DIGITS.split(name)  # text, digits, text, ...: digits at odd positions
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def _frames_in(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
    frames = (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    return tuple(sorted(frames, key=lambda p: natural_key(p.name)))


def scan_folder(path: str | os.PathLike) -> TrackletFolder:
    """Lists the tracklets of `path` (see the module docstring) without reading frames."""
    root = pathlib.Path(path).resolve()
    if not root.is_dir():
        raise ServingInputError(
            f"{path}: not a folder; expected a folder with one sub-folder of frames per tracklet"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = _frames_in(root)
        hint = (
            f" It holds {len(loose)} frames directly: put them in a sub-folder (one per tracklet)."
            if loose
            else ""
        )
        raise ServingInputError(
            f"{root}: no tracklet sub-folders; expected one sub-folder of "
            f".jpg/.png frames per tracklet.{hint}"
        )
    frame_paths = tuple(_frames_in(folder) for folder in folders)
    empty = [folder.name for folder, frames in zip(folders, frame_paths, strict=True) if not frames]
    if empty:
        raise ServingInputError(
            f"{root}: {len(empty)} tracklet folder(s) hold no .jpg/.png frames: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; remove them or add "
            "frames"
        )
    names = tuple(folder.name for folder in folders)
    pids, camids = _labels(root, names)
    return TrackletFolder(root=root, names=names, frame_paths=frame_paths, pids=pids, camids=camids)


def _labels(root: pathlib.Path, names: Sequence[str]) -> tuple[np.ndarray | None, ...]:
    labels_path = root / LABELS_FILE
    if labels_path.exists():
        return _read_labels_csv(labels_path, names)
    matches = [_NAME_LABELS.match(name) for name in names]
    if all(matches):
        return (
            np.asarray([int(m.group(1)) for m in matches], np.int64),
            np.asarray([int(m.group(2)) for m in matches], np.int64),
        )
    return None, None


def _read_labels_csv(path: pathlib.Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    # utf-8-sig: spreadsheet programs start a CSV with a byte-order mark
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in LABEL_COLUMNS):
            raise ServingInputError(
                f"{path}: expected a header with columns "
                f"{','.join(LABEL_COLUMNS)}, got {reader.fieldnames}"
            )
        rows: dict[str, tuple[int, int]] = {}
        lines: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            try:
                labels = (int(row["pid"]), int(row["camera"]))
            except (TypeError, ValueError) as error:
                raise ServingInputError(
                    f"{path}, line {line}: pid and camera must be integers, got {row}"
                ) from error
            name = row["tracklet"]
            if name in rows and rows[name] != labels:
                raise ServingInputError(
                    f"{path}: tracklet {name!r} has two rows that disagree: line {lines[name]} "
                    f"(pid {rows[name][0]}, camera {rows[name][1]}) and line {line} (pid "
                    f"{labels[0]}, camera {labels[1]}); keep one row per tracklet"
                )
            rows.setdefault(name, labels)
            lines.setdefault(name, line)
    missing = [name for name in names if name not in rows]
    if missing:
        raise ServingInputError(
            f"{path}: no row for tracklet(s) {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; expected one row per "
            "sub-folder"
        )
    values = np.asarray([rows[name] for name in names], np.int64).reshape(-1, 2)
    return values[:, 0], values[:, 1]


def _check_frame(path: pathlib.Path) -> bytes:
    """The frame's bytes, once its first bytes say JPEG or PNG (what the input pipeline
    decodes, whatever the file's name says) and PIL decodes it."""
    encoded = path.read_bytes()
    if image_format(encoded) is None:
        actual = _other_format(encoded)
        if actual:
            raise ServingInputError(
                f"{path}: a {actual} image, not a JPEG or PNG image (by its first bytes, "
                "whatever its name says); expected a JPEG or PNG image: convert it (e.g. with "
                "PIL: Image.open(p).convert('RGB').save(q, 'JPEG'))"
            )
        raise ServingInputError(
            f"{path}: unreadable frame ({len(encoded)} bytes starting with {encoded[:8]!r}); "
            "expected a JPEG or PNG image"
        )
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
    except Exception as error:  # PIL raises many types for bad files
        raise ServingInputError(
            f"{path}: unreadable frame ({type(error).__name__}: {error}); "
            "expected a JPEG or PNG image"
        ) from error
    return encoded


def _other_format(encoded: bytes) -> str | None:
    """The format PIL recognises in `encoded` ('WEBP', 'BMP', ...), or None."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return image.format
    except Exception:  # not an image PIL knows
        return None


def read_store(folder: TrackletFolder):
    """Every frame's bytes as a `datasets.TrackletStore` (tracklet ids 0..N-1, pids and camids
    -1 when unknown); each frame is decoded once to check it."""
    from psta_jax import datasets  # noqa: PLC0415 (imports TensorFlow)

    encoded = []
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
        for frames in folder.frame_paths:
            atomic_files.raise_if_stopped()  # Ctrl-C between tracklets
            encoded.append(list(pool.map(_check_frame, frames)))
    return datasets.store_from_frames(encoded, folder.pids, folder.camids)


# ----------------------------------------------------------------------------- TFDS splits


def parse_split(spec: str) -> tuple[str, str]:
    """'mars:query' -> ('mars', 'query')."""
    dataset, _, split = spec.partition(":")
    if not dataset or split not in ("train", "query", "gallery"):
        raise ServingInputError(
            f"--split {spec!r}: expected DATASET:SPLIT with SPLIT one of train, query, gallery "
            "(e.g. mars:query)"
        )
    return dataset, split


def split_source(dataset_spec, split: str) -> dict[str, Any]:
    """The `source` record of an embeddings file for a split of a dataset (a
    `datasets.DatasetSpec`), paths made absolute: where `search --out` finds the frames."""
    fields = dataclasses.asdict(dataset_spec)
    fields["data_dir"] = os.path.abspath(fields["data_dir"])
    if fields["raw_dir"]:
        fields["raw_dir"] = os.path.abspath(fields["raw_dir"])
    fields["dataset"] = fields.pop("name")
    return {"kind": "tfds", "split": split, **fields}


def read_split(source: Mapping[str, Any]):
    """The TrackletStore of the split a `split_source` record names (prepared if needed)."""
    from psta_jax import datasets  # noqa: PLC0415 (imports TensorFlow)

    name = f"{source['dataset']}:{source['split']}"
    if source["dataset"] not in datasets.BUILDERS:
        raise ServingInputError(
            f"--split {name}: unknown dataset {source['dataset']!r}; expected one of "
            f"{sorted(datasets.BUILDERS)}"
        )
    fields = {f.name for f in dataclasses.fields(datasets.DatasetSpec)}
    spec = datasets.DatasetSpec(
        name=source["dataset"], **{k: v for k, v in source.items() if k in fields - {"name"}}
    )
    try:
        return datasets.open_split(spec, source["split"])
    except datasets.RawDataError as error:
        raise ServingInputError(f"--split {name}: {error}") from error


# ----------------------------------------------------------------------------- display


class FrameReader:
    """The frames of tracklets from an embeddings file's `source`, for retrieval sheets."""

    def __init__(self, source: Mapping[str, Any], names: Sequence[str]):
        self.source = dict(source)
        self.names = list(names)
        self._store = None

    def available(self) -> bool:
        kind = self.source.get("kind")
        if kind == "folder":
            return pathlib.Path(self.source["path"]).is_dir()
        return kind == "tfds"

    def frames(self, index: int, count: int) -> list[np.ndarray]:
        """Up to `count` evenly spaced frames of tracklet `index`, each (H, W, 3) uint8."""
        if self.source.get("kind") == "folder":
            paths = _frames_in(pathlib.Path(self.source["path"]) / self.names[index])
            if not paths:
                raise ServingInputError(
                    f"{self.source['path']}/{self.names[index]}: the tracklet's frames are gone"
                )
            from psta_jax.datasets.loading import evenly_spaced  # noqa: PLC0415

            picks = evenly_spaced(len(paths), count)
            return [np.asarray(Image.open(paths[i]).convert("RGB")) for i in picks]
        if self._store is None:
            self._store = read_split(self.source)
        return self._store.decoded_frames(index, count)

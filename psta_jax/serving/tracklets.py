"""New tracklets from disk: a folder of tracklet sub-folders, or a prepared TFDS split, as the
input pipeline's `TrackletStore` with names; and the frames of one tracklet for display.

A tracklet folder holds one sub-folder per tracklet with its frames as .jpg / .jpeg / .png
files, in name order. Identities and cameras come from `labels.csv` beside the sub-folders
(header `tracklet,pid,camera`, one row per sub-folder) or, without it, from sub-folder names
`<pid>_<camera>_<anything>` (every name must match, else they stay unknown).

Bad input is a `ServingInputError` that names the folder or file: no sub-folders, a
sub-folder without frames, a frame that does not decode, a labels.csv that does not cover the
sub-folders. Tracklets shorter than the clip length are fine: the test sampler repeats frames
(rrs and dense repeat the last frame / cycle, as on the datasets).
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

from psta_jax.serving.errors import ServingInputError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("tracklet", "pid", "camera")
_NAME_LABELS = re.compile(r"^(-?\d+)_(\d+)_.+$")
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


def _frames_in(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
    return tuple(sorted(p for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES))


def scan_folder(path: str | os.PathLike) -> TrackletFolder:
    """Lists the tracklets of `path` (see the module docstring) without reading frames."""
    root = pathlib.Path(path).resolve()
    if not root.is_dir():
        raise ServingInputError(f"{path}: not a folder; expected a folder with one sub-folder "
                                "of frames per tracklet")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = _frames_in(root)
        hint = (f" It holds {len(loose)} frames directly: put them in a sub-folder (one per "
                "tracklet)." if loose else "")
        raise ServingInputError(f"{root}: no tracklet sub-folders; expected one sub-folder of "
                                f".jpg/.png frames per tracklet.{hint}")
    frame_paths = tuple(_frames_in(folder) for folder in folders)
    empty = [folder.name for folder, frames in zip(folders, frame_paths, strict=True)
             if not frames]
    if empty:
        raise ServingInputError(
            f"{root}: {len(empty)} tracklet folder(s) hold no .jpg/.png frames: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; remove them or add "
            "frames")
    names = tuple(folder.name for folder in folders)
    pids, camids = _labels(root, names)
    return TrackletFolder(root=root, names=names, frame_paths=frame_paths, pids=pids,
                          camids=camids)


def _labels(root: pathlib.Path, names: Sequence[str]) -> tuple[np.ndarray | None, ...]:
    labels_path = root / LABELS_FILE
    if labels_path.exists():
        return _read_labels_csv(labels_path, names)
    matches = [_NAME_LABELS.match(name) for name in names]
    if all(matches):
        return (np.asarray([int(m.group(1)) for m in matches], np.int64),
                np.asarray([int(m.group(2)) for m in matches], np.int64))
    return None, None


def _read_labels_csv(path: pathlib.Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in LABEL_COLUMNS):
            raise ServingInputError(f"{path}: expected a header with columns "
                                    f"{','.join(LABEL_COLUMNS)}, got {reader.fieldnames}")
        rows = {}
        for line, row in enumerate(reader, start=2):
            try:
                rows[row["tracklet"]] = (int(row["pid"]), int(row["camera"]))
            except (TypeError, ValueError) as error:
                raise ServingInputError(f"{path}, line {line}: pid and camera must be integers, "
                                        f"got {row}") from error
    missing = [name for name in names if name not in rows]
    if missing:
        raise ServingInputError(f"{path}: no row for tracklet(s) {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''}; expected one row per "
                                "sub-folder")
    values = np.asarray([rows[name] for name in names], np.int64).reshape(-1, 2)
    return values[:, 0], values[:, 1]


def _check_frame(path: pathlib.Path) -> bytes:
    encoded = path.read_bytes()
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
    except Exception as error:  # PIL raises many types for bad files
        raise ServingInputError(f"{path}: unreadable frame ({type(error).__name__}: {error}); "
                                "expected a JPEG or PNG image") from error
    return encoded


def read_store(folder: TrackletFolder):
    """Every frame's bytes as an `input_pipeline.TrackletStore` (tracklet ids 0..N-1, pids and
    camids -1 when unknown); each frame is decoded once to check it."""
    import tensorflow as tf

    from psta_jax import input_pipeline

    paths = [p for frames in folder.frame_paths for p in frames]
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
        encoded = list(pool.map(_check_frame, paths))
    count = len(folder.names)
    unknown = np.full(count, -1, np.int64)
    return input_pipeline.TrackletStore(
        frames=tf.constant(encoded, dtype=tf.string),
        offsets=np.concatenate([[0], np.cumsum(folder.num_frames)]).astype(np.int64),
        pids=unknown if folder.pids is None else folder.pids,
        camids=unknown if folder.camids is None else folder.camids,
        tracklet_ids=np.arange(count, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- TFDS splits


def parse_split(spec: str) -> tuple[str, str]:
    """'mars:query' -> ('mars', 'query')."""
    dataset, _, split = spec.partition(":")
    if not dataset or split not in ("train", "query", "gallery"):
        raise ServingInputError(f"--split {spec!r}: expected DATASET:SPLIT with SPLIT one of "
                                "train, query, gallery (e.g. mars:query)")
    return dataset, split


def split_source(spec: str, *, data_dir: str, raw_dir: str | None = None,
                 builder_config: str | None = None) -> dict[str, Any]:
    """The `source` record of a TFDS split ('mars:query') prepared under `data_dir`."""
    dataset, split = parse_split(spec)
    return {"kind": "tfds", "dataset": dataset, "split": split,
            "data_dir": os.path.abspath(data_dir),
            "raw_dir": os.path.abspath(raw_dir) if raw_dir else None,
            "builder_config": builder_config or None}


def read_split(source: Mapping[str, Any]):
    """The TrackletStore of the TFDS split a `split_source` record names (prepared if needed)."""
    from psta_jax import datasets, input_pipeline

    name = f"{source['dataset']}:{source['split']}"
    if source["dataset"] not in datasets.BUILDERS:
        raise ServingInputError(f"--split {name}: unknown dataset {source['dataset']!r}; "
                                f"expected one of {sorted(datasets.BUILDERS)}")
    try:
        builder = datasets.build(source["dataset"], data_dir=source["data_dir"],
                                 raw_dir=source.get("raw_dir"),
                                 builder_config=source.get("builder_config"))
    except datasets.RawDataError as error:
        raise ServingInputError(f"--split {name}: {error}") from error
    return input_pipeline.load_tracklets(datasets.load_split(builder, source["split"]))


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
                raise ServingInputError(f"{self.source['path']}/{self.names[index]}: the "
                                        "tracklet's frames are gone")
            picks = np.unique(np.linspace(0, len(paths) - 1, num=min(count, len(paths)))
                              .astype(int))
            return [np.asarray(Image.open(paths[i]).convert("RGB")) for i in picks]
        from psta_jax.inspection import tracklet_frames

        if self._store is None:
            self._store = read_split(self.source)
        return tracklet_frames(self._store, index, count)

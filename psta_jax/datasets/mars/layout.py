"""MARS's raw layout as the tools that write it see it: folder and frame names, the split
files. The synthetic dataset and the miniature `dummy_data/` are written through it, so
both are read back by the builder exactly as the real MARS is.

    <root>/bbox_train/<pid4>/<pid4>C<c>T<tttt>F<fff>.jpg
    <root>/bbox_test/<pid4>/...              incl. "0000" (distractors) and "00-1" (junk)
    <root>/info/train_name.txt, test_name.txt, tracks_train_info.mat, tracks_test_info.mat,
          query_IDX.mat
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from psta_jax.datasets import raw_io


@dataclasses.dataclass(frozen=True)
class TrackletName:
    """A tracklet's place in MARS's naming: pid (0 distractor, -1 junk), camera (1-based),
    tracklet number T (1-based per pid and camera), the F number of its first frame."""

    pid: int
    camera: int
    number: int
    first_frame: int = 1


def folder_name(pid: int) -> str:
    """MARS person folder: 1 -> '0001', 0 -> '0000', -1 -> '00-1'."""
    return "00-1" if pid == -1 else f"{pid:04d}"


def frame_name(tracklet: TrackletName, frame: int) -> str:
    """'0001C1T0001F001.jpg' for frame F=`frame` of `tracklet`."""
    return f"{folder_name(tracklet.pid)}C{tracklet.camera}T{tracklet.number:04d}F{frame:03d}.jpg"


def write_split(
    root: str,
    image_folder: str,
    tracklets: Sequence[tuple[TrackletName, Iterable[bytes]]],
) -> np.ndarray:
    """Writes each tracklet's encoded frames under `root/image_folder` and the split's name
    list (`info/<split>_name.txt`); returns its track info, int32 N x 4 [start, end, pid,
    camera] with 1-based inclusive rows of the name list."""
    names, rows = [], []
    for tracklet, frames in tracklets:
        folder = os.path.join(root, image_folder, folder_name(tracklet.pid))
        os.makedirs(folder, exist_ok=True)
        start = len(names) + 1
        for offset, encoded in enumerate(frames):
            name = frame_name(tracklet, tracklet.first_frame + offset)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(encoded)
            names.append(name)
        rows.append([start, len(names), tracklet.pid, tracklet.camera])
    split = image_folder.removeprefix("bbox_")
    os.makedirs(os.path.join(root, "info"), exist_ok=True)
    with open(os.path.join(root, "info", f"{split}_name.txt"), "w") as f:
        f.write("".join(f"{name}\n" for name in names))
    return np.asarray(rows, np.int32).reshape(-1, 4)


def write_info(
    root: str, train_info: np.ndarray, test_info: np.ndarray, query_rows: Sequence[int]
) -> None:
    """The .mat split files: track infos and query_IDX (1-based rows of test_info)."""
    info = os.path.join(root, "info")
    os.makedirs(info, exist_ok=True)
    raw_io.write_mat(os.path.join(info, "tracks_train_info.mat"), {"track_train_info": train_info})
    raw_io.write_mat(os.path.join(info, "tracks_test_info.mat"), {"track_test_info": test_info})
    query = np.asarray(query_rows, np.uint16).reshape(1, -1)
    raw_io.write_mat(os.path.join(info, "query_IDX.mat"), {"query_IDX": query})


FrameWriter = Callable[[TrackletName, int], bytes]

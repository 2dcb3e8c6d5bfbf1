"""MARS (Zheng et al., ECCV 2016): video person re-ID, 6 cameras, 625 train / 636 test folders."""

from __future__ import annotations

import os

import numpy as np

from psta_jax.datasets import raw_io, reid_builder

LAYOUT = """\
<root>/                                   (default: data/MARS)
  bbox_train/<pid4>/<pid4>C<c>T<tttt>F<fff>.jpg     e.g. bbox_train/0001/0001C1T0001F001.jpg
  bbox_test/<pid4>/...                              incl. the "0000" and "00-1" folders
  info/train_name.txt  info/test_name.txt           one jpg name per line
  info/tracks_train_info.mat   (track_train_info: N x 4 [start, end, pid, camera], 1-based rows)
  info/tracks_test_info.mat    (track_test_info)
  info/query_IDX.mat           (query_IDX: 1-based rows of track_test_info)"""

INFO_FILES = (
    "train_name.txt",
    "test_name.txt",
    "tracks_train_info.mat",
    "tracks_test_info.mat",
    "query_IDX.mat",
)

_DESCRIPTION = """\
MARS video person re-identification: 1,261 identity folders (625 train, 636 test incl.
distractors "0000" and junk "00-1"), 20,478 tracklets from 6 cameras. Splits follow the
info/*.mat files: train (8,298 tracklets), query (1,980 rows of query_IDX) and gallery (the
other test rows, junk pid -1 dropped: 9,330 tracklets, distractor pid 0 kept). The gallery
excludes the query tracklets; the MARS evaluation protocol appends them.
"""


def _track_info(root: str, file_name: str, variable: str, num_names: int) -> np.ndarray:
    """Loads an N x 4 [start, end, pid, camera] table and checks its rows against the name list."""
    path = os.path.join(root, "info", file_name)
    info = raw_io.load_mat_variable("MARS", path, variable, LAYOUT)
    if info.shape[1] != 4:
        raise raw_io.CorruptRawDataError(
            f"MARS: {path}:{variable} should be N x 4 [start, end, pid, camera], got {info.shape}"
        )
    start, end, _, camera = info.T
    bad = (start < 1) | (end < start) | (end > num_names) | (camera < 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise raw_io.CorruptRawDataError(
            f"MARS: {path}:{variable} row {row} = {info[row].tolist()} is invalid: expected "
            f"1 <= start <= end <= {num_names} (lines of the name list) and camera >= 1"
        )
    return info


def _tracklets(root: str, image_folder: str, names: list[str], info: np.ndarray):
    def make(row: np.ndarray) -> reid_builder.Tracklet:
        start, end, pid, camera = (int(v) for v in row)
        # Rows are 1-based and inclusive; frame order is the name-list order (F may not start at 1).
        paths = tuple(
            os.path.join(root, image_folder, name[:4], name) for name in names[start - 1 : end]
        )
        return reid_builder.Tracklet(frame_paths=paths, pid=pid, camid=camera - 1)

    return [make(row) for row in info]


def mars_splits(root: str) -> dict[str, list[reid_builder.Tracklet]]:
    """Tracklets of MARS's train / query / gallery splits, read from `root`/info."""
    raw_io.require_exists("MARS", root, "dataset folder", LAYOUT, is_dir=True)
    for folder in ("bbox_train", "bbox_test", "info"):
        raw_io.require_exists(
            "MARS", os.path.join(root, folder), f"folder {folder!r}", LAYOUT, is_dir=True
        )
    names = {}
    for split in ("train", "test"):
        path = os.path.join(root, "info", f"{split}_name.txt")
        raw_io.require_exists("MARS", path, f"name list {split}_name.txt", LAYOUT, is_dir=False)
        names[split] = raw_io.read_lines(path)

    train_info = _track_info(root, "tracks_train_info.mat", "track_train_info", len(names["train"]))
    test_info = _track_info(root, "tracks_test_info.mat", "track_test_info", len(names["test"]))
    query_path = os.path.join(root, "info", "query_IDX.mat")
    query_rows = raw_io.load_mat_variable("MARS", query_path, "query_IDX", LAYOUT).reshape(-1) - 1
    if query_rows.size == 0 or query_rows.min() < 0 or query_rows.max() >= len(test_info):
        raise raw_io.CorruptRawDataError(
            f"MARS: {query_path}:query_IDX must hold 1-based rows of track_test_info "
            f"(1..{len(test_info)}), got range {query_rows.min() + 1}..{query_rows.max() + 1}"
        )
    if len(np.unique(query_rows)) != len(query_rows):
        raise raw_io.CorruptRawDataError(f"MARS: {query_path}:query_IDX repeats rows")
    if (test_info[query_rows, 2] <= 0).any():
        raise raw_io.CorruptRawDataError(
            f"MARS: {query_path}:query_IDX selects distractor (0) or junk (-1) tracklets"
        )

    is_query = np.zeros(len(test_info), bool)
    is_query[query_rows] = True
    is_gallery = ~is_query & (test_info[:, 2] != -1)  # Junk is dropped; distractors (0) stay.
    test_tracklets = _tracklets(root, "bbox_test", names["test"], test_info)
    return {
        "train": _tracklets(root, "bbox_train", names["train"], train_info),
        "query": [test_tracklets[row] for row in query_rows],
        "gallery": [test_tracklets[row] for row in np.flatnonzero(is_gallery)],
    }


class Builder(reid_builder.ReidBuilder):
    """MARS, built from the raw folder with `info/` from liangzheng06/MARS-evaluation."""

    TITLE = "MARS"
    RAW_FOLDER = "MARS"
    EVAL_PROTOCOL = "mars"
    RELEASE_TEST_SAMPLER = "begin_interval"
    NUM_CAMERAS = 6
    NUM_TRAIN_IDS = 625
    FINGERPRINT_FILES = tuple(f"info/{name}" for name in INFO_FILES)
    DESCRIPTION = _DESCRIPTION
    HOMEPAGE = "https://zheng-lab-anu.github.io/Project/project_mars.html"
    CITATION = """\
@inproceedings{zheng2016mars,
  title={MARS: A Video Benchmark for Large-Scale Person Re-identification},
  author={Zheng, Liang and Bie, Zhi and Sun, Yifan and Wang, Jingdong and Su, Chi and
          Wang, Shengjin and Tian, Qi},
  booktitle={ECCV},
  year={2016}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download bbox_train.zip and bbox_test.zip from the MARS project page
(https://zheng-lab-anu.github.io/Project/project_mars.html) and extract both into the raw
folder; copy the info/ folder from https://github.com/liangzheng06/MARS-evaluation (it is
not inside the image zips). Expected layout:
{LAYOUT}
"""

    def _scan_splits(self, root: str) -> dict[str, list[reid_builder.Tracklet]]:
        return mars_splits(root)

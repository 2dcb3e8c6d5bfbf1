"""LS-VID (Li et al., ICCV 2019): video person re-ID, 15 cameras, 842 train / 2,730 test ids.

The distributed layout, as the public loaders read it (the facts, their sources and where
the loaders disagree: docs/design.md, "LS-VID's layout, from its public loaders"): two list
files with one tracklet per line, `<prefix> <pid>`, whose frames are the image files named
`<prefix>*` in name order, the camera being the third '_'-separated field of a frame's name;
`test/data/info_test.mat` (MATLAB 7.3, i.e. HDF5) with `info_test` (one row per line of the
test list: first and last frame, pid, camera) and `query` (1-based rows of the test list). The
validation split (`tracklet_val/`, `info_val.mat`) is not read, as in every public loader.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence

import numpy as np

from psta_jax.datasets import raw_io, reid_builder

TITLE = "LS-VID"
LIST_FILES = {
    "train": "list_sequence/list_seq_train.txt",
    "test": "list_sequence/list_seq_test.txt",
}
INFO_FILE = "test/data/info_test.mat"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_PID = -1

LAYOUT = """\
<root>/                                   (default: data/LS-VID)
  list_sequence/list_seq_train.txt        one tracklet per line: "<prefix> <pid>", the prefix
  list_sequence/list_seq_test.txt         relative to <root>, e.g. tracklet_test/<folder>/<name>
  tracklet_train/<folder>/<prefix>*.jpg   a line's frames: the files named <prefix>*, in name
  tracklet_test/<folder>/...              order; camera 1..15 = 3rd '_' field of the name
  test/data/info_test.mat                 MATLAB 7.3: info_test (one row per test line: start,
                                          end, pid, camera) and query (1-based test lines)"""

_DESCRIPTION = """\
LS-VID video person re-identification: 3,772 identities, 14,943 tracklets from 15 cameras,
about 3 million frames (tracklets of about 200 frames). Splits follow list_sequence/ and
test/data/info_test.mat: train (list_seq_train.txt: 842 identities, 2,831 tracklets), query
(the 3,504 `query` rows of the test list) and gallery (the other 7,829 test tracklets;
2,730 test identities in all). The gallery excludes the query tracklets; the evaluation
protocol appends them, so the queries are ranked against the whole test set as the authors'
MATLAB evaluation ranks them. The validation split is not read.
"""


def _list_file(root: str, split: str) -> list[tuple[str, int]]:
    """(prefix, pid) of every line of a list file."""
    relative = LIST_FILES[split]
    path = os.path.join(root, relative)
    raw_io.require_exists(TITLE, path, f"list file {relative!r}", LAYOUT, is_dir=False)
    entries = []
    for number, line in enumerate(raw_io.read_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise raw_io.CorruptRawDataError(
                f"{TITLE}: {path} line {number} is {line!r}; expected '<prefix> <pid>' "
                "(the prefix of the tracklet's frame files, relative to the raw folder)"
            )
        entries.append((fields[0], int(fields[1])))
    if not entries:
        raise raw_io.CorruptRawDataError(f"{TITLE}: {path} lists no tracklets")
    return entries


def _info_test(root: str) -> tuple[np.ndarray, np.ndarray]:
    """info_test (N x 4 int64: start, end, pid, camera) and the query rows (0-based)."""
    path = os.path.join(root, INFO_FILE)
    raw_io.require_exists(TITLE, path, f"split file {INFO_FILE!r}", LAYOUT, is_dir=False)
    import h5py  # Deferred: only LS-VID's MATLAB 7.3 files need it.

    if h5py.is_hdf5(path):  # MATLAB 7.3: HDF5 stores MATLAB's N x 4 matrix as 4 x N.
        try:
            with h5py.File(path, "r") as f:
                missing = [name for name in ("info_test", "query") if name not in f]
                if missing:
                    raise raw_io.CorruptRawDataError(
                        f"{TITLE}: {path} has no variable(s) {missing} (found {sorted(f)})"
                    )
                info, query = np.asarray(f["info_test"]).T, np.asarray(f["query"])
        except OSError as e:
            raise raw_io.CorruptRawDataError(f"{TITLE}: cannot read {path}: {e}") from e
    else:  # An older MATLAB format (e.g. re-saved with -v7), read by scipy.
        info = raw_io.load_mat_variable(TITLE, path, "info_test", LAYOUT)
        query = raw_io.load_mat_variable(TITLE, path, "query", LAYOUT)
    if info.ndim != 2 or info.shape[1] != 4 or not np.array_equal(info, np.round(info)):
        raise raw_io.CorruptRawDataError(
            f"{TITLE}: {path}:info_test should be N x 4 integers [start, end, pid, camera], "
            f"got shape {info.shape}"
        )
    query = np.asarray(query).reshape(-1)
    if query.size == 0 or not np.array_equal(query, np.round(query)):
        raise raw_io.CorruptRawDataError(f"{TITLE}: {path}:query must hold 1-based row numbers")
    rows = query.astype(np.int64) - 1
    if rows.min() < 0 or rows.max() >= len(info) or len(np.unique(rows)) != len(rows):
        raise raw_io.CorruptRawDataError(
            f"{TITLE}: {path}:query must hold distinct 1-based rows of info_test "
            f"(1..{len(info)}), got {len(rows)} values in {rows.min() + 1}..{rows.max() + 1}"
        )
    return info.astype(np.int64), rows


class _Folders:
    """Each frame folder listed once (sorted names); a prefix's frames found by bisection."""

    def __init__(self, root: str):
        self.root = root
        self._names: dict[str, list[str]] = {}

    def frames(self, prefix: str, where: str) -> tuple[str, ...]:
        folder = os.path.join(self.root, os.path.dirname(prefix))
        if folder not in self._names:
            raw_io.require_exists(TITLE, folder, f"frame folder of {where}", LAYOUT, is_dir=True)
            self._names[folder] = sorted(raw_io.list_images(folder, IMAGE_EXTENSIONS))
        names, stem = self._names[folder], os.path.basename(prefix)
        start = bisect.bisect_left(names, stem)
        end = start
        while end < len(names) and names[end].startswith(stem):
            end += 1
        if start == end:
            raise raw_io.CorruptRawDataError(
                f"{TITLE}: no frame file {stem}* in {folder} ({where})\n"
                f"Expected layout of the {TITLE} raw folder:\n{LAYOUT}"
            )
        return tuple(os.path.join(folder, name) for name in names[start:end])


def frame_camera(file_name: str) -> int:
    """The 1-based camera of a frame: the third '_'-separated field of its name."""
    fields = os.path.splitext(file_name)[0].split("_")
    if len(fields) < 4 or not fields[2].isdigit():
        raise raw_io.CorruptRawDataError(
            f"{TITLE}: frame file name {file_name!r} has no camera; expected "
            "<a>_<b>_<camera>_<d>... with the camera (1..15) as its third '_' field"
        )
    return int(fields[2])


def _tracklet(folders: _Folders, prefix: str, pid: int, where: str) -> reid_builder.Tracklet:
    paths = folders.frames(prefix, where)
    cameras = {frame_camera(os.path.basename(path)) for path in paths}
    if len(cameras) != 1 or min(cameras) < 1:
        raise raw_io.CorruptRawDataError(
            f"{TITLE}: the frames {prefix}* ({where}) come from cameras {sorted(cameras)}; "
            "a tracklet has one camera, numbered from 1"
        )
    return reid_builder.Tracklet(frame_paths=paths, pid=pid, camid=cameras.pop() - 1)


def _check_info_matches_list(
    info: np.ndarray, test: Sequence[tuple[str, int]], tracklets: Sequence[reid_builder.Tracklet]
) -> None:
    """info_test's rows are the test list's lines: same count, pids and cameras."""
    path = f"{INFO_FILE}:info_test"
    if len(info) != len(test):
        raise raw_io.CorruptRawDataError(
            f"{TITLE}: {path} has {len(info)} rows but {LIST_FILES['test']} has {len(test)} "
            "lines; they describe the same tracklets, row by line"
        )
    for row, ((prefix, pid), tracklet) in enumerate(zip(test, tracklets, strict=True)):
        if info[row, 2] != pid or info[row, 3] != tracklet.camid + 1:
            raise raw_io.CorruptRawDataError(
                f"{TITLE}: {path} row {row + 1} has pid {info[row, 2]}, camera {info[row, 3]}, "
                f"but line {row + 1} of {LIST_FILES['test']} ({prefix}) has pid {pid}, camera "
                f"{tracklet.camid + 1}; the two files come from different copies of LS-VID"
            )


def lsvid_splits(root: str) -> dict[str, list[reid_builder.Tracklet]]:
    """Tracklets of LS-VID's train / query / gallery splits under `root`."""
    raw_io.require_exists(TITLE, root, "dataset folder", LAYOUT, is_dir=True)
    train_lines, test_lines = _list_file(root, "train"), _list_file(root, "test")
    info, query_rows = _info_test(root)
    folders = _Folders(root)

    def where(split: str, number: int) -> str:
        return f"line {number} of {LIST_FILES[split]}"

    train = [
        _tracklet(folders, prefix, pid, where("train", number))
        for number, (prefix, pid) in enumerate(train_lines, start=1)
        if pid != JUNK_PID
    ]
    test = [
        _tracklet(folders, prefix, pid, where("test", number))
        for number, (prefix, pid) in enumerate(test_lines, start=1)
    ]
    _check_info_matches_list(info, test_lines, test)
    if any(test[row].pid == JUNK_PID for row in query_rows):
        raise raw_io.CorruptRawDataError(f"{TITLE}: {INFO_FILE}:query selects junk (pid -1) rows")
    is_query = np.zeros(len(test), bool)
    is_query[query_rows] = True
    return {
        "train": train,
        "query": [test[row] for row in query_rows],
        "gallery": [t for t, q in zip(test, is_query, strict=True) if not q and t.pid != JUNK_PID],
    }


class Builder(reid_builder.ReidBuilder):
    """LS-VID from its list_sequence/ files, tracklet folders and test/data/info_test.mat."""

    TITLE = TITLE
    RAW_FOLDER = "LS-VID"
    # Queries appended to the gallery: BiCnet-TKS's LS-VID evaluation, and the whole test set
    # that the authors' MATLAB evaluation ranks (its AP is `mars_matlab`'s).
    EVAL_PROTOCOL = "mars"
    # The release has no LS-VID recipe; its MARS test sampler (see configs/lsvid.py).
    RELEASE_TEST_SAMPLER = "begin_interval"
    NUM_CAMERAS = 15
    NUM_TRAIN_IDS = 842
    FINGERPRINT_FILES = (*LIST_FILES.values(), INFO_FILE)
    DESCRIPTION = _DESCRIPTION
    HOMEPAGE = "https://www.pkuvmc.com/dataset.html"
    CITATION = """\
@inproceedings{li2019global,
  title={Global-Local Temporal Representations for Video Person Re-Identification},
  author={Li, Jianing and Wang, Jingdong and Tian, Qi and Gao, Wen and Zhang, Shiliang},
  booktitle={ICCV},
  year={2019}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
LS-VID is distributed on request by its authors (Peking University): ask for it at
https://www.pkuvmc.com/dataset.html (data/README.md, "LS-VID") and extract the archive into
the raw folder. Expected layout:
{LAYOUT}
"""

    def _scan_splits(self, root: str) -> dict[str, list[reid_builder.Tracklet]]:
        return lsvid_splits(root)

"""Writes `dummy_data/`: a miniature LS-VID in its raw layout (python -m ...lsvid.make_dummy_data).

train: 3 tracklets (pid 1 in cameras 3 and 12, two prefixes in one folder; pid 5 from frame
0009) and one junk line (pid -1, dropped). test: pid 0 (a real identity in LS-VID) in cameras
1 and 7, pid 2 in cameras 1, 15, 15; query = test rows 3 and 1 (in that order), gallery = the
other 3 rows. test/data/info_test.mat is a MATLAB 7.3 (HDF5) file, as distributed.
"""

from __future__ import annotations

import os

import numpy as np

from psta_jax.datasets import fake_raw

# (prefix relative to the raw folder, pid, camera 1-based, first frame, number of frames).
TRAIN = [
    ("tracklet_train/0001/0001_001_03", 1, 3, 1, 3),
    ("tracklet_train/0001/0001_002_12", 1, 12, 1, 2),
    ("tracklet_train/0005/0005_001_04", 5, 4, 9, 3),  # 0009..0011: name order is frame order.
    ("tracklet_train/0009/0009_001_02", -1, 2, 1, 2),  # Junk: dropped.
]
TEST = [
    ("tracklet_test/0000/0000_001_01", 0, 1, 1, 2),
    ("tracklet_test/0000/0000_002_07", 0, 7, 1, 3),
    ("tracklet_test/0002/0002_001_01", 2, 1, 1, 2),
    ("tracklet_test/0002/0002_002_15", 2, 15, 1, 2),
    ("tracklet_test/0002/0002_003_15", 2, 15, 1, 2),
]
QUERY_ROWS = [3, 1]  # 1-based rows of TEST.

MATLAB_73_HEADER = b"MATLAB 7.3 MAT-file, written by psta_jax HDF5 schema 1.00 ."
USERBLOCK = 512


def frame_file(prefix: str, frame: int) -> str:
    """'<prefix>_<ffff>.jpg': the frame's name, its camera the third '_' field."""
    return f"{prefix}_{frame:04d}.jpg"


def write_tracklets(root: str, name: str, tracklets: list[tuple], tint: int) -> None:
    lines = []
    for row, (prefix, pid, _camera, first, length) in enumerate(tracklets):
        for frame in range(first, first + length):
            path = os.path.join(root, frame_file(prefix, frame))
            fake_raw.write_frame(path, frame, "jpeg", tint + 30 * row)
        lines.append(f"{prefix} {pid}")
    fake_raw.write_text(os.path.join(root, "list_sequence", name), lines)


def write_info_test(path: str, info: np.ndarray, query_rows: list[int]) -> None:
    """A MATLAB 7.3 file as MATLAB writes one: HDF5 behind a 512-byte text header, each
    matrix transposed (MATLAB is column-major), doubles tagged with MATLAB_class."""
    import h5py

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w", userblock_size=USERBLOCK, libver="earliest") as f:
        for name, matrix in (("info_test", info), ("query", np.asarray([query_rows]))):
            data = f.create_dataset(name, data=matrix.T.astype(np.float64), track_times=False)
            data.attrs["MATLAB_class"] = np.bytes_(b"double")
    with open(path, "r+b") as f:
        f.write(MATLAB_73_HEADER.ljust(USERBLOCK - 4, b" ") + b"\0\0\0\0")


def write(root: str) -> None:
    write_tracklets(root, "list_seq_train.txt", TRAIN, tint=0)
    write_tracklets(root, "list_seq_test.txt", TEST, tint=150)
    lengths = np.asarray([length for *_, length in TEST])
    end = np.cumsum(lengths)
    info = np.stack([end - lengths + 1, end, [t[1] for t in TEST], [t[2] for t in TEST]], 1)
    write_info_test(os.path.join(root, "test", "data", "info_test.mat"), info, QUERY_ROWS)


def main() -> None:
    fake_raw.run_cli(write, __file__, __doc__)


if __name__ == "__main__":
    main()

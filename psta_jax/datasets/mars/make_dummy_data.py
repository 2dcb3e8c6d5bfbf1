"""Writes `dummy_data/`: a miniature MARS in its raw layout (python -m ...mars.make_dummy_data).

train: 3 tracklets (pids 1, 3; one starts at F002). test rows: junk (-1), a distractor (0),
pid 2 (cam 1, cam 2 x2) and pid 4 (cam 1, cam 3); query_IDX = rows 3, 4, 6, so
query = 3 tracklets and gallery = distractor + 0002C2T0002 + 0004C3T0001 = 3 tracklets.
"""

from __future__ import annotations

import os

import numpy as np

from psta_jax.datasets import fake_raw, raw_io

# (pid, camera 1-based, tracklet number, first F, number of frames), in name-list order.
TRAIN = [(1, 1, 1, 1, 3), (1, 2, 1, 2, 2), (3, 1, 1, 1, 2)]
TEST = [(-1, 1, 1, 1, 2), (0, 2, 1, 1, 2), (2, 1, 1, 1, 3), (2, 2, 1, 1, 2), (2, 2, 2, 1, 2),
        (4, 1, 1, 1, 2), (4, 3, 1, 1, 2)]  # fmt: skip
QUERY_ROWS = [3, 4, 6]  # 1-based rows of TEST.


def folder_name(pid: int) -> str:
    """MARS person folder: 1 -> '0001', 0 -> '0000', -1 -> '00-1'."""
    return "00-1" if pid == -1 else f"{pid:04d}"


def write_split(root: str, image_folder: str, tracks: list[tuple]) -> tuple[list, np.ndarray]:
    names, rows = [], []
    for row, (pid, camera, tracklet, first, length) in enumerate(tracks):
        start = len(names) + 1
        for frame in range(first, first + length):
            name = f"{folder_name(pid)}C{camera}T{tracklet:04d}F{frame:03d}.jpg"
            fake_raw.write_frame(
                os.path.join(root, image_folder, folder_name(pid), name), frame, "jpeg", 30 * row
            )
            names.append(name)
        rows.append([start, len(names), pid, camera])
    return names, np.asarray(rows, np.int32)


def write(root: str) -> None:
    train_names, train_info = write_split(root, "bbox_train", TRAIN)
    test_names, test_info = write_split(root, "bbox_test", TEST)
    info = os.path.join(root, "info")
    fake_raw.write_text(os.path.join(info, "train_name.txt"), train_names)
    fake_raw.write_text(os.path.join(info, "test_name.txt"), test_names)
    raw_io.write_mat(os.path.join(info, "tracks_train_info.mat"), {"track_train_info": train_info})
    raw_io.write_mat(os.path.join(info, "tracks_test_info.mat"), {"track_test_info": test_info})
    query_idx = np.asarray([QUERY_ROWS], np.uint16)
    raw_io.write_mat(os.path.join(info, "query_IDX.mat"), {"query_IDX": query_idx})


def main() -> None:
    fake_raw.run_cli(write, __file__, __doc__)


if __name__ == "__main__":
    main()

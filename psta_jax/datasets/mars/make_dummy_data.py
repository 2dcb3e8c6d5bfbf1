"""Writes `dummy_data/`: a miniature MARS in its raw layout (python -m ...mars.make_dummy_data).

train: 3 tracklets (pids 1, 3; one starts at F002). test rows: junk (-1), a distractor (0),
pid 2 (cam 1, cam 2 x2) and pid 4 (cam 1, cam 3); query_IDX = rows 3, 4, 6, so
query = 3 tracklets and gallery = distractor + 0002C2T0002 + 0004C3T0001 = 3 tracklets.
"""

from __future__ import annotations

from psta_jax.datasets import fake_raw
from psta_jax.datasets.mars import layout

# (pid, camera 1-based, tracklet number, first F, number of frames), in name-list order.
TRAIN = [(1, 1, 1, 1, 3), (1, 2, 1, 2, 2), (3, 1, 1, 1, 2)]
TEST = [(-1, 1, 1, 1, 2), (0, 2, 1, 1, 2), (2, 1, 1, 1, 3), (2, 2, 1, 1, 2), (2, 2, 2, 1, 2),
        (4, 1, 1, 1, 2), (4, 3, 1, 1, 2)]  # fmt: skip
QUERY_ROWS = [3, 4, 6]  # 1-based rows of TEST.


def _tracklets(tracks: list[tuple]) -> list[tuple[layout.TrackletName, list[bytes]]]:
    """Each tracklet with its fake frames, tinted by its row (no two share bytes)."""
    return [
        (
            layout.TrackletName(pid, camera, number, first),
            [fake_raw.frame_bytes(f, "jpeg", 30 * row) for f in range(first, first + length)],
        )
        for row, (pid, camera, number, first, length) in enumerate(tracks)
    ]


def write(root: str) -> None:
    train_info = layout.write_split(root, "bbox_train", _tracklets(TRAIN))
    test_info = layout.write_split(root, "bbox_test", _tracklets(TEST))
    layout.write_info(root, train_info, test_info, QUERY_ROWS)


def main() -> None:
    fake_raw.run_cli(write, __file__, __doc__)


if __name__ == "__main__":
    main()

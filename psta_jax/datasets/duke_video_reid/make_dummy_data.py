"""Writes `dummy_data/`: a miniature DukeMTMC-VideoReID (python -m ...make_dummy_data).

train: 3 tracklets (one in the old file-name form). query: pids 2 and 7, one tracklet each.
gallery: copies of both queries, a second tracklet of each in another camera, and a
distractor id (99, 'D' frames): 5 tracklets.
"""

from __future__ import annotations

import os

from psta_jax.datasets import fake_raw

# (split, pid, tracklet folder, camera, first F, number of frames, old name form, marker).
TRACKLETS = [
    ("train", 1, 1, 1, 1, 3, False, "X"),
    ("train", 1, 2, 2, 1, 2, False, "X"),
    ("train", 5, 1, 3, 9, 3, True, "X"),  # F0009..F0011, old form "0005C3F0009X00108.jpg".
    ("query", 2, 1, 1, 1, 2, False, "X"),
    ("query", 7, 1, 4, 1, 2, False, "X"),
    ("gallery", 2, 1, 1, 1, 2, False, "X"),  # Copy of the query.
    ("gallery", 2, 2, 2, 1, 3, False, "X"),
    ("gallery", 7, 1, 4, 1, 2, False, "X"),  # Copy of the query.
    ("gallery", 7, 2, 8, 1, 2, False, "X"),
    ("gallery", 99, 1, 5, 1, 2, False, "D"),
]


def frame_file(pid: int, camera: int, frame: int, old_form: bool, marker: str) -> str:
    if old_form:
        return f"{pid:04d}C{camera}F{frame:04d}{marker}{12 * frame:05d}.jpg"
    return f"{pid:04d}_C{camera}_F{frame:04d}_{marker}{12 * frame:05d}.jpg"


def write(root: str) -> None:
    for split, pid, tracklet, camera, first, length, old_form, marker in TRACKLETS:
        # A query and its gallery copy are the same files: same tint.
        tint = 40 * pid + 10 * tracklet
        folder = os.path.join(root, split, f"{pid:04d}", f"{tracklet:04d}")
        for frame in range(first, first + length):
            name = frame_file(pid, camera, frame, old_form, marker)
            fake_raw.write_frame(os.path.join(folder, name), frame, "jpeg", tint)


def main() -> None:
    fake_raw.run_cli(write, __file__, __doc__)


if __name__ == "__main__":
    main()

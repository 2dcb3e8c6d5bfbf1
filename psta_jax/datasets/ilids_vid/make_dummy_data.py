"""Writes `dummy_data/`: a miniature iLIDS-VID (python -m ...ilids_vid.make_dummy_data).

4 persons (person001, person002, person010, person123), one PNG sequence per camera, and a
10 x 4 ls_set: every split has 2 train persons (4 tracklets), 2 query and 2 gallery tracklets.
"""

from __future__ import annotations

import os

from psta_jax.datasets import fake_raw, raw_io

PERSONS = ["person001", "person002", "person010", "person123"]
# Frame numbers per (camera, person index), where they differ from DEFAULT_FRAMES: sequences
# need not start at frame 1 and have different lengths in the two cameras.
FRAMES = {("cam1", 0): [8, 9, 10], ("cam2", 2): [1, 2, 3, 4]}
DEFAULT_FRAMES = [1, 2]


def write(root: str) -> None:
    sequences = os.path.join(root, "i-LIDS-VID", "sequences")
    for c, cam in enumerate(("cam1", "cam2")):
        for i, person in enumerate(PERSONS):
            for frame in FRAMES.get((cam, i), DEFAULT_FRAMES):
                path = os.path.join(sequences, cam, person, f"{cam}_{person}_{frame:05d}.png")
                fake_raw.write_frame(path, frame, "png", tint=60 * i + 30 * c)
    splits = os.path.join(root, "train-test people splits")
    os.makedirs(splits, exist_ok=True)
    ls_set = fake_raw.permutation_table(10, len(PERSONS), seed=0)
    raw_io.write_mat(os.path.join(splits, "train_test_splits_ilidsvid.mat"), {"ls_set": ls_set})


def main() -> None:
    fake_raw.run_cli(write, __file__, __doc__)


if __name__ == "__main__":
    main()

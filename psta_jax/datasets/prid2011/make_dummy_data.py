"""Writes `dummy_data/`: a miniature PRID-2011 (python -m ...prid2011.make_dummy_data).

cam_a: person_0001..0005 and person_0300 (cam_a only); cam_b: person_0001..0005 and
person_0400 (cam_b only). splits_prid2011.json (torchreid format) holds 10 splits over
persons 1..4 (person_0005 plays a person outside the standard subset): 2 train persons
(4 tracklets), 2 query and 2 gallery tracklets per split.
"""

from __future__ import annotations

import json
import os

import numpy as np

from psta_jax.datasets import fake_raw

CAM_PERSONS = {"cam_a": [1, 2, 3, 4, 5, 300], "cam_b": [1, 2, 3, 4, 5, 400]}
SPLIT_PERSONS = [1, 2, 3, 4]
FRAMES = {("cam_a", 2): [1, 2, 3]}
DEFAULT_FRAMES = [1, 2]


def person_folder(pid: int) -> str:
    return f"person_{pid:04d}"


def write_sequences(root: str, frames: dict, default_frames: list[int]) -> None:
    """PNG sequences of `CAM_PERSONS`; `frames[(cam, pid)]` overrides the frame numbers."""
    multi_shot = os.path.join(root, "prid_2011", "multi_shot")
    for c, (cam, pids) in enumerate(CAM_PERSONS.items()):
        for pid in pids:
            for frame in frames.get((cam, pid), default_frames):
                path = os.path.join(multi_shot, cam, person_folder(pid), f"{frame:04d}.png")
                fake_raw.write_frame(path, frame, "png", tint=40 * pid + 20 * c)


def split_json(persons: list[int], num_splits: int = 10, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(num_splits):
        order = [person_folder(persons[i]) for i in rng.permutation(len(persons))]
        half = len(order) // 2
        splits.append({"train": sorted(order[half:]), "test": sorted(order[:half])})
    return splits


def write(root: str) -> None:
    write_sequences(root, FRAMES, DEFAULT_FRAMES)
    with open(os.path.join(root, "splits_prid2011.json"), "w") as f:
        json.dump(split_json(SPLIT_PERSONS), f)


def main() -> None:
    fake_raw.run_cli(write, __file__, __doc__)


if __name__ == "__main__":
    main()

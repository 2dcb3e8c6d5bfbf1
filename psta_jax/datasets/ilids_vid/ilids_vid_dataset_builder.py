"""iLIDS-VID (Wang et al., ECCV 2014): 300 persons, 2 cameras, 10 standard train/test splits."""

from __future__ import annotations

import os

from psta_jax.datasets import raw_io, reid_builder

SPLIT_FILE = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")

LAYOUT = """\
<root>/                                   (default: data/iLIDS-VID)
  i-LIDS-VID/sequences/cam1/personNNN/cam1_personNNN_<frame5>.png
  i-LIDS-VID/sequences/cam2/personNNN/cam2_personNNN_<frame5>.png
  train-test people splits/train_test_splits_ilidsvid.mat   (ls_set: 10 x 300)"""

_DESCRIPTION = """\
iLIDS-VID: 300 persons, one sequence per camera (cam1, cam2). Each of the 10 standard splits
(train_test_splits_ilidsvid.mat, ls_set) puts 150 persons in train (both cameras: 300
tracklets) and 150 in test: query = their cam1 sequences, gallery = their cam2 sequences.
Frames are sorted by frame number.
"""


def _person_id(folder: str) -> int:
    digits = folder.removeprefix("person")
    if not digits.isdigit():
        raise raw_io.CorruptRawDataError(
            f"iLIDS-VID: unexpected person folder {folder!r}; expected personNNN"
        )
    return int(digits)


def ilids_vid_splits(root: str, index: int) -> dict[str, list[reid_builder.Tracklet]]:
    """Tracklets of standard split `index` (0..9)."""
    raw_io.require_exists("iLIDS-VID", root, "dataset folder", LAYOUT, is_dir=True)
    cam_dirs = [os.path.join(root, "i-LIDS-VID", "sequences", cam) for cam in ("cam1", "cam2")]
    for cam_dir in cam_dirs:
        raw_io.require_exists("iLIDS-VID", cam_dir, "sequence folder", LAYOUT, is_dir=True)
    ls_set = raw_io.load_mat_variable("iLIDS-VID", os.path.join(root, SPLIT_FILE), "ls_set", LAYOUT)
    people = raw_io.list_subdirs(cam_dirs[0])
    if index >= len(ls_set) or ls_set.shape[1] != len(people):
        raise raw_io.CorruptRawDataError(
            f"iLIDS-VID: {SPLIT_FILE} ls_set has shape {ls_set.shape}; expected at least "
            f"{index + 1} rows of {len(people)} entries (one per cam1 person folder in "
            f"{cam_dirs[0]})"
        )
    for person in people:
        raw_io.require_exists(
            "iLIDS-VID", os.path.join(cam_dirs[1], person), "cam2 sequence", LAYOUT, is_dir=True
        )
    try:
        train, test = reid_builder.ls_set_split(ls_set, people, index)
    except raw_io.CorruptRawDataError as e:
        raise raw_io.CorruptRawDataError(f"iLIDS-VID: {SPLIT_FILE}: {e}") from None

    def sequence(person: str, camid: int) -> reid_builder.Tracklet:
        folder = os.path.join(cam_dirs[camid], person)
        return reid_builder.sequence_tracklet("iLIDS-VID", folder, _person_id(person), camid)

    return {
        "train": [sequence(p, camid) for p in train for camid in (0, 1)],
        "query": [sequence(p, 0) for p in test],
        "gallery": [sequence(p, 1) for p in test],
    }


class Builder(reid_builder.ReidBuilder):
    """iLIDS-VID, one builder config per standard split."""

    BUILDER_CONFIGS = reid_builder.split_configs(10)
    TITLE = "iLIDS-VID"
    RAW_FOLDER = "iLIDS-VID"
    EVAL_PROTOCOL = "ilids_vid"
    RELEASE_TEST_SAMPLER = "begin_interval"
    NUM_CAMERAS = 2
    NUM_TRAIN_IDS = 150
    FINGERPRINT_FILES = (SPLIT_FILE,)
    DESCRIPTION = _DESCRIPTION
    HOMEPAGE = "https://xiatian-zhu.github.io/downloads_qmul_iLIDS-VID_ReID_dataset.html"
    CITATION = """\
@inproceedings{wang2014person,
  title={Person Re-Identification by Video Ranking},
  author={Wang, Taiqing and Gong, Shaogang and Zhu, Xiatian and Wang, Shengjin},
  booktitle={ECCV},
  year={2014}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download iLIDS-VID.tar from the dataset page
(https://xiatian-zhu.github.io/downloads_qmul_iLIDS-VID_ReID_dataset.html) and extract it
into the raw folder; the tarball contains both i-LIDS-VID/ and "train-test people splits/".
Expected layout:
{LAYOUT}
"""

    def _scan_splits(self, root: str) -> dict[str, list[reid_builder.Tracklet]]:
        return ilids_vid_splits(root, reid_builder.split_index(self.builder_config))

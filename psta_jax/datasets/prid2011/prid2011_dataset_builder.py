"""PRID-2011 (Hirzer et al., SCIA 2011), multi-shot: the standard 178-person subset, 10 splits."""

from __future__ import annotations

import json
import os

from psta_jax.datasets import raw_io, reid_builder

JSON_SPLIT_FILE = "splits_prid2011.json"
MAT_SPLIT_FILES = (
    "train_test_splits_prid.mat",
    os.path.join("train-test people splits", "train_test_splits_prid.mat"),
)
# Persons kept for the standard protocol: sequences of at least this many frames in both
# cameras (gives the 178 persons of the standard splits).
MIN_FRAMES = 27

LAYOUT = """\
<root>/                                   (default: data/prid2011)
  prid_2011/multi_shot/cam_a/person_XXXX/NNNN.png
  prid_2011/multi_shot/cam_b/person_XXXX/NNNN.png
  splits_prid2011.json                    (torchreid format: 10 x {"train": [...], "test": [...]})
  or train_test_splits_prid.mat           (ls_set: 10 x 178; also looked for in
                                           "train-test people splits/")"""

_SPLIT_FILE_SOURCE = """\
PRID-2011's standard splits are not in the TU Graz zip. Get either
  splits_prid2011.json (torchreid format; a copy is in github.com/AsuradaYuci/CNN-RNN2016), or
  train_test_splits_prid.mat (inside iLIDS-VID.tar, folder "train-test people splits/")
and put it in the PRID-2011 raw folder."""

_DESCRIPTION = """\
PRID-2011 multi-shot: two cameras (cam_a: 385 persons, cam_b: 749). The standard protocol
keeps the 178 persons with at least 27 frames in both cameras; each of the 10 splits puts 89
in train (both cameras: 178 tracklets) and 89 in test: query = their cam_a sequences,
gallery = their cam_b sequences. Frames are sorted by frame number.
"""


def _person_id(folder: str) -> int:
    digits = folder.removeprefix("person_")
    if not digits.isdigit():
        raise raw_io.CorruptRawDataError(
            f"PRID-2011: unexpected person folder {folder!r}; expected person_XXXX"
        )
    return int(digits)


def standard_persons(cam_dirs: tuple[str, str]) -> list[str]:
    """Sorted person folders with >= MIN_FRAMES frames in both cameras (the 178-person set)."""
    common = sorted(set(raw_io.list_subdirs(cam_dirs[0])) & set(raw_io.list_subdirs(cam_dirs[1])))
    return [
        person
        for person in common
        if all(
            len(raw_io.list_images(os.path.join(d, person), (".png",))) >= MIN_FRAMES
            for d in cam_dirs
        )
    ]


def _json_split(path: str, index: int) -> tuple[list[str], list[str]]:
    try:
        with open(path) as f:
            splits = json.load(f)
        split = splits[index]
        train, test = list(split["train"]), list(split["test"])
    except (ValueError, LookupError, TypeError) as e:
        raise raw_io.CorruptRawDataError(
            f"PRID-2011: {path} should hold a list of 10 {{'train': [...], 'test': [...]}} "
            f"dicts of person folder names; cannot read split {index}: {e!r}"
        ) from e
    return train, test


def _mat_split(path: str, index: int, cam_dirs: tuple[str, str]) -> tuple[list[str], list[str]]:
    ls_set = raw_io.load_mat_variable("PRID-2011", path, "ls_set", LAYOUT)
    persons = standard_persons(cam_dirs)
    if index >= len(ls_set) or ls_set.shape[1] != len(persons):
        raise raw_io.CorruptRawDataError(
            f"PRID-2011: {path} ls_set has shape {ls_set.shape}; expected at least {index + 1} "
            f"rows of {len(persons)} entries (the persons with >= {MIN_FRAMES} frames in both "
            "cameras)"
        )
    try:
        return reid_builder.ls_set_split(ls_set, persons, index)
    except raw_io.CorruptRawDataError as e:
        raise raw_io.CorruptRawDataError(f"PRID-2011: {path}: {e}") from None


def split_persons(root: str, index: int, cam_dirs: tuple[str, str]) -> tuple[list, list]:
    """(train, test) person folders of split `index`, from the json or else the .mat file."""
    json_path = os.path.join(root, JSON_SPLIT_FILE)
    if os.path.isfile(json_path):
        return _json_split(json_path, index)
    for name in MAT_SPLIT_FILES:
        if os.path.isfile(os.path.join(root, name)):
            return _mat_split(os.path.join(root, name), index, cam_dirs)
    raise raw_io.MissingRawDataError(
        f"PRID-2011: no split file in {root}: looked for {JSON_SPLIT_FILE} and "
        f"{' / '.join(MAT_SPLIT_FILES)}.\n{_SPLIT_FILE_SOURCE}\nExpected layout:\n{LAYOUT}"
    )


def prid2011_splits(root: str, index: int) -> dict[str, list[reid_builder.Tracklet]]:
    """Tracklets of standard split `index` (0..9)."""
    raw_io.require_exists("PRID-2011", root, "dataset folder", LAYOUT, is_dir=True)
    multi_shot = os.path.join(root, "prid_2011", "multi_shot")
    cam_dirs = (os.path.join(multi_shot, "cam_a"), os.path.join(multi_shot, "cam_b"))
    for cam_dir in cam_dirs:
        raw_io.require_exists("PRID-2011", cam_dir, "camera folder", LAYOUT, is_dir=True)
    train, test = split_persons(root, index, cam_dirs)
    if overlap := set(train) & set(test):
        raise raw_io.CorruptRawDataError(
            f"PRID-2011: split {index} has persons in both train and test: {sorted(overlap)}"
        )
    for person in (*train, *test):
        for cam_dir in cam_dirs:
            raw_io.require_exists(
                "PRID-2011", os.path.join(cam_dir, person), "sequence folder", LAYOUT, is_dir=True
            )

    def sequence(person: str, camid: int) -> reid_builder.Tracklet:
        folder = os.path.join(cam_dirs[camid], person)
        return reid_builder.sequence_tracklet("PRID-2011", folder, _person_id(person), camid)

    return {
        "train": [sequence(p, camid) for p in sorted(train) for camid in (0, 1)],
        "query": [sequence(p, 0) for p in sorted(test)],
        "gallery": [sequence(p, 1) for p in sorted(test)],
    }


class Builder(reid_builder.ReidBuilder):
    """PRID-2011 multi-shot, one builder config per standard split."""

    BUILDER_CONFIGS = reid_builder.split_configs(10)
    TITLE = "PRID-2011"
    RAW_FOLDER = "prid2011"
    EVAL_PROTOCOL = "prid2011"
    RELEASE_TEST_SAMPLER = "begin_interval"
    NUM_CAMERAS = 2
    NUM_TRAIN_IDS = 89
    FINGERPRINT_FILES = (JSON_SPLIT_FILE, *MAT_SPLIT_FILES)
    DESCRIPTION = _DESCRIPTION
    HOMEPAGE = "https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/prid11"
    CITATION = """\
@inproceedings{hirzer2011person,
  title={Person Re-Identification by Descriptive and Discriminative Classification},
  author={Hirzer, Martin and Beleznai, Csaba and Roth, Peter M. and Bischof, Horst},
  booktitle={Scandinavian Conference on Image Analysis (SCIA)},
  year={2011}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download prid_2011.zip from the TU Graz page
(https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/prid11) and extract
it into the raw folder (it creates prid_2011/). {_SPLIT_FILE_SOURCE}
Expected layout:
{LAYOUT}
"""

    def _scan_splits(self, root: str) -> dict[str, list[reid_builder.Tracklet]]:
        return prid2011_splits(root, reid_builder.split_index(self.builder_config))

"""DukeMTMC-VideoReID (Wu et al., CVPR 2018): video person re-ID, 8 cameras, 702 train ids."""

from __future__ import annotations

import os
import re

from psta_jax.datasets import raw_io, reid_builder

LAYOUT = """\
<root>/                                   (default: data/DukeMTMC-VideoReID)
  train/<pid4>/<tracklet4>/<pid4>_C<c>_F<ffff>_X<frame>.jpg
                                          e.g. train/0001/0001/0001_C6_F0001_X30823.jpg
                                          (older copies: 0001C6F0001X30823.jpg)
  query/<pid4>/<tracklet4>/...
  gallery/<pid4>/<tracklet4>/...          (also holds copies of the query tracklets)"""

_DESCRIPTION = """\
DukeMTMC-VideoReID: 702 training identities (2,196 tracklets), 702 query tracklets and 2,636
gallery tracklets (1,110 ids incl. 408 distractor ids) from 8 cameras. The query tracklets are
also inside the gallery folder; the evaluation removes them by the same-pid-same-camera rule.
Frames are ordered by the F field of their file names.
"""

# Both file-name forms: new "0001_C6_F0099_X30823.jpg" and old "0001C6F0099X30823.jpg";
# X marks normal frames, D distractor frames.
_FRAME_NAME = re.compile(r"^(?P<pid>-?\d+)_?C(?P<camera>\d)_?F(?P<frame>\d+)_?[XD]\d+$")


def parse_frame_name(file_name: str) -> tuple[int, int, int]:
    """'0001_C6_F0099_X30823.jpg' or '0001C6F0099X30823.jpg' -> (pid 1, camera 6, frame 99)."""
    match = _FRAME_NAME.match(os.path.splitext(file_name)[0])
    if match is None:
        raise raw_io.CorruptRawDataError(
            f"DukeMTMC-VideoReID: unexpected frame file name {file_name!r}; expected "
            "<pid4>_C<c>_F<ffff>_X<frame>.jpg or <pid4>C<c>F<ffff>X<frame>.jpg"
        )
    return int(match["pid"]), int(match["camera"]), int(match["frame"])


def _tracklet(folder: str, pid: int) -> reid_builder.Tracklet:
    names = raw_io.list_images(folder, (".jpg", ".jpeg"))
    if not names:
        raise raw_io.CorruptRawDataError(
            f"DukeMTMC-VideoReID: tracklet folder {folder} holds no .jpg frames"
        )
    parsed = {name: parse_frame_name(name) for name in names}
    if {p for p, _, _ in parsed.values()} != {pid}:
        raise raw_io.CorruptRawDataError(
            f"DukeMTMC-VideoReID: frames in {folder} do not all belong to person folder pid {pid}"
        )
    cameras = {c for _, c, _ in parsed.values()}
    if len(cameras) != 1:
        raise raw_io.CorruptRawDataError(
            f"DukeMTMC-VideoReID: frames in {folder} come from several cameras {sorted(cameras)}"
        )
    ordered = sorted(names, key=lambda name: parsed[name][2])
    frame_numbers = [parsed[name][2] for name in ordered]
    if len(set(frame_numbers)) != len(frame_numbers):
        raise raw_io.CorruptRawDataError(f"DukeMTMC-VideoReID: repeated F numbers in {folder}")
    return reid_builder.Tracklet(
        frame_paths=tuple(os.path.join(folder, name) for name in ordered),
        pid=pid,
        camid=cameras.pop() - 1,
    )


def _split_tracklets(split_dir: str) -> list[reid_builder.Tracklet]:
    tracklets = []
    for pid_folder in raw_io.list_subdirs(split_dir):
        try:
            pid = int(pid_folder)
        except ValueError:
            raise raw_io.CorruptRawDataError(
                f"DukeMTMC-VideoReID: {os.path.join(split_dir, pid_folder)} is not a person "
                "folder (expected a 4-digit pid such as 0001)"
            ) from None
        pid_dir = os.path.join(split_dir, pid_folder)
        for tracklet_folder in raw_io.list_subdirs(pid_dir):
            tracklets.append(_tracklet(os.path.join(pid_dir, tracklet_folder), pid))
    return tracklets


def duke_splits(root: str) -> dict[str, list[reid_builder.Tracklet]]:
    """Tracklets of the train / query / gallery folders, in (pid, tracklet folder) order."""
    raw_io.require_exists("DukeMTMC-VideoReID", root, "dataset folder", LAYOUT, is_dir=True)
    splits = {}
    for split in reid_builder.SPLITS:
        split_dir = os.path.join(root, split)
        raw_io.require_exists(
            "DukeMTMC-VideoReID", split_dir, f"folder {split!r}", LAYOUT, is_dir=True
        )
        splits[split] = _split_tracklets(split_dir)
    return splits


class Builder(reid_builder.ReidBuilder):
    """DukeMTMC-VideoReID from its train / query / gallery folders."""

    TITLE = "DukeMTMC-VideoReID"
    RAW_FOLDER = "DukeMTMC-VideoReID"
    EVAL_PROTOCOL = "duke"
    RELEASE_TEST_SAMPLER = "dense"
    NUM_CAMERAS = 8
    NUM_TRAIN_IDS = 702
    DESCRIPTION = _DESCRIPTION
    HOMEPAGE = "https://github.com/Yu-Wu/DukeMTMC-VideoReID"
    CITATION = """\
@inproceedings{wu2018cvpr_oneshot,
  title={Exploit the Unknown Gradually: One-Shot Video-Based Person Re-Identification by
         Stepwise Learning},
  author={Wu, Yu and Lin, Yutian and Dong, Xuanyi and Yan, Yan and Ouyang, Wanli and
          Yang, Yi},
  booktitle={CVPR},
  year={2018}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
DukeMTMC-VideoReID has been withdrawn by its authors and its download links are dead
(https://github.com/Yu-Wu/DukeMTMC-VideoReID). If you hold a copy of
DukeMTMC-VideoReID.zip, extract it so that the raw folder has this layout:
{LAYOUT}
"""

    def _scan_splits(self, root: str) -> dict[str, list[reid_builder.Tracklet]]:
        return duke_splits(root)

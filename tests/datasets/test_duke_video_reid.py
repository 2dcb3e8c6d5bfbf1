"""DukeMTMC-VideoReID builder: TFDS builder test on dummy_data, file names, frame order."""

import pytest
import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets import fake_raw
from psta_jax.datasets.duke_video_reid import duke_video_reid_dataset_builder as duke
from tests.helpers.prepared import split_rows


class DukeVideoReidBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = duke.Builder
    SPLITS = {"train": 3, "query": 2, "gallery": 5}
    OVERLAPPING_SPLITS = ["gallery"]  # The gallery folder holds copies of the queries.


@pytest.mark.parametrize(
    "name, expected",
    [
        ("0001_C6_F0099_X30823.jpg", (1, 6, 99)),
        ("0001C6F0099X30823.jpg", (1, 6, 99)),
        ("0123_C8_F0001_D00012.jpg", (123, 8, 1)),
    ],
)
def test_parse_both_file_name_forms(name, expected):
    assert duke.parse_frame_name(name) == expected


def test_bad_file_name_is_named():
    with pytest.raises(datasets.CorruptRawDataError, match="0001_F0099.jpg"):
        duke.parse_frame_name("0001_F0099.jpg")


def test_splits_and_frame_order(tmp_path):
    raw = str(duke.Builder.code_path.parent / "dummy_data")
    builder = datasets.build("duke_video_reid", data_dir=str(tmp_path), raw_dir=raw)

    def rows(split):
        return split_rows(builder, split)

    lv = fake_raw.frame_level
    assert rows("train") == [
        (1, 0, [lv(1), lv(2), lv(3)]),
        (1, 1, [lv(1), lv(2)]),
        (5, 2, [lv(9), lv(10), lv(11)]),  # Old name form, sorted by F.
    ]
    assert rows("query") == [(2, 0, [lv(1), lv(2)]), (7, 3, [lv(1), lv(2)])]
    gallery = rows("gallery")
    assert [(p, c) for p, c, _ in gallery] == [(2, 0), (2, 1), (7, 3), (7, 7), (99, 4)]
    info = datasets.reid_info(builder)
    assert (info.eval_protocol, info.num_train_ids, info.num_cameras) == ("duke", 2, 8)

"""PRID-2011 builder: TFDS builder test on dummy_data (json splits), the .mat split path."""

import pytest
import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets import fake_raw, raw_io
from psta_jax.datasets.prid2011 import make_dummy_data
from psta_jax.datasets.prid2011 import prid2011_dataset_builder as prid
from tests.helpers.prepared import split_rows

DUMMY = prid.Builder.code_path.parent / "dummy_data"


class Prid2011BuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = prid.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["split_0", "split_9"]
    SPLITS = {"train": 4, "query": 2, "gallery": 2}
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False  # Reads the split json with open().


def test_json_split_and_frame_order(tmp_path):
    builder = datasets.build(
        "prid2011", data_dir=str(tmp_path), raw_dir=str(DUMMY), builder_config="split_2"
    )
    split = make_dummy_data.split_json(make_dummy_data.SPLIT_PERSONS)[2]
    test_pids = sorted(int(p[7:]) for p in split["test"])
    train_pids = sorted(int(p[7:]) for p in split["train"])

    def rows(split_name):
        return split_rows(builder, split_name)

    def frames(cam, pid):
        numbers = make_dummy_data.FRAMES.get((cam, pid), make_dummy_data.DEFAULT_FRAMES)
        return [fake_raw.frame_level(n) for n in numbers]

    assert rows("train") == [
        (p, c, frames(cam, p)) for p in train_pids for c, cam in ((0, "cam_a"), (1, "cam_b"))
    ]
    assert rows("query") == [(p, 0, frames("cam_a", p)) for p in test_pids]
    assert rows("gallery") == [(p, 1, frames("cam_b", p)) for p in test_pids]
    assert datasets.reid_info(builder).eval_protocol == "prid2011"


def _raw_with_mat_split(root, short_pid):
    """Persons 1..5 with MIN_FRAMES frames in both cameras, except `short_pid` (one fewer in
    cam_b); a 10 x 4 ls_set over the 4 persons that pass the threshold."""
    frames = list(range(1, prid.MIN_FRAMES + 1))
    make_dummy_data.write_sequences(str(root), {("cam_b", short_pid): frames[:-1]}, frames)
    ls_set = fake_raw.permutation_table(10, 4, seed=1)
    raw_io.write_mat(root / "train_test_splits_prid.mat", {"ls_set": ls_set})
    return ls_set


def test_mat_split_uses_the_persons_long_enough_in_both_cameras(tmp_path):
    ls_set = _raw_with_mat_split(tmp_path, short_pid=3)
    kept = ["person_0001", "person_0002", "person_0004", "person_0005"]
    assert (
        prid.standard_persons(
            (
                str(tmp_path / "prid_2011/multi_shot/cam_a"),
                str(tmp_path / "prid_2011/multi_shot/cam_b"),
            )
        )
        == kept
    )
    splits = prid.prid2011_splits(str(tmp_path), 4)
    row = ls_set[4].astype(int)
    expected_test = sorted(int(kept[i - 1][7:]) for i in row[:2])
    assert [t.pid for t in splits["query"]] == expected_test
    assert [t.pid for t in splits["gallery"]] == expected_test
    assert sorted({t.pid for t in splits["train"]}) == sorted(int(kept[i - 1][7:]) for i in row[2:])
    assert all(len(t.frame_paths) == prid.MIN_FRAMES for t in splits["query"])


def test_missing_split_file_says_where_it_comes_from(tmp_path):
    make_dummy_data.write_sequences(str(tmp_path), {}, [1, 2])
    with pytest.raises(datasets.MissingRawDataError) as error:
        prid.prid2011_splits(str(tmp_path), 0)
    message = str(error.value)
    assert "splits_prid2011.json" in message and "CNN-RNN2016" in message
    assert "iLIDS-VID.tar" in message and str(tmp_path) in message

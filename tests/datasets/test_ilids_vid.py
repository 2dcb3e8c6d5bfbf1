"""iLIDS-VID builder: TFDS builder test on dummy_data (two split configs), split semantics."""

import os

import scipy.io
import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets import fake_raw
from psta_jax.datasets.ilids_vid import ilids_vid_dataset_builder as ilids
from psta_jax.datasets.ilids_vid import make_dummy_data

DUMMY = ilids.Builder.code_path.parent / "dummy_data"


class IlidsVidBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = ilids.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["split_0", "split_9"]
    SPLITS = {"train": 4, "query": 2, "gallery": 2}


def test_split_follows_ls_set(tmp_path):
    builder = datasets.build(
        "ilids_vid", data_dir=str(tmp_path), raw_dir=str(DUMMY), builder_config=7
    )
    assert builder.builder_config.name == "split_7"
    row = scipy.io.loadmat(DUMMY / ilids.SPLIT_FILE)["ls_set"][7].astype(int)
    persons = make_dummy_data.PERSONS
    test_pids = sorted(int(persons[i - 1][6:]) for i in row[:2])
    train_pids = sorted(int(persons[i - 1][6:]) for i in row[2:])

    def rows(split):
        return [(int(e["pid"]), int(e["camid"])) for e in tfds.as_numpy(
            datasets.load_split(builder, split))]  # fmt: skip

    assert rows("train") == [(p, c) for p in train_pids for c in (0, 1)]
    assert rows("query") == [(p, 0) for p in test_pids]
    assert rows("gallery") == [(p, 1) for p in test_pids]
    info = datasets.reid_info(builder)
    assert (info.eval_protocol, info.num_train_ids, info.config) == ("ilids_vid", 2, "split_7")


def test_frames_sorted_by_number():
    tracklets = ilids.ilids_vid_splits(str(DUMMY), 0)
    person001 = [t for split in tracklets.values() for t in split if t.pid == 1 and t.camid == 0][0]
    names = [os.path.basename(p) for p in person001.frame_paths]
    assert names == [f"cam1_person001_{n:05d}.png" for n in (8, 9, 10)]
    levels = []
    for path in person001.frame_paths:
        with open(path, "rb") as f:
            levels.append(round(fake_raw.decoded_level(f.read())))
    assert levels == [fake_raw.frame_level(n) for n in (8, 9, 10)]

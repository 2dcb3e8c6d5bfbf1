"""MARS builder: TFDS builder test on dummy_data, then split semantics through the public API."""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets import fake_raw
from psta_jax.datasets.mars import mars_dataset_builder


class MarsBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = mars_dataset_builder.Builder
    SPLITS = {"train": 3, "query": 3, "gallery": 3}


def test_splits_follow_the_info_files(tmp_path):
    raw = str(mars_dataset_builder.Builder.code_path.parent / "dummy_data")
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    assert str(tmp_path / "tfds" / "dummy_data") in str(builder.data_dir)

    def rows(split):
        return [
            (int(e["pid"]), int(e["camid"]), int(e["num_frames"]), int(e["tracklet_id"]))
            for e in tfds.as_numpy(datasets.load_split(builder, split))
        ]

    # (pid, 0-based camid, num_frames, tracklet_id); rows of make_dummy_data.TEST.
    assert rows("train") == [(1, 0, 3, 0), (1, 1, 2, 1), (3, 0, 2, 2)]
    assert rows("query") == [(2, 0, 3, 0), (2, 1, 2, 1), (4, 0, 2, 2)]
    # Junk (-1) dropped, distractor (0) kept, query rows excluded.
    assert rows("gallery") == [(0, 1, 2, 0), (2, 1, 2, 1), (4, 2, 2, 2)]

    info = datasets.reid_info(builder)
    assert (info.eval_protocol, info.num_train_ids, info.num_cameras) == ("mars", 2, 3)
    assert info.num_tracklets == {"train": 3, "query": 3, "gallery": 3}


def test_frames_are_encoded_bytes_in_name_list_order(tmp_path):
    raw = str(mars_dataset_builder.Builder.code_path.parent / "dummy_data")
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    example = next(iter(datasets.load_split(builder, "train").skip(1)))  # 0001C2T0001F002..F003
    frames = example["frames"]
    assert frames.dtype == tf.string and frames.shape == (2,)
    first = frames[0].numpy()
    with open(f"{raw}/bbox_train/0001/0001C2T0001F002.jpg", "rb") as f:
        assert first == f.read()  # Original bytes, not re-encoded.
    levels = [fake_raw.decoded_level(f) for f in frames.numpy()]
    np.testing.assert_allclose(levels, [fake_raw.frame_level(2), fake_raw.frame_level(3)], atol=3)
    assert tf.io.decode_jpeg(frames[0]).shape == (*fake_raw.FRAME_SIZE, 3)

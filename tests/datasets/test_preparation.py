"""Preparation decodes every frame, lists every bad one, can skip them, and never reuses a
preparation of a raw folder that has changed since."""

import dataclasses
import os
import shutil

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets import preparation, raw_io, reid_builder, synthetic

CONFIG = synthetic.SyntheticConfig(
    seed=5, num_train_ids=4, num_test_ids=4, num_unmatched_ids=1, num_distractor_tracklets=1,
    num_junk_tracklets=1, num_cameras=2, min_frames=6, max_frames=8, height=32, width=16,
)  # fmt: skip


def _query_tracklet_frames(root: str) -> list[str]:
    """Frame paths of the first query tracklet (in the name-list order)."""
    info = scipy.io.loadmat(os.path.join(root, "info", "tracks_test_info.mat"))["track_test_info"]
    row = int(scipy.io.loadmat(os.path.join(root, "info", "query_IDX.mat"))["query_IDX"][0, 0])
    start, end = info[row - 1, :2]
    names = raw_io.read_lines(os.path.join(root, "info", "test_name.txt"))[start - 1 : end]
    return [os.path.join(root, "bbox_test", name[:4], name) for name in names]


def _truncate_half(path: str) -> None:
    """What `truncate -s 50%` does."""
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage_after_header(path: str) -> None:
    """Keeps the JPEG headers, replaces the compressed data with noise (PIL still decodes it)."""
    with open(path, "rb") as f:
        data = f.read()
    keep = data.index(b"\xff\xda") + 20  # Start-of-scan header.
    noise = np.random.default_rng(0).integers(0, 256, len(data) - keep, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(data[:keep] + noise.tobytes())


def _train_frame(root: str) -> str:
    name = raw_io.read_lines(os.path.join(root, "info", "train_name.txt"))[3]
    return os.path.join(root, "bbox_train", name[:4], name)


def test_frame_problem_catches_truncated_and_garbage_jpegs(pristine, tmp_path):
    good = _train_frame(pristine)
    assert raw_io.frame_problem(good) is None
    truncated, garbage = tmp_path / "t.jpg", tmp_path / "g.jpg"
    shutil.copy(good, truncated)
    shutil.copy(good, garbage)
    _truncate_half(str(truncated))
    _garbage_after_header(str(garbage))
    assert "truncated" in raw_io.frame_problem(truncated)
    assert "end marker" in raw_io.frame_problem(garbage)
    (tmp_path / "x.jpg").write_bytes(b"<html>not found</html>")
    assert "not a JPEG or PNG" in raw_io.frame_problem(tmp_path / "x.jpg")
    assert "cannot be read" in raw_io.frame_problem(tmp_path / "absent.jpg")
    png = raw_io.encode_image(np.zeros((8, 4, 3), np.uint8), "png")
    (tmp_path / "p.png").write_bytes(png[:-20])
    assert raw_io.frame_problem(tmp_path / "p.png") is not None


def test_bad_frames_are_all_listed_with_their_tracklets_and_nothing_is_prepared(raw, tmp_path):
    query_frames = _query_tracklet_frames(raw)
    for path in query_frames[:5]:
        _truncate_half(path)
    train_frame = _train_frame(raw)
    _garbage_after_header(train_frame)
    with pytest.raises(datasets.CorruptRawDataError) as error:
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    message = str(error.value)
    assert "6 of" in message and "frames under" in message
    for path in [*query_frames[:5], train_frame]:
        assert os.path.relpath(path, raw) in message
    assert "query tracklet 0" in message and "train tracklet" in message
    assert "--config.dataset.skip_bad_frames=True" in message
    prepared = os.path.join(str(tmp_path), "tfds", "synthetic_mars")
    with open(os.path.join(prepared, reid_builder.BAD_FRAMES_REPORT)) as f:
        assert len(f.read().splitlines()) == 6
    assert not os.path.isdir(os.path.join(prepared, "mars", "1.0.0"))
    assert not [n for n in os.listdir(os.path.join(prepared, "mars")) if "incomplete" in n]


def test_skip_bad_frames_shortens_the_tracklets(raw, pristine, tmp_path):
    query_frames = _query_tracklet_frames(raw)
    for path in query_frames[:5]:
        _truncate_half(path)
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw, skip_bad_frames=True)
    query = list(tfds.as_numpy(datasets.load_split(builder, "query")))
    assert int(query[0]["num_frames"]) == len(query_frames) - 5 == len(query[0]["frames"])
    skipped = builder.info.metadata["skipped_frames"]
    assert sorted(skipped) == sorted(os.path.relpath(p, raw) for p in query_frames[:5])

    # The frames are fixed: the source changed, so the dataset is prepared again, in full.
    for path in query_frames[:5]:
        shutil.copy(os.path.join(pristine, os.path.relpath(path, raw)), path)
    again = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    query = list(tfds.as_numpy(datasets.load_split(again, "query")))
    assert int(query[0]["num_frames"]) == len(query_frames)
    assert again.info.metadata["skipped_frames"] == []
    report = os.path.join(str(tmp_path), "tfds", "synthetic_mars", reid_builder.BAD_FRAMES_REPORT)
    assert not os.path.exists(report)


def test_a_changed_frame_is_never_silently_reused(raw, tmp_path):
    first = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    fingerprint = first.info.metadata[reid_builder.SOURCE_FINGERPRINT]
    assert (
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw).info.metadata[
            reid_builder.SOURCE_FINGERPRINT
        ]
        == fingerprint
    )  # Unchanged source: reused.

    frame = _train_frame(raw)
    replacement = raw_io.encode_image(np.full((32, 16, 3), 200, np.uint8), "jpeg")
    with open(frame, "wb") as f:
        f.write(replacement)
    again = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    assert again.info.metadata[reid_builder.SOURCE_FINGERPRINT] != fingerprint
    train = list(tfds.as_numpy(datasets.load_split(again, "train")))
    assert any(replacement in [bytes(b) for b in e["frames"]] for e in train)


def test_leftovers_of_an_interrupted_preparation_are_removed(raw, tmp_path):
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    parent = os.path.dirname(os.fspath(builder.data_dir))
    leftover = os.path.join(parent, "incomplete.AB12CD_1.0.0")
    os.makedirs(os.path.join(leftover, "part"))
    datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    assert not os.path.exists(leftover)
    assert os.path.isdir(builder.data_dir)


def test_preparation_lock_file_lives_in_the_prepared_folder(raw, tmp_path):
    datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    prepared = os.path.join(str(tmp_path), "tfds", "synthetic_mars")
    assert os.path.isfile(os.path.join(prepared, preparation.LOCK_FILE))


def test_regenerated_synthetic_data_is_prepared_again(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.ensure(out, CONFIG)
    first = datasets.reid_info(datasets.build("mars", data_dir=str(tmp_path), raw_dir=out))
    synthetic.replace(out, dataclasses.replace(CONFIG, num_train_ids=5))  # --overwrite
    second = datasets.reid_info(datasets.build("mars", data_dir=str(tmp_path), raw_dir=out))
    assert (first.num_train_ids, second.num_train_ids) == (4, 5)


def _truncate_prepared(builder, split="gallery"):
    path = os.fspath(builder.info.splits[split].filepaths[0])
    _truncate_half(path)
    return path


def test_a_truncated_prepared_file_is_rebuilt_from_the_raw_folder(raw, tmp_path):
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    expected = len(list(tfds.as_numpy(datasets.load_split(builder, "gallery"))))
    path = _truncate_prepared(builder)
    assert preparation.damaged_files(builder)
    again = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    assert not preparation.damaged_files(again)
    assert len(list(tfds.as_numpy(datasets.load_split(again, "gallery")))) == expected
    assert os.path.getsize(path) > 0


def test_a_truncated_prepared_file_without_raw_folder_names_file_and_fix(raw, tmp_path):
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    path = _truncate_prepared(builder)
    shutil.rmtree(raw)
    with pytest.raises(preparation.PreparedDataError) as error:
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    message = str(error.value)
    assert path in message and "delete" in message
    assert os.path.join(str(tmp_path), "tfds", "synthetic_mars") in message


def test_read_error_names_the_split_files_and_the_fix(raw, tmp_path):
    import tensorflow as tf

    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    path = os.fspath(builder.info.splits["query"].filepaths[0])
    with open(path, "r+b") as f:  # Same size, flipped bytes: only the record checksum sees it.
        f.seek(100)
        f.write(b"\x00" * 16)
    with pytest.raises(tf.errors.DataLossError) as raised:
        list(tfds.as_numpy(datasets.load_split(builder, "query")))
    message = str(preparation.read_error(builder, "query", raised.value))
    assert path in message and "delete" in message and "tfds/synthetic_mars" in message

"""Synthetic MARS: deterministic bytes, MARS raw conventions, and the MARS builder reading it."""

import dataclasses
import json
import os

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from psta_jax import config_base, datasets
from psta_jax.datasets import loading, synthetic
from psta_jax.datasets.mars import layout
from psta_jax.runtime.errors import ConfigError

SMALL = synthetic.SyntheticConfig(
    seed=3, num_train_ids=4, num_test_ids=5, num_unmatched_ids=1, num_distractor_tracklets=2,
    num_junk_tracklets=2, num_cameras=3, min_frames=2, max_frames=5, height=32, width=16,
)  # fmt: skip


def _all_files(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("raw") / "synthetic_mars")
    synthetic.generate(out, SMALL)
    return out


def _mat(root, name, variable):
    return scipy.io.loadmat(os.path.join(root, "info", name))[variable]


def test_same_seed_same_bytes_other_seed_differs(small_raw, tmp_path):
    again = str(tmp_path / "again")
    synthetic.generate(again, SMALL)
    first, second = _all_files(small_raw), _all_files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    other = str(tmp_path / "other")
    synthetic.generate(other, dataclasses.replace(SMALL, seed=4))
    assert _all_files(other)["info/tracks_train_info.mat"] != first["info/tracks_train_info.mat"]


def test_raw_layout_follows_mars_conventions(small_raw):
    train_info = _mat(small_raw, "tracks_train_info.mat", "track_train_info")
    test_info = _mat(small_raw, "tracks_test_info.mat", "track_test_info")
    query_idx = _mat(small_raw, "query_IDX.mat", "query_IDX")
    assert train_info.dtype == np.int32 and train_info.shape[1] == 4
    assert query_idx.dtype == np.uint16 and query_idx.shape[0] == 1
    assert np.all(np.diff(query_idx[0]) > 0) and query_idx.min() >= 1

    with open(os.path.join(small_raw, "info", "test_name.txt")) as f:
        test_names = f.read().split()
    assert test_info[-1, 1] == len(test_names)  # 1-based inclusive rows cover the name list.
    assert np.all(test_info[1:, 0] == test_info[:-1, 1] + 1)
    pids = test_info[:, 2]
    assert np.all(np.diff(pids) >= 0) and pids[0] == -1  # -1 rows, then 0, then real ids.
    assert (pids == -1).sum() == 2 and (pids == 0).sum() == 2
    for start, end, pid, camera in test_info:
        for name in test_names[start - 1 : end]:
            assert name[:4] == layout.folder_name(pid) and name[5] == str(camera)
            assert os.path.isfile(os.path.join(small_raw, "bbox_test", name[:4], name))
    # Train and test identities are disjoint; every test id is seen by >= 2 cameras.
    assert not set(train_info[:, 2]) & set(pids)
    for pid in set(pids[pids > 0]):
        assert len(set(test_info[pids == pid, 3])) >= 2
    # One query per (real pid, camera) pair.
    query_rows = test_info[query_idx[0] - 1]
    real_pairs = {(p, c) for p, c in test_info[pids > 0][:, 2:]}
    assert sorted(map(tuple, query_rows[:, 2:])) == sorted(real_pairs)


def test_mars_builder_reads_synthetic_data(small_raw, tmp_path):
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=small_raw)
    assert os.path.isdir(tmp_path / "tfds" / "synthetic_mars")

    test_info = _mat(small_raw, "tracks_test_info.mat", "track_test_info")
    num_query = _mat(small_raw, "query_IDX.mat", "query_IDX").size
    info = datasets.reid_info(builder)
    assert info.num_tracklets == {
        "train": len(_mat(small_raw, "tracks_train_info.mat", "track_train_info")),
        "query": num_query,
        "gallery": len(test_info) - num_query - 2,  # 2 junk tracklets dropped.
    }
    assert info.num_train_ids == SMALL.num_train_ids and info.num_cameras == SMALL.num_cameras

    def load(split):
        return list(tfds.as_numpy(datasets.load_split(builder, split)))

    query, gallery = load("query"), load("gallery")
    assert -1 not in {int(e["pid"]) for e in query + gallery + load("train")}
    assert sum(int(e["pid"]) == 0 for e in gallery) == 2  # Distractors kept.
    # Query tracklets are not in the gallery (compare the encoded frames).
    query_frames = {bytes(e["frames"][0]) for e in query}
    assert not query_frames & {bytes(e["frames"][0]) for e in gallery}

    # Every query of a matched id has a same-pid gallery tracklet from another camera; the
    # unmatched id's queries have none (the skipped-query path of the evaluation).
    gallery_pairs = {(int(e["pid"]), int(e["camid"])) for e in gallery}
    matched = [
        any(p == int(q["pid"]) and c != int(q["camid"]) for p, c in gallery_pairs) for q in query
    ]
    unmatched_pids = {int(q["pid"]) for q, m in zip(query, matched, strict=True) if not m}
    assert len(unmatched_pids) == SMALL.num_unmatched_ids
    assert sum(not m for m in matched) == 2  # Seen once in each of two cameras.


def test_ensure_generates_once_and_never_replaces_another_config(tmp_path):
    out = str(tmp_path / "syn")
    assert synthetic.ensure(out, SMALL)
    assert not synthetic.ensure(out, SMALL)
    first = datasets.build("mars", data_dir=str(tmp_path), raw_dir=out)
    assert datasets.reid_info(first).num_train_ids == SMALL.num_train_ids
    other = dataclasses.replace(SMALL, num_train_ids=5)
    before = _all_files(out)
    with pytest.raises(synthetic.SyntheticConfigMismatchError, match="num_train_ids 4 -> 5"):
        synthetic.ensure(out, other)
    assert _all_files(out) == before
    # Only the explicit command regenerates; the prepared copy follows (its info/ changed).
    synthetic.replace(out, other)
    again = datasets.build("mars", data_dir=str(tmp_path), raw_dir=out)
    assert datasets.reid_info(again).num_train_ids == 5
    assert again.info.splits["train"].num_examples == len(
        _mat(out, "tracks_train_info.mat", "track_train_info")
    )
    plain = tmp_path / "not_synthetic"
    plain.mkdir()
    (plain / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.ensure(str(plain), SMALL)
    assert (plain / "keep.txt").read_text() == "user data"


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="num_cameras"):
        synthetic.SyntheticConfig(num_cameras=1).validate()


def test_config_sizes_change_the_generated_dataset(tmp_path):
    assert synthetic.config_with({}) == synthetic.SyntheticConfig()
    assert synthetic.config_with({"num_test_ids": 5}).num_test_ids == 5
    with pytest.raises(ConfigError, match=r"synthetic_sizes: unknown field\(s\) \['test_ids'\]"):
        synthetic.config_with({"test_ids": 5})
    with pytest.raises(ConfigError, match="synthetic_sizes:.*num_cameras"):
        synthetic.config_with({"num_cameras": 1})
    # A config's synthetic_sizes reach the generator through the dataset spec.
    config = config_base.dataset_config("mars", None, raw_dir=str(tmp_path / "syn"), synthetic=True)
    config.data_dir = str(tmp_path)
    config.dataset.synthetic_sizes = dict(dataclasses.asdict(SMALL), num_train_ids=3)
    spec = config_base.dataset_spec(config)
    builder = loading.prepare(spec)
    assert datasets.reid_info(builder).num_train_ids == 3


def test_camera_variation_scales_each_cameras_colour_cast():
    full, mild, none = (
        synthetic.camera_styles(4, np.random.default_rng(0), variation) for variation in (1, 0.3, 0)
    )
    for default, scaled, plain in zip(full, mild, none, strict=True):
        np.testing.assert_allclose(scaled.gain - 1.0, 0.3 * (default.gain - 1.0), atol=1e-12)
        assert scaled.brightness == pytest.approx(0.3 * default.brightness)
        np.testing.assert_array_equal(scaled.background, default.background)
        assert np.all(plain.gain == 1.0) and plain.brightness == 0.0
    assert not np.allclose([style.gain for style in full], 1.0, atol=0.05)
    # At 1.0 the values are the unscaled draws bit for bit (older datasets stay byte-identical).
    draws = np.random.default_rng(0)
    np.testing.assert_array_equal(full[0].gain, draws.uniform(0.7, 1.3, size=3))
    assert full[0].brightness == float(draws.uniform(-30.0, 30.0))
    for bad in (-0.1, 3.5):
        with pytest.raises(ValueError, match=r"camera_variation must be in \[0, 3\]"):
            synthetic.SyntheticConfig(camera_variation=bad).validate()


def test_a_dataset_written_before_camera_variation_existed_still_matches(tmp_path):
    out = str(tmp_path / "syn")
    synthetic.generate(out, SMALL)
    marker = os.path.join(out, synthetic.MARKER_FILE)
    with open(marker) as f:
        recorded = json.load(f)
    del recorded["config"]["camera_variation"]  # As an older version wrote it.
    with open(marker, "w") as f:
        json.dump(recorded, f)
    before = _all_files(out)
    assert not synthetic.ensure(out, SMALL)  # Used as it is: the field's default.
    with pytest.raises(synthetic.SyntheticConfigMismatchError, match="camera_variation 1.0 -> 0.3"):
        synthetic.ensure(out, dataclasses.replace(SMALL, camera_variation=0.3))
    assert _all_files(out) == before

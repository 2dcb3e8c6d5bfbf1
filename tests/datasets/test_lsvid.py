"""LS-VID: the builder on dummy_data, its protocol on a hand-computed case, clear errors for
missing or malformed data, and the RRS test sampler on LS-VID-long tracklets."""

import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from psta_jax import config_base, datasets
from psta_jax.datasets import fake_raw
from psta_jax.datasets.lsvid import lsvid_dataset_builder as lsvid
from psta_jax.datasets.lsvid import make_dummy_data
from psta_jax.evaluation import evaluate
from psta_jax.input import samplers
from tests.helpers.prepared import split_rows

DUMMY = pathlib.Path(str(lsvid.Builder.code_path.parent / "dummy_data"))


class LsvidBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = lsvid.Builder
    SPLITS = {"train": 3, "query": 2, "gallery": 3}


@pytest.fixture
def lsvid_raw(tmp_path):
    """A writable copy of the dummy data (tests break it in different ways)."""
    return shutil.copytree(DUMMY, tmp_path / "LS-VID")


def test_splits_follow_the_list_files_and_info_test(tmp_path):
    builder = datasets.build("lsvid", data_dir=str(tmp_path), raw_dir=str(DUMMY))

    def rows(split):
        return split_rows(builder, split)

    lv = fake_raw.frame_level
    # Two prefixes in one folder kept apart; frames in name order (0009..0011); junk dropped.
    assert rows("train") == [
        (1, 2, [lv(1), lv(2), lv(3)]),
        (1, 11, [lv(1), lv(2)]),
        (5, 3, [lv(9), lv(10), lv(11)]),
    ]
    # Query in the order of info_test.mat's `query` (rows 3, 1); gallery = the other rows.
    assert [(p, c) for p, c, _ in rows("query")] == [(2, 0), (0, 0)]
    assert [(p, c) for p, c, _ in rows("gallery")] == [(0, 6), (2, 14), (2, 14)]
    info = datasets.reid_info(builder)
    assert (info.eval_protocol, info.num_train_ids, info.num_cameras) == ("mars", 2, 15)
    assert info.num_ids == {"train": 2, "query": 2, "gallery": 2}  # pid 0 is an identity.


def test_the_dummy_data_is_what_the_script_writes(tmp_path):
    make_dummy_data.write(str(tmp_path))
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(DUMMY) for p in DUMMY.rglob("*") if p.is_file())
    for path in written:
        assert (tmp_path / path).read_bytes() == (DUMMY / path).read_bytes(), path


def test_protocol_hand_computed_cmc_and_map():
    """LS-VID's test split ranked as its EVAL_PROTOCOL ranks it, against hand-computed values.

    Features on a line (squared Euclidean distances). Queries: a (pid 2, cam 0) at 0,
    b (pid 0, cam 0) at 10, c (pid 9, cam 2) at 50 without any match. Gallery: g0 (pid 0,
    cam 6) at 1, g1 (pid 2, cam 14) at 2, g2 (pid 2, cam 14) at 11. `mars` ranks against
    [a, b, c, g0, g1, g2]; each query itself is junk (same pid and camera).
      a: g0 (1) x, g1 (4) o, b (100) x, g2 (121) o  -> first match rank 2, AP (1/2 + 2/4) / 2
      b: g2 (1) x, g1 (64) x, g0 (81) o             -> rank 3, AP 1/3
      c: no match: skipped (`mars`) or AP 0, CMC 0 (`mars_matlab`, the authors' MATLAB).
    mars: mAP (1/2 + 1/3) / 2, CMC 0, 1/2, 1. mars_matlab (trapezoidal AP, compute_AP.m):
      a: 1/2 * (0 + 1/2) / 2 + 1/2 * (1/3 + 1/2) / 2 = 1/3; b: (0 + 1/3) / 2 = 1/6;
      mAP (1/3 + 1/6 + 0) / 3 = 1/6, CMC 0, 1/3, 2/3.
    Without the queries in the gallery (`mars_torchreid`), a: g0 x, g1 o, g2 o -> AP 7/12.
    """
    on_line = lambda xs: np.asarray([[x, 0.0] for x in xs])  # noqa: E731
    q = (on_line([0, 10, 50]), np.array([2, 0, 9]), np.array([0, 0, 2]))
    g = (on_line([1, 2, 11]), np.array([0, 2, 2]), np.array([6, 14, 14]))

    def run(protocol):
        return evaluate(q[0], g[0], q[1], g[1], q[2], g[2], protocol=protocol,
                        distance="euclidean", max_rank=3)  # fmt: skip

    mars = run(lsvid.Builder.EVAL_PROTOCOL)
    assert mars.protocol == "mars" and mars.num_gallery == 6 and mars.num_skipped_queries == 1
    np.testing.assert_allclose(mars.cmc, [0, 1 / 2, 1])
    np.testing.assert_allclose(mars.mAP, (1 / 2 + 1 / 3) / 2)
    matlab = run("mars_matlab")
    np.testing.assert_allclose(matlab.cmc, [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(matlab.mAP, (1 / 3 + 1 / 6) / 3)
    gallery_only = run("mars_torchreid")
    np.testing.assert_allclose(gallery_only.mAP, (7 / 12 + 1 / 3) / 2)


@pytest.mark.parametrize("num_frames, step", [(200, 25), (1000, 125)])
def test_rrs_spans_long_tracklets_where_begin_interval_does_not(num_frames, step):
    """LS-VID tracklets average 200 frames (up to 2,533): RRS's test clip spans them all."""
    seq_len = config_base.dataset_config("lsvid", None).model.seq_len
    clips = samplers.eval_clips("rrs", num_frames, seq_len)
    np.testing.assert_array_equal(clips, [np.arange(seq_len) * step])
    assert clips.max() >= num_frames - step  # The last chunk is sampled too.
    chunks = samplers.rrs_chunks(num_frames, seq_len)  # Training: one frame per chunk.
    assert chunks.shape == (seq_len, step) and chunks.max() == num_frames - 1
    train = samplers.rrs_train(num_frames, seq_len, np.random.default_rng(0))
    assert ((train >= np.arange(seq_len) * step) & (train < (np.arange(seq_len) + 1) * step)).all()
    # The `release` preset's sampler (MARS's) only sees the first 57 frames.
    release = config_base.dataset_config("lsvid", "release").input.test_sampler
    assert release == lsvid.Builder.RELEASE_TEST_SAMPLER == "begin_interval"
    assert samplers.eval_clips(release, num_frames, seq_len).max() == 56
    assert samplers.eval_clips("dense", num_frames, seq_len).shape == (num_frames // 8, 8)


def test_missing_raw_folder_names_dataset_path_layout_and_download(tmp_path):
    with pytest.raises(datasets.MissingRawDataError) as error:
        datasets.build("lsvid", data_dir=str(tmp_path))
    message = str(error.value)
    assert "LS-VID" in message and str(tmp_path / "LS-VID") in message
    assert "Expected layout" in message and "pkuvmc.com" in message
    for part in ("list_sequence/list_seq_train.txt", "test/data/info_test.mat", "tracklet_test"):
        assert part in message


@pytest.mark.parametrize(
    "missing", ["list_sequence/list_seq_test.txt", "test/data/info_test.mat", "tracklet_train"]
)
def test_missing_file_or_folder_is_named_with_the_layout(tmp_path, lsvid_raw, missing):
    path = lsvid_raw / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(datasets.MissingRawDataError) as error:
        datasets.build("lsvid", data_dir=str(tmp_path), raw_dir=str(lsvid_raw))
    message = str(error.value)
    assert str(path) in message and "Expected layout" in message and "data/README.md" in message


def _edit_test_list(raw, edit):
    path = raw / "list_sequence" / "list_seq_test.txt"
    path.write_text(edit(path.read_text()))


def _no_pid(raw):
    _edit_test_list(raw, lambda text: text.replace(" 2\n", "\n", 1))


def _no_frames(raw):
    _edit_test_list(raw, lambda text: text + "tracklet_test/0002/0002_009_04 2\n")


def _other_pid(raw):
    _edit_test_list(raw, lambda text: text.replace("0002_002_15 2", "0002_002_15 7"))


def _frame_without_camera(raw):
    folder = raw / "tracklet_test" / "0000"
    (folder / "0000_001_01_0002.jpg").rename(folder / "0000_001_01x0002.jpg")


def _not_a_mat_file(raw):
    (raw / "test" / "data" / "info_test.mat").write_bytes(b"not a MATLAB file")


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (_no_pid, "list_seq_test.txt line 3 is 'tracklet_test/0002/0002_001_01'"),
        (_no_frames, "no frame file 0002_009_04"),
        (_other_pid, "row 4 has pid 2, camera 15"),
        (_frame_without_camera, "'0000_001_01x0002.jpg' has no camera"),
        (_not_a_mat_file, "info_test.mat"),
    ],
)
def test_malformed_data_is_named(tmp_path, lsvid_raw, break_it, expected):
    break_it(lsvid_raw)
    with pytest.raises(datasets.CorruptRawDataError, match=expected):
        datasets.build("lsvid", data_dir=str(tmp_path), raw_dir=str(lsvid_raw))


def test_info_test_that_does_not_fit_the_test_list_is_named(lsvid_raw):
    path = str(lsvid_raw / "test" / "data" / "info_test.mat")
    info = np.asarray([[1, 2, 0, 1], [3, 5, 0, 7]])
    make_dummy_data.write_info_test(path, info, [1, 2])  # 2 rows for the 5 lines of the list.
    with pytest.raises(datasets.CorruptRawDataError, match="has 2 rows but"):
        lsvid.lsvid_splits(str(lsvid_raw))
    make_dummy_data.write_info_test(path, info, [1, 3])
    with pytest.raises(datasets.CorruptRawDataError, match=r"1-based rows of info_test \(1..2\)"):
        lsvid.lsvid_splits(str(lsvid_raw))
    rows = [
        [2 * r + 1, 2 * r + 2, pid, cam] for r, (_, pid, cam, *_) in enumerate(make_dummy_data.TEST)
    ]
    rows[1][3] = 8  # Row 2's camera is 7 in its frame names.
    make_dummy_data.write_info_test(path, np.asarray(rows), [3, 1])
    with pytest.raises(datasets.CorruptRawDataError, match="row 2 has pid 0, camera 8"):
        lsvid.lsvid_splits(str(lsvid_raw))

"""Public API of psta_jax.datasets: registration, build/load_split/reid_info, clear errors."""

import pathlib
import shutil

import pytest
import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets.ilids_vid import ilids_vid_dataset_builder as ilids
from psta_jax.datasets.mars import mars_dataset_builder as mars

MARS_DUMMY = mars.Builder.code_path.parent / "dummy_data"
PACKAGE = pathlib.Path(datasets.__file__).parent


@pytest.fixture
def mars_raw(tmp_path):
    """A writable copy of the MARS dummy data (tests break it in different ways)."""
    return shutil.copytree(MARS_DUMMY, tmp_path / "MARS")


def test_all_builders_registered_with_tfds():
    assert set(datasets.BUILDERS) <= set(tfds.core.registered.list_imported_builders())
    for name, cls in datasets.BUILDERS.items():
        assert cls.name == name
        assert cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
    assert [c.name for c in datasets.BUILDERS["prid2011"].BUILDER_CONFIGS] == [
        f"split_{i}" for i in range(10)
    ]


def test_builders_are_discovered_with_their_facts():
    from psta_jax.evaluation import PROTOCOLS
    from psta_jax.input import samplers

    # Every folder with a `<name>_dataset_builder.py` is a dataset (a new one touches no test here).
    folders = {p.parent.name for p in PACKAGE.glob("*/*_dataset_builder.py")}
    assert set(datasets.BUILDERS) == folders >= {"mars", "duke_video_reid", "ilids_vid", "prid2011"}
    for name, cls in datasets.BUILDERS.items():
        assert datasets.builder_class(name) is cls
        assert cls.EVAL_PROTOCOL in PROTOCOLS
        assert cls.RELEASE_TEST_SAMPLER in samplers.EVAL_SAMPLERS
        assert cls.RAW_FOLDER and cls.NUM_CAMERAS >= 2 and cls.NUM_TRAIN_IDS > 0


def test_default_raw_and_prepared_folders():
    assert datasets.raw_data_dir("mars") == "data/MARS"
    assert datasets.raw_data_dir("ilids_vid", "/d") == "/d/iLIDS-VID"
    assert datasets.raw_data_dir("mars", "/d", "/x/synthetic_mars") == "/x/synthetic_mars"
    assert datasets.prepared_data_dir("data", "data/synthetic_mars/") == "data/tfds/synthetic_mars"


def test_prepared_data_is_reused_without_the_raw_folder(tmp_path, mars_raw):
    first = datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(mars_raw))
    shutil.rmtree(mars_raw)
    again = datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(mars_raw))
    assert again.data_dir == first.data_dir
    assert datasets.reid_info(again).num_tracklets == {"train": 3, "query": 3, "gallery": 3}


def test_missing_raw_folder_names_dataset_path_and_layout(tmp_path):
    with pytest.raises(datasets.MissingRawDataError) as error:
        datasets.build("mars", data_dir=str(tmp_path))
    message = str(error.value)
    assert "MARS" in message and str(tmp_path / "MARS") in message
    assert "info/query_IDX.mat" in message and "bbox_train/<pid4>" in message


def test_missing_mat_file_is_named(tmp_path, mars_raw):
    (mars_raw / "info" / "query_IDX.mat").unlink()
    with pytest.raises(datasets.MissingRawDataError, match="query_IDX.mat") as error:
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(mars_raw))
    assert "Expected layout" in str(error.value)


def test_missing_image_folder_is_named(tmp_path, mars_raw):
    shutil.rmtree(mars_raw / "bbox_test")
    with pytest.raises(datasets.MissingRawDataError, match="bbox_test"):
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(mars_raw))


@pytest.mark.parametrize(
    "frame, corrupt",
    [
        ("0002C1T0001F002.jpg", lambda data: b"not an image"),  # Bad magic bytes (any frame).
        ("0002C1T0001F001.jpg", lambda data: data[: len(data) // 2]),  # Truncated first frame.
    ],
)
def test_corrupt_image_is_named(tmp_path, mars_raw, frame, corrupt):
    path = mars_raw / "bbox_test" / "0002" / frame
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(datasets.CorruptRawDataError, match=frame):
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(mars_raw))
    builder = datasets.builder_class("mars")(data_dir=str(tmp_path / "tfds" / "MARS"))
    assert not builder.is_prepared()  # A failed preparation leaves nothing half-written.


def test_bad_track_info_row_is_reported(tmp_path, mars_raw):
    from psta_jax.datasets import raw_io

    info = mars_raw / "info" / "tracks_train_info.mat"
    rows = raw_io.load_mat_variable("MARS", info, "track_train_info", "")
    rows[1, 1] = 99  # End row past the 7 names of train_name.txt.
    raw_io.write_mat(info, {"track_train_info": rows.astype("int32")})
    with pytest.raises(datasets.CorruptRawDataError, match="row 1"):
        mars.mars_splits(str(mars_raw))


def test_missing_ilids_split_file_is_named(tmp_path):
    raw = shutil.copytree(ilids.Builder.code_path.parent / "dummy_data", tmp_path / "iLIDS-VID")
    (raw / ilids.SPLIT_FILE).unlink()
    with pytest.raises(datasets.MissingRawDataError, match="train_test_splits_ilidsvid.mat"):
        datasets.build("ilids_vid", data_dir=str(tmp_path))


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        datasets.build("market")
    with pytest.raises(ValueError, match="split_0"):
        datasets.build("ilids_vid", builder_config="split_10")
    with pytest.raises(ValueError, match="one fixed split"):
        datasets.build("mars", builder_config=0)
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(MARS_DUMMY))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        datasets.load_split(builder, "test")

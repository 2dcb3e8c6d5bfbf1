"""raw_io helpers: numeric frame order, image magic bytes, deterministic .mat files."""

import numpy as np
import pytest
import scipy.io

from psta_jax.datasets import raw_io


def test_frames_sort_by_number_not_text():
    names = ["f_10.png", "f_9.png", "f_100.png", "f_1.png"]
    assert raw_io.sort_frames_numerically(names) == ["f_1.png", "f_9.png", "f_10.png", "f_100.png"]
    assert raw_io.frame_number("cam2_person012_00045.png") == 45
    with pytest.raises(raw_io.CorruptRawDataError, match="no frame number"):
        raw_io.frame_number("cover.png")


def test_image_format_from_magic_bytes():
    pixels = np.zeros((4, 2, 3), np.uint8)
    assert raw_io.image_format(raw_io.encode_image(pixels, "jpeg")) == "jpeg"
    assert raw_io.image_format(raw_io.encode_image(pixels, "png")) == "png"
    assert raw_io.image_format(b"GIF89a...") is None


def test_corrupt_image_names_the_file(tmp_path):
    path = tmp_path / "0001C1T0001F001.jpg"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(raw_io.CorruptRawDataError, match="0001C1T0001F001.jpg"):
        raw_io.read_image_bytes("MARS", path)
    with pytest.raises(raw_io.MissingRawDataError, match="missing.jpg"):
        raw_io.read_image_bytes("MARS", tmp_path / "missing.jpg")


def test_write_mat_is_byte_deterministic_and_loadable(tmp_path):
    table = np.arange(8, dtype=np.int32).reshape(2, 4)
    raw_io.write_mat(tmp_path / "a.mat", {"track_train_info": table})
    raw_io.write_mat(tmp_path / "b.mat", {"track_train_info": table})
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()
    loaded = scipy.io.loadmat(tmp_path / "a.mat")["track_train_info"]
    assert loaded.dtype == np.int32 and np.array_equal(loaded, table)


def test_load_mat_variable_checks_name_and_shape(tmp_path):
    raw_io.write_mat(tmp_path / "s.mat", {"ls_set": np.ones((2, 3)), "other": np.ones(3)})
    assert raw_io.load_mat_variable("X", tmp_path / "s.mat", "ls_set", "").shape == (2, 3)
    with pytest.raises(raw_io.CorruptRawDataError, match="no variable 'query_IDX'"):
        raw_io.load_mat_variable("X", tmp_path / "s.mat", "query_IDX", "")
    with pytest.raises(raw_io.MissingRawDataError, match="absent.mat"):
        raw_io.load_mat_variable("X", tmp_path / "absent.mat", "ls_set", "layout")


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "split.json").write_text("[1]")
    before = raw_io.fingerprint(tmp_path, ["split.json", "other.mat"])
    assert before == raw_io.fingerprint(tmp_path, ["split.json", "other.mat"])
    (tmp_path / "split.json").write_text("[2]")
    assert raw_io.fingerprint(tmp_path, ["split.json", "other.mat"]) != before

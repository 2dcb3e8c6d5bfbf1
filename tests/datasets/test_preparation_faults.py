"""Preparation on a read-only mount, from an empty raw folder and onto a full disk: one message
each (no traceback), and the user's files byte-identical. Root ignores chmod, so the faults are
injected: the OS functions raise what a read-only mount or a full disk makes them raise."""

import builtins
import errno
import os
import shutil

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from psta_jax import config_base, datasets
from psta_jax.datasets import loading, preparation, raw_io, synthetic
from psta_jax.runtime import cli
from psta_jax.runtime.errors import UserError
from tests.helpers.commands import exit_code_and_stderr
from tests.helpers.files import snapshot

CONFIG = synthetic.SyntheticConfig(
    seed=2, num_train_ids=3, num_test_ids=3, num_unmatched_ids=1, num_distractor_tracklets=1,
    num_junk_tracklets=1, num_cameras=2, min_frames=2, max_frames=3, height=16, width=8,
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _spec(data_dir, raw_dir) -> loading.DatasetSpec:
    config = config_base.dataset_config("mars", None, raw_dir=str(raw_dir))
    config.data_dir = str(data_dir)
    return config_base.dataset_spec(config)


def _command(body, capsys, monkeypatch) -> tuple[int, str]:
    """Runs `body` as a command's body (the way psta-train reports errors); returns (exit
    code, stderr)."""
    command = cli.Command(
        name="psta-train", summary="test", define_flags=lambda values, argv: None,
        run=lambda values: body(), uses_jax=False, uses_tensorflow=False,
    )  # fmt: skip
    return exit_code_and_stderr(lambda: command([]), capsys, monkeypatch)


def _read_only(monkeypatch, root) -> None:
    """Makes every write under `root` fail as on a read-only mount (EROFS)."""
    root = os.path.abspath(root)

    def inside(path) -> bool:
        if isinstance(path, int):
            return False
        path = os.path.abspath(os.fsdecode(os.fspath(path)))
        return os.path.commonpath([path, root]) == root

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guard(original, *, when=lambda *args, **kwargs: True):
        def guarded(path, *args, **kwargs):
            if inside(path) and when(path, *args, **kwargs):
                refuse(path)
            return original(path, *args, **kwargs)

        return guarded

    def writes(path, mode="r", *args, **kwargs):
        return any(c in mode for c in "wax+")

    def missing(path, *args, **kwargs):
        return not os.path.isdir(path)

    def rmtree(path, ignore_errors=False, *args, **kwargs):
        if inside(path):
            if ignore_errors:
                return None
            refuse(path)
        return real_rmtree(path, ignore_errors, *args, **kwargs)

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(builtins, "open", guard(builtins.open, when=writes))
    monkeypatch.setattr(
        os, "open", guard(os.open, when=lambda path, flags, *a, **k: flags & _WRITE_FLAGS)
    )
    monkeypatch.setattr(os, "makedirs", guard(os.makedirs, when=missing))
    for name in ("mkdir", "rmdir", "remove", "unlink", "rename", "replace", "utime", "chmod"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(shutil, "rmtree", rmtree)


def test_a_prepared_dataset_on_a_read_only_mount_is_used(raw, tmp_path, monkeypatch):
    datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    prepared = tmp_path / "tfds" / "synthetic_mars"
    (prepared / "mars" / "incomplete.AB12CD_1.0.0").mkdir()  # left by an interrupted run
    before = snapshot(tmp_path)
    _read_only(monkeypatch, tmp_path)
    builder = loading.prepare(_spec(tmp_path, raw))
    assert len(list(tfds.as_numpy(datasets.load_split(builder, "query")))) > 0
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert (prepared / "mars" / "incomplete.AB12CD_1.0.0").is_dir()


def test_a_read_only_folder_that_must_be_written_says_so(raw, tmp_path, capsys, monkeypatch):
    datasets.build("mars", data_dir=str(tmp_path / "data"), raw_dir=raw)
    name = raw_io.read_lines(os.path.join(raw, "info", "train_name.txt"))[0]
    frame = os.path.join(raw, "bbox_train", name[:4], name)
    os.utime(frame, ns=(0, os.stat(frame).st_mtime_ns + 10**9))  # the raw folder changed
    before = snapshot(tmp_path)
    _read_only(monkeypatch, tmp_path)
    spec = _spec(tmp_path / "data", raw)
    code, err = _command(lambda: loading.prepare(spec), capsys, monkeypatch)
    prepared = str(tmp_path / "data" / "tfds" / "synthetic_mars")
    assert code == 1 and "Traceback" not in err
    assert f"must write to {prepared}" in err and "changed since it was prepared" in err
    assert "not writable (Read-only file system)" in err
    assert f"--config.data_dir=<a writable folder> --config.dataset.raw_dir={raw}" in err
    assert issubclass(preparation.PreparationWriteError, UserError)
    with pytest.raises(preparation.PreparationWriteError, match="nothing is prepared there yet"):
        loading.prepare(_spec(tmp_path / "fresh", raw))
    monkeypatch.undo()
    assert snapshot(tmp_path) == before


def test_an_empty_raw_folder_is_reported_as_missing(raw, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty_mars"
    empty.mkdir()
    code, err = _command(lambda: loading.prepare(_spec(tmp_path, empty)), capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err and "AssertionError" not in err
    assert f"raw dataset folder not found at {empty} (it exists but is empty" in err
    assert "bbox_train/" in err and "info/query_IDX.mat" in err
    with pytest.raises(datasets.MissingRawDataError):
        datasets.build("mars", data_dir=str(tmp_path), raw_dir=str(empty))
    assert not (tmp_path / "tfds" / "empty_mars" / "mars" / "1.0.0").exists()
    # A prepared copy whose raw folder is now empty is used as it is, like one without.
    datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    shutil.rmtree(raw)
    os.mkdir(raw)
    builder = datasets.build("mars", data_dir=str(tmp_path), raw_dir=raw)
    assert datasets.reid_info(builder).num_train_ids == CONFIG.num_train_ids


def test_a_full_disk_leaves_nothing_prepared(raw, tmp_path, capsys, monkeypatch):
    data_dir = tmp_path / "data"
    raw_before = snapshot(raw)
    original = file_adapters.TfRecordFileAdapter.write_examples

    def write_examples(cls, path, iterator):
        if "-train." in os.fspath(path):
            return original(path, iterator)
        with open(path, "wb") as f:  # part of a shard, then the disk is full
            f.write(b"\0" * 64)
        raise tf.errors.ResourceExhaustedError(None, None, f"{path}; No space left on device")

    monkeypatch.setattr(
        file_adapters.TfRecordFileAdapter, "write_examples", classmethod(write_examples)
    )
    code, err = _command(lambda: loading.prepare(_spec(data_dir, raw)), capsys, monkeypatch)
    prepared = data_dir / "tfds" / "synthetic_mars"
    assert code == 1 and "Traceback" not in err
    assert f"cannot prepare {raw} into {prepared}: No space left on device" in err
    assert "MiB free there" in err and "Free disk space" in err
    assert f"--config.data_dir=<a folder with room> --config.dataset.raw_dir={raw}" in err
    assert not [p for p in (prepared / "mars").iterdir() if p.name != "downloads"]
    assert snapshot(raw) == raw_before
    monkeypatch.undo()
    # Nothing was taken as prepared: the next run prepares it in full.
    builder = datasets.build("mars", data_dir=str(data_dir), raw_dir=raw)
    assert not preparation.damaged_files(builder)
    assert builder.info.splits["gallery"].num_examples > 0

"""The synthetic generator never deletes or replaces a file or folder it did not create, and a
run never regenerates a dataset (issue: `--num_train_ids 40`, add NOTES.txt, run the demo: the
file was gone; `syn.previous/README.txt` gone after `--overwrite`)."""

import dataclasses
import errno
import os
import subprocess
import sys

import pytest

from psta_jax import config_base
from psta_jax.datasets import loading, synthetic
from psta_jax.runtime.errors import UserError
from tests.conftest import REPO_ROOT
from tests.helpers.commands import exit_code_and_stderr
from tests.helpers.files import snapshot

SMALL = synthetic.SyntheticConfig(
    seed=1, num_train_ids=3, num_test_ids=3, num_unmatched_ids=1, num_distractor_tracklets=1,
    num_junk_tracklets=1, num_cameras=2, min_frames=2, max_frames=3, height=16, width=8,
)  # fmt: skip
OTHER = dataclasses.replace(SMALL, num_train_ids=4)


def _command(argv, capsys, monkeypatch):
    """Runs psta-synthetic in this process; returns (exit code, stderr)."""
    return exit_code_and_stderr(lambda: synthetic.main(argv), capsys, monkeypatch)


def _with_user_folders(tmp_path):
    """Folders of a user beside the dataset, named as the generator once named its own."""
    for name, text in (("synthetic_mars.previous", "README"), ("synthetic_mars.partial", "N")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.txt").write_text(text)
    return {name: snapshot(str(tmp_path / name)) for name in os.listdir(tmp_path)}


def test_a_run_never_regenerates_a_folder_of_another_config(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    before = snapshot(out)
    config = config_base.dataset_config("mars", None, raw_dir=out, synthetic=True)
    config.data_dir = str(tmp_path)
    config.dataset.synthetic_sizes = dataclasses.asdict(SMALL)
    with pytest.raises(synthetic.SyntheticConfigMismatchError) as error:
        loading.prepare(config_base.dataset_spec(config))  # what a run calls
    assert isinstance(error.value, UserError)
    message = str(error.value)
    assert out in message and "num_train_ids 4 -> 3" in message
    assert "--config.dataset.raw_dir" in message and "nothing was changed" in message
    assert f"psta-synthetic --out={out} --overwrite --seed=1 --num_train_ids=3" in message
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["synthetic_mars"]  # Nothing prepared either.
    assert not synthetic.ensure(out, OTHER)  # Its own config: used as it is.


def test_a_folder_with_user_files_is_never_replaced(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    (tmp_path / "synthetic_mars" / "NOTES.txt").write_text("my notes")
    (tmp_path / "synthetic_mars" / "mine").mkdir()
    before = snapshot(out)
    with pytest.raises(synthetic.SyntheticConfigMismatchError) as error:
        synthetic.ensure(out, SMALL)
    assert "first move out" in str(error.value) and "NOTES.txt, mine/" in str(error.value)
    with pytest.raises(synthetic.SyntheticFolderError) as error:
        synthetic.replace(out, SMALL)  # --overwrite
    message = str(error.value)
    assert "NOTES.txt" in message and "mine/" in message and "Nothing was deleted" in message
    assert "num_train_ids 4 -> 3" in message and "raw_dir" in message
    assert snapshot(out) == before and os.path.isdir(os.path.join(out, "mine"))
    assert sorted(os.listdir(tmp_path)) == ["synthetic_mars"]


def test_a_changed_generated_file_also_blocks_overwrite(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    with open(os.path.join(out, "info", "train_name.txt"), "a") as f:
        f.write("extra.jpg\n")
    before = snapshot(out)
    with pytest.raises(synthetic.SyntheticFolderError, match="info/train_name.txt"):
        synthetic.replace(out, SMALL)
    assert snapshot(out) == before


def test_overwrite_replaces_only_its_own_output(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    users = _with_user_folders(tmp_path)
    code, err = _command(
        ["--out", out, "--overwrite", *synthetic.command_flags(SMALL).split()], capsys, monkeypatch
    )
    assert (code, err) == (0, "")
    fresh = str(tmp_path / "fresh")
    synthetic.generate(fresh, SMALL)
    assert snapshot(out) == snapshot(fresh)
    for name, files in users.items():  # The user's folders, byte for byte.
        if name != "synthetic_mars":
            assert snapshot(str(tmp_path / name)) == files
    # No temporary folder left behind.
    assert sorted(os.listdir(tmp_path)) == sorted([*users, "fresh"])


def test_generate_fills_an_empty_folder_and_leaves_others_alone(tmp_path):
    out = tmp_path / "synthetic_mars"
    out.mkdir()
    inode = out.stat().st_ino
    users = _with_user_folders(tmp_path)
    assert synthetic.ensure(str(out), SMALL)
    assert out.stat().st_ino == inode  # Filled, not replaced.
    assert (out / synthetic.MARKER_FILE).is_file()
    for name, files in users.items():
        if name != "synthetic_mars":
            assert snapshot(str(tmp_path / name)) == files
    assert sorted(os.listdir(tmp_path)) == sorted(users)


def test_a_full_disk_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    before = snapshot(out)

    def full_disk(*args, **kwargs):  # After the frames: the partial folder holds files.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(synthetic.layout, "write_info", full_disk)
    code, err = _command(
        ["--out", out, "--overwrite", *synthetic.command_flags(SMALL).split()], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in err
    assert f"error: synthetic MARS: cannot write {out}: No space left on device" in err
    assert "MiB free" in err and "--out" in err
    assert snapshot(out) == before
    assert os.listdir(tmp_path) == ["synthetic_mars"]
    with pytest.raises(synthetic.SyntheticWriteError, match="No space left"):
        synthetic.generate(str(tmp_path / "new"), SMALL)
    assert os.listdir(tmp_path) == ["synthetic_mars"]


def test_cli_overwrite_refuses_with_one_message(tmp_path):
    out = tmp_path / "synthetic_mars"
    synthetic.generate(str(out), SMALL)
    (out / "bbox_train" / "keep.jpg").write_bytes(b"mine")
    before = snapshot(str(out))
    result = subprocess.run(
        [sys.executable, "-m", "psta_jax.datasets.synthetic", "--out", str(out), "--overwrite",
         "--num_train_ids", "4", "--num_test_ids", "3", "--num_cameras", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: synthetic MARS" in result.stderr and "bbox_train/keep.jpg" in result.stderr
    assert snapshot(str(out)) == before

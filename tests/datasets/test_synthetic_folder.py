"""The synthetic generator never deletes a file it did not write (issue: `--num_train_ids 40`,
add NOTES.txt, run the demo: the file was gone)."""

import dataclasses
import os
import subprocess
import sys

import pytest

from psta_jax.datasets import synthetic
from tests.conftest import REPO_ROOT
from tests.helpers.files import snapshot

SMALL = synthetic.SyntheticConfig(
    seed=1, num_train_ids=3, num_test_ids=3, num_unmatched_ids=1, num_distractor_tracklets=1,
    num_junk_tracklets=1, num_cameras=2, min_frames=2, max_frames=3, height=16, width=8,
)  # fmt: skip
OTHER = dataclasses.replace(SMALL, num_train_ids=4)


def test_a_folder_with_user_files_is_never_replaced(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    (tmp_path / "synthetic_mars" / "NOTES.txt").write_text("my notes")
    before = snapshot(out)
    with pytest.raises(synthetic.SyntheticFolderError) as error:
        synthetic.ensure(out, SMALL)
    message = str(error.value)
    assert "NOTES.txt" in message and "Nothing was deleted" in message
    assert "num_train_ids 4 -> 3" in message and "raw_dir" in message
    assert snapshot(out) == before


def test_a_changed_generated_file_also_blocks_replacement(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    with open(os.path.join(out, "info", "train_name.txt"), "a") as f:
        f.write("extra.jpg\n")
    before = snapshot(out)
    with pytest.raises(synthetic.SyntheticFolderError, match="info/train_name.txt"):
        synthetic.ensure(out, SMALL)
    assert snapshot(out) == before


def test_untouched_generator_output_is_regenerated(tmp_path):
    out = str(tmp_path / "synthetic_mars")
    synthetic.generate(out, OTHER)
    assert synthetic.ensure(out, SMALL)
    fresh = str(tmp_path / "fresh")
    synthetic.generate(fresh, SMALL)
    assert snapshot(out) == snapshot(fresh)
    assert sorted(os.listdir(tmp_path)) == ["fresh", "synthetic_mars"]  # No .partial/.previous.


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

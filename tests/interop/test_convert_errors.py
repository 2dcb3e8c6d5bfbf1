"""interop.convert on files that are not usable checkpoints: one message that says what it is."""

import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from psta_jax import config_base
from psta_jax.interop import convert
from psta_jax.interop.torch_import import NotATorchCheckpointError, WeightImportError
from tests.conftest import REPO_ROOT


def test_cli_on_a_file_that_is_not_a_checkpoint(tmp_path):
    source = tmp_path / "model.pth"
    source.write_text("<html>404 Not Found</html>\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "psta_jax.interop.convert", f"--checkpoint={source}",
         f"--out={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "is not a PyTorch checkpoint" in result.stderr and str(source) in result.stderr
    assert "weights_only" not in result.stderr
    assert not out.exists()


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not weights")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda p: pickle.dump({"a": np.ones(2)}, open(p, "wb")), "is not a PyTorch checkpoint"),
        (_zip_of_text, "is a zip archive but not a PyTorch"),
        (None, "the file does not exist"),
    ],
)
def test_not_a_checkpoint_messages(tmp_path, content, expected):
    source = tmp_path / "weights.pth"
    if content is not None:
        content(source)
    with pytest.raises(NotATorchCheckpointError, match=expected) as error:
        convert.convert(str(source), tmp_path / "out", config_base.base_config())
    assert "weights_only" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_damaged_and_unsafe_checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(NotATorchCheckpointError, match="damaged or truncated PyTorch checkpoint"):
        convert.convert(str(truncated), tmp_path / "out", config_base.base_config())

    import argparse

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=1)}, unsafe)
    with pytest.raises(WeightImportError, match="argparse.Namespace") as error:
        convert.convert(str(unsafe), tmp_path / "out", config_base.base_config())
    assert "weights_only" not in str(error.value)


def test_numpy_scalars_beside_the_state_dict_are_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    from psta_jax.interop.torch_import import read_torch_checkpoint

    path = tmp_path / "release.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}, "rank1": np.float64(0.9), "epoch": 350}, path)
    assert list(read_torch_checkpoint(path)) == ["w"]


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(convert.OutputExistsError, match="not empty"):
        convert.convert({}, tmp_path / "out", config_base.base_config())
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"

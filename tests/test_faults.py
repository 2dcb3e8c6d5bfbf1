"""Bad input and faults through `python -m psta_jax.main`: one clear message, nothing lost.

Every case asserts the exit code, that no traceback is printed, the key words of the message,
and that the checkpoints and result files written before are byte-identical afterwards. Two
subprocess trainings in all (the run the other cases damage, and the resume that falls back
past a damaged checkpoint); the rest fail before training or run in this process.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from psta_jax.datasets import raw_io, synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.xdist_group("train_e2e")

TRAIN_FLAGS = (
    "--config.num_train_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=2",
)


def _main(workdir, data_dir, *flags, timeout=900):
    cmd = [
        sys.executable,
        "-m",
        "psta_jax.main",
        f"--config=tests/helpers/tiny_config.py:{data_dir}",
        f"--workdir={workdir}",
        *flags,
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def snapshot(root) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root` (the lock-free run outputs)."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def assert_clean_failure(result, *keywords, code=1):
    """Exit `code`, no traceback anywhere, and every keyword in stderr."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for keyword in keywords:
        assert keyword in result.stderr, (keyword, result.stderr[-3000:])


def _query_frames(raw: str) -> list[str]:
    """Frame paths of the first query tracklet of a MARS-layout folder."""
    import scipy.io

    info = scipy.io.loadmat(os.path.join(raw, "info", "tracks_test_info.mat"))["track_test_info"]
    row = int(scipy.io.loadmat(os.path.join(raw, "info", "query_IDX.mat"))["query_IDX"][0, 0])
    start, end = info[row - 1, :2]
    names = raw_io.read_lines(os.path.join(raw, "info", "test_name.txt"))[start - 1 : end]
    return [os.path.join(raw, "bbox_test", name[:4], name) for name in names]


@pytest.fixture(scope="module")
def damaged_data(tmp_path_factory):
    """A data folder whose synthetic MARS has five truncated frames in one query tracklet."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    raw = os.path.join(data_dir, "synthetic_mars")
    synthetic.ensure(raw)
    bad = _query_frames(raw)[:5]
    for path in bad:  # truncate -s 50%
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    return data_dir, [os.path.relpath(p, raw) for p in bad]


def test_corrupt_frames_stop_before_training_with_their_list(damaged_data, tmp_path):
    data_dir, bad = damaged_data
    before = snapshot(os.path.join(data_dir, "synthetic_mars"))
    result = _main(str(tmp_path / "run"), data_dir, *TRAIN_FLAGS)
    assert_clean_failure(result, *bad, "query tracklet 0", "skip_bad_frames=True")
    assert not os.path.isdir(tmp_path / "run" / "checkpoints")
    assert snapshot(os.path.join(data_dir, "synthetic_mars")) == before


@pytest.fixture(scope="module")
def trained(damaged_data, tmp_path_factory):
    """4 steps with the bad frames skipped, checkpoints at 2 and 4, evaluated at both."""
    data_dir, _ = damaged_data
    workdir = str(tmp_path_factory.mktemp("trained"))
    result = _main(workdir, data_dir, *TRAIN_FLAGS, "--config.dataset.skip_bad_frames=True")
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir, workdir


def test_skipped_frames_leave_the_run_intact(trained):
    _, workdir = trained
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    assert os.path.isfile(os.path.join(workdir, "results.json"))


def test_invalid_mode_is_refused_before_jax_starts(tmp_path):
    result = _main(str(tmp_path / "run"), str(tmp_path), "--config.mode=trian", timeout=120)
    assert_clean_failure(result, "config.mode", "'trian'", "'train' or 'evaluate'")
    assert "JAX process" not in result.stderr
    assert not os.path.exists(tmp_path / "run")


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = _main(str(blocker / "run"), str(tmp_path), timeout=120)
    assert_clean_failure(result, "workdir", str(blocker / "run"))


def test_missing_raw_data(tmp_path):
    missing = str(tmp_path / "MARS")
    result = _main(
        str(tmp_path / "run"),
        str(tmp_path),
        "--config.dataset.synthetic=False",
        f"--config.dataset.raw_dir={missing}",
        timeout=300,
    )
    assert_clean_failure(result, "raw dataset folder not found", missing)


def test_incompatible_checkpoint_is_refused_and_kept(trained):
    data_dir, workdir = trained
    before = snapshot(workdir)
    result = _main(workdir, data_dir, *TRAIN_FLAGS, "--config.model.feature_dim=16")
    assert_clean_failure(result, "feature_dim", workdir)
    assert "damaged" not in result.stderr
    assert snapshot(workdir) == before


def test_truncated_prepared_file_without_raw_folder(trained, tmp_path):
    data_dir, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "tfds"), copy / "tfds")
    (shard,) = (copy / "tfds" / "synthetic_mars" / "mars" / "1.0.0").glob("mars-gallery.tfrecord*")
    os.truncate(shard, os.path.getsize(shard) // 2)
    result = _main(
        str(tmp_path / "run"),
        str(copy),
        "--config.dataset.synthetic=False",
        timeout=300,
    )
    assert_clean_failure(result, str(shard), "delete", str(copy / "tfds" / "synthetic_mars"))

"""Bad input and faults through `python -m psta_jax.main`: one clear message, nothing lost.

Every case asserts the exit code, that no traceback is printed, the key words of the message,
and that the checkpoints and result files written before are byte-identical afterwards. Two
subprocess trainings in all (the run the other cases damage, and the resume that falls back
past a damaged checkpoint); the rest fail before training or run in this process.
"""

import os
import shutil
import subprocess
import sys

import pytest

from psta_jax.datasets import raw_io, synthetic
from tests.conftest import REPO_ROOT
from tests.helpers.files import hold_training_lock, snapshot

pytestmark = [pytest.mark.xdist_group("train_e2e"), pytest.mark.slow]

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


def test_verbose_shows_the_traceback(tmp_path):
    result = _main(str(tmp_path / "run"), str(tmp_path), "--config.mode=trian", "--verbose")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_evaluate_without_checkpoint(tmp_path):
    result = _main(str(tmp_path / "run"), str(tmp_path), "--config.mode=evaluate", timeout=300)
    assert_clean_failure(result, "no checkpoint found at", str(tmp_path / "run"))


def test_inspection_of_a_folder_that_is_not_a_workdir(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "psta_jax.inspection", f"--workdirs={tmp_path}",
         f"--out={tmp_path / 'out'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert_clean_failure(result, "no config.json at", str(tmp_path), "training workdir")


def test_damaged_latest_checkpoint_falls_back_and_is_kept(trained, tmp_path):
    data_dir, trained_dir = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_dir, workdir)
    os.remove(os.path.join(workdir, "checkpoints", "4", "model", "manifest.ocdbt"))
    before = snapshot(workdir)
    result = _main(workdir, data_dir, *TRAIN_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "checkpoint step 4" in result.stderr and "is damaged" in result.stderr
    assert "resuming from step 2" in result.stderr and "damaged_checkpoints" in result.stderr
    after = snapshot(workdir)
    for name, data in before.items():
        if name.startswith("checkpoints/2/"):
            assert after[name] == data, name
        if name.startswith("checkpoints/4/"):  # Moved aside, byte for byte.
            assert after["damaged_" + name] == data, name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_damaged_and_incompatible_checkpoints_get_different_messages(tmp_path):
    import glob

    import jax.numpy as jnp

    from psta_jax.runtime import checkpointing, workdir

    items = {"model": {"w": jnp.arange(64.0), "b": jnp.ones(3)}, "opt": {"step": jnp.int32(1)}}
    with checkpointing.Checkpoints(tmp_path, async_save=False) as saved:
        saved.save(1, items)
        saved.save(2, items)
    for path in glob.glob(str(tmp_path / "checkpoints" / "2" / "model" / "**" / "d" / "*"),
                          recursive=True):  # fmt: skip
        os.truncate(path, os.path.getsize(path) // 2)  # Truncated data files.
    before = snapshot(tmp_path)
    with checkpointing.Checkpoints(tmp_path, async_save=False) as damaged:
        with pytest.raises(checkpointing.DamagedCheckpointError, match="step 2 .* is damaged"):
            damaged.restore(2, items)
        other = {"model": {"w": jnp.zeros(65), "b": jnp.ones(3)}, "opt": items["opt"]}
        with pytest.raises(workdir.IncompatibleCheckpointError) as error:
            damaged.restore(1, other)
        assert "model/w: shape (64,) saved, (65,) now" in str(error.value)
        assert "is damaged" not in str(error.value)
    assert snapshot(tmp_path) == before  # Failed restores change nothing.


def _fail_saving_step(monkeypatch, failing_step, on_failure):
    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == failing_step:
            self.wait_until_finished()
            on_failure()
            # What Orbax raises when the disk is full (seen on a full tmpfs).
            raise ValueError(
                'RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database: '
                "[OS error: No space left on device]"
            )
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_failed_save_stops_training_at_once(trained, tmp_path, monkeypatch, capsys):
    import json

    from psta_jax.runtime import cli
    from psta_jax.training import loop
    from tests.helpers.tiny import tiny_run_config

    data_dir, _ = trained
    workdir = str(tmp_path / "run")
    config = tiny_run_config(
        data_dir, num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=100
    )
    kept = {}
    _fail_saving_step(monkeypatch, 4, lambda: kept.update(snapshot(workdir)))
    command = cli.Command(
        name="psta-test",
        summary="",
        define_flags=lambda values, argv: None,
        run=lambda values: loop.train_and_evaluate(config, workdir),
        uses_jax=False,
        uses_tensorflow=False,
    )
    with pytest.raises(SystemExit) as exit_info:
        command([])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    checkpoints = os.path.join(workdir, "checkpoints")
    for keyword in ("cannot save the checkpoint of step 4", checkpoints, "MiB free",
                    "No space left on device", "step 2 is the last good checkpoint"):  # fmt: skip
        assert keyword in err, (keyword, err[-2000:])
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k.startswith("checkpoints/2/")} == {
        k: v for k, v in kept.items() if k.startswith("checkpoints/2/")
    }
    assert sorted(os.listdir(checkpoints)) == ["2"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert max(json.loads(line)["step"] for line in f) == 4  # Stopped at once.


def test_failed_asynchronous_save_is_reported_at_the_next_step(tmp_path, monkeypatch):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from psta_jax.runtime import checkpointing

    items = {"model": {"w": jnp.arange(8.0)}, "opt": {"step": jnp.int32(1)}}
    with checkpointing.Checkpoints(tmp_path) as saved:
        saved.save(2, items)
        saved.wait()
        saved.raise_if_save_failed()  # Nothing failed: no error.

        def failed_wait(self):
            raise ValueError("PERMISSION_DENIED: Failed writing: [OS error: Permission denied]")

        monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failed_wait)
        monkeypatch.setattr(ocp.CheckpointManager, "is_saving_in_progress", lambda self: False)
        with pytest.raises(checkpointing.CheckpointSaveError, match="Permission denied"):
            saved.raise_if_save_failed()
        saved.wait()  # Reported once: the final wait stays quiet.


def test_failed_evaluation_keeps_the_step(trained, tmp_path, monkeypatch):
    from psta_jax.training import loop
    from tests.helpers.tiny import tiny_run_config

    data_dir, _ = trained
    workdir = str(tmp_path / "run")
    config = tiny_run_config(
        data_dir, num_train_steps=4, checkpoint_every_steps=100, eval_every_steps=3
    )

    def failing_evaluation(*args, **kwargs):
        raise RuntimeError("jpeg::Uncompress failed")

    monkeypatch.setattr(loop.evaluator_lib.Evaluator, "__call__", failing_evaluation)
    with pytest.raises(RuntimeError, match="Uncompress"):
        loop.train_and_evaluate(config, workdir)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]


def test_damaged_prepared_record_names_file_and_fix(trained, tmp_path):
    from psta_jax import config_base, datasets
    from psta_jax.datasets import preparation
    from tests.helpers.tiny import tiny_run_config

    data_dir, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "tfds"), copy / "tfds")
    (shard,) = (copy / "tfds" / "synthetic_mars" / "mars" / "1.0.0").glob("mars-query.tfrecord*")
    with open(shard, "r+b") as f:  # Same size, damaged bytes: only the record checksum sees it.
        f.seek(200)
        f.write(b"\x00" * 64)
    config = tiny_run_config(str(copy))
    config.dataset.synthetic = False
    config.dataset.raw_dir = str(copy / "synthetic_mars")  # Absent: nothing to rebuild from.
    with pytest.raises(preparation.PreparedDataError) as error:
        datasets.open_dataset(config_base.dataset_spec(config))
    assert str(shard) in str(error.value) and "delete" in str(error.value)


@pytest.mark.parametrize(
    ("config_flags", "expected"),
    [
        (["--config=tests/helpers/tiny_config.py:DATA,nopreset"], "unknown config preset"),
        (["--config=configs/nonexistent.py"], "cannot load --config"),
        (["--config=configs/demo.py", "--config.batch.identitis=3"], 'Did you mean "identities"'),
        (["--config=configs/demo.py", "--config.batch.identities=three"], "'three'"),
    ],
)
def test_config_errors_are_one_message(tmp_path, config_flags, expected):
    flags = [f.replace("DATA", str(tmp_path)) for f in config_flags]
    result = subprocess.run(
        [sys.executable, "-m", "psta_jax.main", f"--workdir={tmp_path / 'run'}", *flags],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_clean_failure(result, "error:", expected, code=2)  # a usage error, as a bad flag
    assert not os.path.exists(tmp_path / "run")


def test_a_second_training_in_the_same_workdir_stops_and_leaves_the_first_intact(trained):
    data_dir, workdir = trained
    holder = hold_training_lock(workdir)  # stands in for a training still running there
    try:
        before = snapshot(workdir)
        result = _main(workdir, data_dir, *TRAIN_FLAGS, "--config.num_train_steps=6", timeout=300)
        assert_clean_failure(result, "another training is running", f"process {holder.pid}")
        assert snapshot(workdir) == before
    finally:
        holder.kill()
        holder.wait()

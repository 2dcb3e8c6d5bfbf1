"""A workdir's config.json, results and checkpoint identity: one reader and writer."""

import json
import os
import socket

import ml_collections
import pytest

from psta_jax.runtime import workdir
from tests.helpers.files import hold_training_lock


def _config(**model) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"model": {"depth": 50, "feature_dim": 1024, "dtype": "float32", **model}, "seed": 0}
    )


def test_the_run_config_is_found_from_a_step_folder(tmp_path):
    workdir.write_run_config(tmp_path, _config(), 625, converted_from="x.pth")
    step_folder = tmp_path / "checkpoints" / "120"
    step_folder.mkdir(parents=True)
    found = workdir.find_run_config(step_folder)
    assert found.num_classes == 625 and found.config.model.depth == 50
    assert found.payload["converted_from"] == "x.pth" and found.folder == tmp_path
    assert "num_classes" not in found.config
    assert workdir.find_run_config(tmp_path / "elsewhere" / "a" / "b") is None
    with pytest.raises(workdir.RunConfigError, match="two levels above"):
        workdir.load_run_config(tmp_path / "elsewhere" / "a" / "b")


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"model": {"depth"', "not valid JSON"),
        ('{"seed": 0}', "integer 'num_classes'"),
        ("[1, 2]", "expected a run's config"),
    ],
)
def test_a_damaged_config_json_is_one_message(tmp_path, text, words):
    (tmp_path / workdir.CONFIG_FILE).write_text(text)
    with pytest.raises(workdir.RunConfigError, match=words) as error:
        workdir.find_run_config(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_check_compatible_names_the_differing_fields(tmp_path):
    workdir.write_run_config(tmp_path, _config(), 625)
    saved = workdir.find_run_config(tmp_path)
    workdir.check_compatible(saved, _config(dtype="bfloat16").model.to_dict(), 625)  # compute only
    workdir.check_compatible(None, _config(depth=18).model.to_dict(), 3)  # a new workdir
    with pytest.raises(workdir.IncompatibleCheckpointError) as error:
        workdir.check_compatible(saved, _config(depth=18).model.to_dict(), 10)
    assert "model.depth: checkpoint 50, now 18" in str(error.value)
    assert "num_classes: checkpoint 625, now 10" in str(error.value)


def test_identity_hashes_the_saved_config(tmp_path):
    workdir.write_run_config(tmp_path, _config(), 625)
    payload = workdir.find_run_config(tmp_path).payload
    other = dict(payload, seed=1)
    assert workdir.config_hash(payload) == workdir.config_hash(json.loads(json.dumps(payload)))
    assert workdir.config_hash(payload) != workdir.config_hash(other)
    a = workdir.CheckpointIdentity(workdir.config_hash(payload), 10, "/a")
    assert a.same_model(workdir.CheckpointIdentity(a.config_hash, 10, "/b"))
    assert not a.same_model(workdir.CheckpointIdentity(a.config_hash, 11))


def test_results_are_replaced_whole_and_read_back(tmp_path):
    assert workdir.read_results(tmp_path) is None
    workdir.write_results(tmp_path, workdir.EVAL_RESULTS_FILE, {"mAP": 0.5})
    workdir.write_results(tmp_path, workdir.EVAL_RESULTS_FILE, {"mAP": 0.25})
    assert workdir.read_results(tmp_path) == {"mAP": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir.EVAL_RESULTS_FILE]
    workdir.write_results(tmp_path, workdir.RESULTS_FILE, {"mAP": 0.75})
    assert workdir.read_results(tmp_path) == {"mAP": 0.75}  # results.json first


def test_an_unwritable_workdir_is_one_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(workdir.WorkdirError, match="cannot write to the workdir"):
        workdir.check_writable(blocker / "run")
    workdir.check_writable(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir()


def test_a_new_run_inside_another_runs_workdir_is_its_own(tmp_path):
    """Training looks at its workdir's own config.json only (levels_up=0), so a run started
    in a sub-folder of a trained workdir is not taken for a checkpoint of that run."""
    workdir.write_run_config(tmp_path, _config(), 625)
    inner = tmp_path / "ablation"
    inner.mkdir()
    assert workdir.find_run_config(inner).num_classes == 625  # a step folder's lookup
    assert workdir.find_run_config(inner, levels_up=0) is None


def test_a_second_training_in_a_workdir_is_refused_until_the_first_exits(tmp_path):
    holder = hold_training_lock(tmp_path)
    try:
        with pytest.raises(workdir.WorkdirBusyError) as error:
            with workdir.training_lock(tmp_path):
                pytest.fail("the lock was taken twice")
        message = str(error.value)
        assert f"process {holder.pid} on host {socket.gethostname()}" in message
        assert str(tmp_path) in message and "choose another --workdir" in message
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the operating system drops the lock
        holder.wait()
    with workdir.training_lock(tmp_path):
        assert f"process {os.getpid()} " in (tmp_path / workdir.LOCK_FILE).read_text()
    assert (tmp_path / workdir.LOCK_FILE).read_text() == ""

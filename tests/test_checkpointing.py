"""Checkpoint bookkeeping: relative workdirs, best-by-mAP, clear errors, compatibility."""

import jax.numpy as jnp
import numpy as np
import pytest

from psta_jax import checkpointing


def _items(value: float) -> dict:
    return {"model": {"w": jnp.full((3,), value)}, "opt": {"step": jnp.int32(int(value))}}


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manager = checkpointing.Checkpoints("runs/relative", max_to_keep=2)
    for step in (1, 2, 3):
        manager.save(step, _items(step))
    manager.wait()
    step, restored = manager.restore_latest(_items(0.0))
    manager.close()
    assert step == 3
    np.testing.assert_array_equal(restored["model"]["w"], np.full(3, 3.0))
    assert sorted(p.name for p in (tmp_path / "runs/relative/checkpoints").iterdir()) == ["2", "3"]


def test_best_checkpoint_keeps_the_highest_map(tmp_path):
    manager = checkpointing.Checkpoints(tmp_path / "run")
    for step, value in ((1, 0.2), (2, 0.5), (3, 0.4)):
        manager.save_if_best(step, _items(step), {"mAP": value})
    manager.wait()
    assert manager.best_step() == 2
    manager.close()
    directory, step = checkpointing.resolve_model_checkpoint(tmp_path / "run")
    assert (directory.name, step) == ("best", 2)
    step, model = checkpointing.restore_model_variables(tmp_path / "run", {"w": jnp.zeros(3)})
    np.testing.assert_array_equal(model["w"], np.full(3, 2.0))


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        checkpointing.resolve_model_checkpoint(tmp_path / "nothing")


def test_restore_into_other_shapes_is_a_clear_error(tmp_path):
    manager = checkpointing.Checkpoints(tmp_path / "run", async_save=False)
    manager.save(1, _items(1.0))
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="does not fit"):
        manager.restore_latest({"model": {"w": jnp.zeros(5)}, "opt": {"step": jnp.int32(0)}})
    manager.close()


def test_check_compatible_names_the_differing_fields():
    saved = {"model": {"depth": 50, "feature_dim": 1024, "dtype": "float32"}, "num_classes": 625}
    same_but_bf16 = {
        "model": {"depth": 50, "feature_dim": 1024, "dtype": "bfloat16"},
        "num_classes": 625,
    }
    checkpointing.check_compatible(saved, same_but_bf16, "w")  # compute dtype may change
    other = {"model": {"depth": 18, "feature_dim": 1024, "dtype": "float32"}, "num_classes": 10}
    with pytest.raises(checkpointing.IncompatibleCheckpointError) as error:
        checkpointing.check_compatible(saved, other, "w")
    assert "model.depth: checkpoint 50, now 18" in str(error.value)
    assert "num_classes: checkpoint 625, now 10" in str(error.value)

"""Checkpoint bookkeeping: one manager keeps the latest N and the best mAP; naming a checkpoint
to evaluate; unfinished saves; clear errors; compatibility."""

import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from psta_jax.runtime import checkpointing


def _items(value: float) -> dict:
    return {"model": {"w": jnp.full((3,), value)}, "opt": {"step": jnp.int32(int(value))}}


def _steps_on_disk(workdir) -> list[int]:
    return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")))


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
    np.testing.assert_array_equal(restored["opt"]["step"], 3)
    assert _steps_on_disk(tmp_path / "runs/relative") == [2, 3]


def test_best_step_outlives_the_latest_n(tmp_path):
    """Latest 2 plus the best mAP: the best step stays when newer steps rotate it out."""
    workdir = tmp_path / "run"
    with checkpointing.Checkpoints(workdir, max_to_keep=2) as manager:
        assert manager.best_step() is None and manager.improves_best({"mAP": 0.0})
        for step, m_ap in ((1, 0.2), (2, 0.5), (3, None), (4, 0.4), (5, None), (6, None)):
            metrics = None if m_ap is None else {"mAP": m_ap, "rank1": m_ap + 0.1}
            assert manager.save(step, _items(step), metrics=metrics)
        manager.wait()
        assert manager.all_steps() == [2, 5, 6] == _steps_on_disk(workdir)
        assert manager.best_step() == 2
        assert manager.metrics(2) == {"mAP": 0.5, "rank1": 0.6}
        assert manager.metrics(6) is None
        assert not manager.improves_best({"mAP": 0.5}) and manager.improves_best({"mAP": 0.51})
        assert not manager.save(6, _items(6))  # a step is written once

    # The workdir names its best step; the checkpoints/ folder its latest; a step folder itself.
    directory, step = checkpointing.resolve_model_checkpoint(workdir)
    assert (directory.name, step) == ("checkpoints", 2)
    assert checkpointing.resolve_model_checkpoint(workdir / "checkpoints")[1] == 6
    assert checkpointing.resolve_model_checkpoint(workdir / "checkpoints" / "5")[1] == 5
    step, model = checkpointing.restore_model_variables(workdir, {"w": jnp.zeros(3)})
    assert step == 2
    np.testing.assert_array_equal(model["w"], np.full(3, 2.0))


def test_a_run_never_evaluated_names_its_latest_step(tmp_path):
    with checkpointing.Checkpoints(tmp_path / "run", max_to_keep=3, async_save=False) as manager:
        for step in (1, 2):
            manager.save(step, _items(step))
    assert checkpointing.resolve_model_checkpoint(tmp_path / "run")[1] == 2


def test_model_only_checkpoint_like_a_converted_release_is_readable(tmp_path):
    """interop.convert writes step 0 with `model` and `meta` only (no optimizer state)."""
    out = tmp_path / "converted"
    with checkpointing.Checkpoints(out, max_to_keep=1, async_save=False) as manager:
        manager.save(0, {"model": {"w": jnp.full((3,), 7.0)}}, {"converted_from": "x.pth"})
    step, model = checkpointing.restore_model_variables(out, {"w": jnp.zeros(3)})
    assert step == 0
    np.testing.assert_array_equal(model["w"], np.full(3, 7.0))


def test_unfinished_saves_are_removed_and_logged_committed_steps_kept(tmp_path, caplog):
    workdir = tmp_path / "run"
    with checkpointing.Checkpoints(workdir, async_save=False) as manager:
        manager.save(1, _items(1))
    leftover = workdir / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    (leftover / "model").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        manager = checkpointing.Checkpoints(workdir, async_save=False)
    assert "2.orbax-checkpoint-tmp-1234567" in caplog.text
    manager.save(3, _items(3))
    manager.close()
    assert not leftover.exists()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "3"]


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        checkpointing.resolve_model_checkpoint(tmp_path / "nothing")


def test_restore_into_other_shapes_is_a_clear_error(tmp_path):
    manager = checkpointing.Checkpoints(tmp_path / "run", async_save=False)
    manager.save(1, _items(1.0))
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="does not fit"):
        manager.restore_latest({"model": {"w": jnp.zeros(5)}, "opt": {"step": jnp.int32(0)}})
    manager.close()

"""The run's scalars: every one reaches the log, TensorBoard and metrics.jsonl, once per step."""

import json
import os

import numpy as np
import pytest

from psta_jax.training import metric_writers
from tests.helpers.files import tensorboard_scalars


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, metric_writers.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("asynchronous", [True, False])
def test_every_scalar_reaches_jsonl_and_tensorboard(tmp_path, asynchronous):
    writer, files = metric_writers.create_metric_writers(tmp_path, asynchronous=asynchronous)
    writer.write_scalars(2, {"train/loss": 1.5})
    files.write_scalars(2, {"steps_per_sec": 0.25})  # the files only: not logged again
    writer.write_scalars(2, {"eval/mAP": 0.5})
    writer.write_scalars(4, {"train/loss": np.float32(1.25)})
    writer.close()
    assert _rows(tmp_path) == [
        {"step": 2, "train/loss": 1.5},
        {"step": 2, "steps_per_sec": 0.25},
        {"step": 2, "eval/mAP": 0.5},
        {"step": 4, "train/loss": 1.25},
    ]
    expected = {
        (row["step"], name): value
        for row in _rows(tmp_path)
        for name, value in row.items()
        if name != "step"
    }
    assert tensorboard_scalars(tmp_path) == pytest.approx(expected)


def test_resume_drops_the_rows_it_will_redo(tmp_path):
    first, _ = metric_writers.create_metric_writers(tmp_path, resume_step=0)
    for step in range(1, 7):
        first.write_scalars(step, {"train/loss": float(step)})
    first.close()
    with open(tmp_path / metric_writers.METRICS_FILE, "a") as f:
        f.write('{"step": 7, "train/lo')  # a write cut off by a kill

    resumed, _ = metric_writers.create_metric_writers(tmp_path, resume_step=4)  # checkpoint 4
    for step in range(5, 9):
        resumed.write_scalars(step, {"train/loss": float(step)})
    resumed.close()
    steps = [row["step"] for row in _rows(tmp_path)]
    assert steps == list(range(1, 9))


def test_without_append_the_file_is_rewritten_whole(tmp_path):
    """Object stores (gs://) cannot append: each write rewrites the file."""
    path = tmp_path / metric_writers.METRICS_FILE
    path.write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "train/loss": 2.0}\n')
    writer = metric_writers.JsonlWriter(path, resume_step=1, append=False)
    writer.write_scalars(2, {"train/loss": 2.5})
    writer.write_scalars(3, {"train/loss": 3.0})
    assert [(r["step"], r["train/loss"]) for r in _rows(tmp_path)] == [(1, 1.0), (2, 2.5), (3, 3.0)]


def test_other_processes_only_log(tmp_path, monkeypatch):
    monkeypatch.setattr(metric_writers.jax, "process_index", lambda: 1)
    writer, files = metric_writers.create_metric_writers(tmp_path)
    writer.write_scalars(1, {"train/loss": 1.0})
    files.write_scalars(1, {"steps_per_sec": 1.0})
    writer.close()
    assert os.listdir(tmp_path) == []

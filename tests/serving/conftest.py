"""One tiny trained run on the synthetic dataset, shared by the serving tests."""

from __future__ import annotations

import json
import pathlib

import pytest

from psta_jax.training import loop
from tests.helpers.tiny import tiny_run_config


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> pathlib.Path:
    """A workdir trained for 2 steps (checkpoint at step 2, results.json from the evaluator
    on that checkpoint's state). Its config points at its synthetic data."""
    data_dir = tmp_path_factory.mktemp("serving_data")
    workdir = tmp_path_factory.mktemp("serving_runs") / "tiny"
    loop.train_and_evaluate(tiny_run_config(str(data_dir), num_train_steps=2), str(workdir))
    assert json.loads((workdir / "results.json").read_text())["num_queries"] > 0
    return workdir

"""End to end on a tiny synthetic dataset: train, checkpoint, evaluate, kill-and-resume."""

import collections
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from psta_jax.runtime import checkpointing, xla_cpu
from psta_jax.runtime import workdir as workdir_lib
from psta_jax.training import evaluator, loop, metric_writers, steps
from tests.conftest import REPO_ROOT
from tests.helpers.files import tensorboard_scalars
from tests.helpers.tiny import restore_saved_params, tiny_run_config

pytestmark = [pytest.mark.xdist_group("train_e2e"), pytest.mark.slow]


TOTAL_STEPS = 6
HEAP_TRIMS: list[int] = []  # one entry per xla_cpu.trim_heap() call of the finished run


def _main(workdir, data_dir, *flags, presets="", timeout=900, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "psta_jax.main",
        f"--config=tests/helpers/tiny_config.py:{data_dir}{',' + presets if presets else ''}",
        f"--workdir={workdir}",
        *flags,
    ]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _params(workdir, step):
    return restore_saved_params(workdir, step)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """An uninterrupted run of TOTAL_STEPS steps, checkpointing every 2 steps."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    config = tiny_run_config(
        data_dir,
        num_train_steps=TOTAL_STEPS,
        checkpoint_every_steps=2,
        eval_every_steps=4,
        profile_steps=(5, 1),
    )
    with pytest.MonkeyPatch.context() as patch:  # counts the heap trims, which still run
        trim_heap = xla_cpu.trim_heap
        patch.setattr(xla_cpu, "trim_heap", lambda: HEAP_TRIMS.append(1) or trim_heap())
        metrics = loop.train_and_evaluate(config, workdir)
    return workdir, metrics


def _metric_rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, metric_writers.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def _assert_each_scalar_once_per_step(rows) -> None:
    counts = collections.Counter((row["step"], k) for row in rows for k in row if k != "step")
    assert max(counts.values()) == 1, [key for key, n in counts.items() if n > 1]


def test_run_writes_checkpoints_logs_and_results(finished_run):
    workdir, metrics = finished_run
    results = json.loads(open(os.path.join(workdir, workdir_lib.RESULTS_FILE)).read())
    assert results == metrics
    assert results["protocol"] == "mars"
    assert 0.0 <= results["mAP"] <= 1.0 and np.isfinite(results["rank1"])
    assert results["num_valid_queries"] > 0
    saved = json.loads(open(os.path.join(workdir, workdir_lib.CONFIG_FILE)).read())
    assert saved["num_classes"] == 32 and saved["model"]["feature_dim"] == 32
    steps_saved = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps_saved == [2, 4, TOTAL_STEPS]  # max_to_keep 3, each step written once
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))


def test_evaluated_steps_carry_their_metrics_and_every_scalar_is_logged(finished_run):
    workdir, metrics = finished_run
    rows = _metric_rows(workdir)
    _assert_each_scalar_once_per_step(rows)
    train_rows = {r["step"]: r for r in rows if "train/loss" in r}
    eval_rows = {r["step"]: r for r in rows if "eval/mAP" in r}
    assert sorted(train_rows) == [2, 4, 6] and sorted(eval_rows) == [4, 6]
    speed_rows = {r["step"]: r for r in rows if "steps_per_sec" in r}  # clu's ReportProgress
    assert sorted(speed_rows) == [2, 4, 6]
    assert all(row["steps_per_sec"] > 0 for row in speed_rows.values())
    timing_rows = {r["step"]: r for r in rows if "timing/train_steps_per_sec" in r}  # loop_timing
    assert sorted(timing_rows) == [2, 4, 6]
    for row in timing_rows.values():
        assert row["timing/train_steps_per_sec"] > 0 and row["timing/host_cpu_percent"] > 0
        assert 0 <= row["timing/input_wait_fraction"] <= 1 and row["timing/input_wait_ms"] >= 0
    assert sorted(r["step"] for r in rows if "timing/eval_s" in r) == [4, 6]
    assert sorted(r["step"] for r in rows if "timing/checkpoint_s" in r) == [2, 4, 6]
    assert all(r["timing/eval_s"] > 0 for r in rows if "timing/eval_s" in r)
    assert eval_rows[TOTAL_STEPS]["eval/mAP"] == pytest.approx(metrics["mAP"])
    with checkpointing.Checkpoints(workdir) as saved:
        for step in (4, 6):  # evaluated and checkpointed: the metrics went into that one save
            assert saved.metrics(step)["mAP"] == pytest.approx(eval_rows[step]["eval/mAP"])
        assert saved.metrics(2) is None
        best = max((4, 6), key=lambda s: (eval_rows[s]["eval/mAP"], -s))
        assert saved.best_step() == best
    tensorboard = tensorboard_scalars(workdir)
    for row in rows:
        for name, value in row.items():
            if name != "step":
                assert tensorboard[(row["step"], name)] == pytest.approx(value, rel=1e-6)


def test_the_heap_goes_back_after_each_evaluation(finished_run):
    # Evaluations at steps 4 and 6 (the last); each hands its freed heap back before the
    # steps resume (xla_cpu.keep_freed_memory keeps it otherwise), as does compiling.
    evaluated = [r["step"] for r in _metric_rows(finished_run[0]) if "eval/mAP" in r]
    assert evaluated == [4, 6]
    assert len(HEAP_TRIMS) == 1 + len(evaluated)


def test_killed_run_resumes_to_the_same_parameters(finished_run, data_dir, tmp_path):
    reference_dir, _ = finished_run
    workdir = str(tmp_path / "killed")
    flags = [
        f"--config.num_train_steps={TOTAL_STEPS}",
        "--config.checkpoint_every_steps=2",
        "--config.eval_every_steps=4",
    ]
    proc = _main(workdir, data_dir, *flags, wait=False)
    first_checkpoint = os.path.join(workdir, "checkpoints", "2")
    deadline = time.monotonic() + 600
    while not os.path.isdir(first_checkpoint) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = _main(workdir, data_dir, *flags)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    rows = _metric_rows(workdir)
    _assert_each_scalar_once_per_step(rows)
    assert sorted(r["step"] for r in rows if "train/loss" in r) == [2, 4, 6]
    expected, actual = _params(reference_dir, TOTAL_STEPS), _params(workdir, TOTAL_STEPS)
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_evaluate_mode_reproduces_the_final_metrics(finished_run, data_dir):
    workdir, metrics = finished_run
    out = _main(
        workdir,
        data_dir,
        "--config.mode=evaluate",
        f"--config.checkpoint={os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads(open(os.path.join(workdir, "eval_results.json")).read())
    assert evaluated["checkpoint_step"] == TOTAL_STEPS
    np.testing.assert_allclose(evaluated["mAP"], metrics["mAP"], rtol=1e-6)
    np.testing.assert_allclose(evaluated["cmc"], metrics["cmc"], rtol=1e-6)


def test_evaluate_mode_on_a_workdir_reads_its_best_step(finished_run, data_dir, tmp_path):
    workdir, _ = finished_run
    with checkpointing.Checkpoints(workdir) as saved:
        best = saved.best_step()
        best_metrics = saved.metrics(best)
    config = tiny_run_config(data_dir, checkpoint=workdir)
    evaluated = evaluator.evaluate_checkpoint(config, str(tmp_path / "eval"))
    assert evaluated["checkpoint_step"] == best
    np.testing.assert_allclose(evaluated["mAP"], best_metrics["mAP"], rtol=1e-6)
    assert json.loads((tmp_path / "eval" / workdir_lib.EVAL_RESULTS_FILE).read_text()) == evaluated


def test_incompatible_checkpoint_is_a_clear_error(finished_run, data_dir, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished_run[0], workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    config = tiny_run_config(data_dir, num_train_steps=TOTAL_STEPS + 2)
    config.model.feature_dim = 64
    with pytest.raises(workdir_lib.IncompatibleCheckpointError, match="feature_dim"):
        loop.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(finished_run, data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    shutil.copytree(finished_run[0], workdir)
    good = _params(workdir, TOTAL_STEPS)
    config = tiny_run_config(
        data_dir, num_train_steps=TOTAL_STEPS + 4, checkpoint_every_steps=2, eval_every_steps=100
    )
    config.optimizer.learning_rate = 1e30
    config.optimizer.warmup_epochs = 0
    with pytest.raises(steps.NonFiniteLossError, match="non-finite"):
        loop.train_and_evaluate(config, workdir)
    saved = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")))
    assert saved[-1] == TOTAL_STEPS
    for x, y in zip(
        jax.tree.leaves(good), jax.tree.leaves(_params(workdir, TOTAL_STEPS)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_an_ablation_config_trains(data_dir, tmp_path):
    out = _main(
        str(tmp_path / "baseline"), data_dir, "--config.num_train_steps=2", presets="baseline"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(open(tmp_path / "baseline" / workdir_lib.RESULTS_FILE).read())
    assert np.isfinite(results["mAP"])
    saved = json.loads(open(tmp_path / "baseline" / workdir_lib.CONFIG_FILE).read())
    assert saved["model"]["aggregation"] == "none" and saved["ablation"] == "baseline"

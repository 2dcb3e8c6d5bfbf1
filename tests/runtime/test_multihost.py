"""Multi-host training proven on one machine: processes on loopback with CPU devices."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest

from psta_jax import launch
from psta_jax.runtime import workdir
from psta_jax.training import metric_writers
from tests.conftest import REPO_ROOT
from tests.helpers.tiny import restore_saved_params

pytestmark = [pytest.mark.xdist_group("multihost"), pytest.mark.slow]


STEPS = 4


def _flags(data_dir, workdir, steps=STEPS):
    return [
        f"--config=tests/helpers/tiny_config.py:{data_dir}",
        f"--workdir={workdir}",
        f"--config.num_train_steps={steps}",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=2",
        "--config.eval_every_steps=100",
    ]


def _launch_2x2(data_dir, workdir, steps=STEPS):
    """The launcher command for 2 processes x 2 CPU devices."""
    return [
        sys.executable,
        "-m",
        "psta_jax.launch",
        "--processes",
        "2",
        "--devices_per_process",
        "2",
        "--",
        *_flags(data_dir, workdir, steps),
    ]


def _run(cmd, timeout=900):
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, metric_writers.METRICS_FILE))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    single = str(tmp_path_factory.mktemp("one_process_4_devices"))
    multi = str(tmp_path_factory.mktemp("two_processes_2_devices"))
    _run([sys.executable, "-m", "psta_jax.main", "--cpu_devices=4", *_flags(data_dir, single)])
    out = _run(_launch_2x2(data_dir, multi))
    return data_dir, single, multi, out


def test_two_processes_match_one_process_step_by_step(runs):
    _, single, multi, out = runs
    assert "[p0]" in out.stdout and "[p1]" in out.stdout
    assert "JAX process 1/2, 2 local / 4 global cpu device(s)" in out.stdout
    one, two = _losses(single), _losses(multi)
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        np.testing.assert_allclose(two[step], one[step], rtol=1e-5)
    for x, y in zip(
        jax.tree.leaves(restore_saved_params(single, STEPS)),
        jax.tree.leaves(restore_saved_params(multi, STEPS)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)
    assert not os.path.exists(os.path.join(multi, "metrics.jsonl.1"))  # one writer
    # The final evaluation gathers both processes' features: every tracklet, the same metrics.
    one_eval, two_eval = (
        json.loads(open(os.path.join(w, workdir.RESULTS_FILE)).read()) for w in (single, multi)
    )
    for key in ("num_queries", "num_gallery", "num_valid_queries"):
        assert two_eval[key] == one_eval[key]
    np.testing.assert_allclose(two_eval["cmc"], one_eval["cmc"], atol=1e-6)
    assert two_eval["mAP"] == pytest.approx(one_eval["mAP"], abs=1e-5)


def test_two_process_run_resumes_from_its_checkpoint(runs):
    data_dir, _, multi, _ = runs
    out = _run(_launch_2x2(data_dir, multi, steps=STEPS + 2))
    assert f"resumed from {multi} at step {STEPS}" in out.stdout
    assert os.path.isdir(os.path.join(multi, "checkpoints", str(STEPS + 2)))
    assert sorted(_losses(multi))[-1] == STEPS + 2


def test_launcher_stops_everything_when_one_process_fails(capfd):
    start = time.monotonic()
    code = launch.launch([], processes=3, devices_per_process=1, module="tests.helpers.fake_worker")
    elapsed = time.monotonic() - start
    assert code == 3
    assert elapsed < 30
    assert "process 1 exited with code 3" in capfd.readouterr().err


def test_launcher_reports_a_killed_process(runs, tmp_path):
    data_dir, _, _, _ = runs
    workdir = str(tmp_path / "killed")
    proc = subprocess.Popen(
        _launch_2x2(data_dir, workdir, steps=1000),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "2")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
        time.sleep(0.5)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    workers[1].kill()
    killed_at = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60
    assert "killed by signal 9" in err
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

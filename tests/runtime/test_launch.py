"""The local launcher: bad flags and dead processes end with one message, no traceback."""

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _launch(*args):
    return subprocess.run(
        [sys.executable, "-m", "psta_jax.launch", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--processes=0"], 2, "flag --processes=0: 0 is not a positive integer"),
        (["--devices_per_process=two"], 2, "flag --devices_per_process=two"),
        (["--module=psta_jax.no_such_module"], 1, "--module psta_jax.no_such_module: no such"),
    ],
)
def test_bad_flags(args, code, expected):
    result = _launch(*args)
    assert result.returncode == code
    assert expected in result.stderr and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout


def test_a_dead_process_is_named_and_the_others_stopped():
    result = _launch("--processes=3", "--module=tests.helpers.fake_worker")
    assert result.returncode == 3
    assert "launch: process 1 exited with code 3; stopping the other 2 process(es)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
)
def test_a_stop_signal_reaches_every_process_and_none_outlives_the_launcher(tmp_path, signum, code):
    env = dict(os.environ, PSTA_FAKE_WORKER_SIGNALS=str(tmp_path))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "psta_jax.launch", "--processes=3",
         "--module=tests.helpers.fake_worker"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started = [launcher.stdout.readline() for _ in range(3)]  # each worker's first line
    assert all("worker" in line for line in started), started
    launcher.send_signal(signum)
    stdout, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == code
    name = signal.Signals(signum).name
    assert f"launch: received {name}; forwarding it to 3 process(es)" in stderr
    assert "Traceback" not in stdout + stderr
    # Each worker got the launcher's signal and had exited when the launcher did.
    assert {p.name: int(p.read_text()) for p in tmp_path.iterdir()} == {
        "0": signum,
        "1": signum,
        "2": signum,
    }

"""The local launcher: bad arguments and dead processes end with one message, no traceback."""

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
    ("args", "expected"),
    [
        (["--processes", "0"], "--processes and --devices-per-process must be >= 1, got 0"),
        (["--processes", "two"], "invalid int value: 'two'"),
        (["--module", "psta_jax.no_such_module"], "--module psta_jax.no_such_module: no such"),
    ],
)
def test_bad_arguments(args, expected):
    result = _launch(*args)
    assert result.returncode == 2
    assert expected in result.stderr and "usage:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_dead_process_is_named_and_the_others_stopped():
    result = _launch("--processes", "3", "--module", "tests.helpers.fake_worker")
    assert result.returncode == 3
    assert "launch: process 1 exited with code 3; stopping the other 2 process(es)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

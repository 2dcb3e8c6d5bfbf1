"""The local launcher: bad flags and dead processes end with one message, no traceback."""

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

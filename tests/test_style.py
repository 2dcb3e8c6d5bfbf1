"""ruff's lint rules and formatting hold for the whole repository (as `make lint` checks)."""

import subprocess
import sys

from tests.conftest import REPO_ROOT

PATHS = ("psta_jax", "tests", "benchmarks", "configs")


def test_ruff_check_and_format_are_clean():
    for command in (["check", "--no-fix"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *PATHS],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout[-4000:]}"

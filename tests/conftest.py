"""Shared fixtures: the location of ../shared reference material."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _shared_dir() -> pathlib.Path:
    env = os.environ.get("PSTA_SHARED_DIR")
    if env:
        return pathlib.Path(env)
    return REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    path = _shared_dir()
    if not (path / "reference").is_dir():
        pytest.fail(
            f"reference material not found at {path}: expected the project's shared/ folder "
            "beside the repository root (or set PSTA_SHARED_DIR)"
        )
    return path

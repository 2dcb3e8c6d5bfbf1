"""Fixtures of the dataset tests: a synthetic MARS-layout raw folder per test module."""

import shutil

import pytest

from psta_jax.datasets import synthetic


@pytest.fixture(scope="module")
def pristine(request, tmp_path_factory) -> str:
    """A synthetic MARS folder generated once from the test module's `CONFIG`."""
    out = str(tmp_path_factory.mktemp("pristine") / "synthetic_mars")
    synthetic.generate(out, request.module.CONFIG)
    return out


@pytest.fixture
def raw(pristine, tmp_path) -> str:
    """A private copy of `pristine` (tests damage frames and files)."""
    out = str(tmp_path / "synthetic_mars")
    shutil.copytree(pristine, out)
    return out

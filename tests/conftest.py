"""Test-session settings and shared fixtures (the location of ../shared reference material)."""

import os
import pathlib
import tempfile

import pytest

# Tests run tiny models whose cost is XLA's compile time, not run time: compile with the
# cheapest LLVM settings, and cache compiled programs across the processes of a session.
# Set before JAX starts; subprocesses inherit them.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "psta_jax_test_jit_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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

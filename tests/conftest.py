"""Test-session settings (XLA compile flags, compilation cache). Reference data from the
authors' release lives in tests/reference/ (see tests/reference_data.py)."""

import os
import pathlib
import tempfile

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


def pytest_collection_modifyitems(config, items):
    """Leaves out `test_session`, a context manager of tf.test.TestCase that TFDS's builder
    tests inherit and TensorFlow marks as skipped ("Not a test"): it is no test of ours."""
    inherited = [item for item in items if item.name == "test_session"]
    if inherited:
        config.hook.pytest_deselected(items=inherited)
        items[:] = [item for item in items if item.name != "test_session"]

"""psta_jax.runtime.xla_cpu: memory released after compiling leaves compiled programs usable; the
entry points' setup keeps freed pages for the next call."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psta_jax.runtime import xla_cpu


def test_release_compilation_memory_keeps_compiled_programs_working():
    def step(x):
        return jnp.tanh(x @ x.T).sum(0)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)
    jitted = jax.jit(step)
    compiled = jitted.lower(x).compile()
    expected = np.asarray(compiled(x))
    np.testing.assert_array_equal(np.asarray(jitted(x)), expected)
    assert isinstance(xla_cpu.release_compilation_memory(), bool)
    np.testing.assert_array_equal(np.asarray(compiled(x)), expected)  # AOT program still runs
    np.testing.assert_array_equal(np.asarray(jitted(x)), expected)  # compiles again


# Calls a program with a 64 MiB temporary (over glibc's 32 MiB memory-map limit) in a fresh
# process set up as the entry points are, and prints the median page faults of 15 warm calls.
# The median, because the heap can still grow now and then (XLA's threads interleave their
# allocations), and a call that lands on new heap maps its temporary once.
_FAULTS_PER_CALL = """
import json, resource
from psta_jax.runtime import xla_cpu
xla_cpu.configure_for_cpu_if_needed()
import jax, jax.numpy as jnp

@jax.jit
def program(a, b):
    outer = jnp.sin(a[:, None] * b[None, :])  # (4096, 4096) f32; the dot fuses no producer
    return outer @ b

a, b = jnp.linspace(0.0, 1.0, 4096), jnp.linspace(1.0, 2.0, 4096)
for _ in range(30):  # the heap settles in the first ~20 calls
    program(a, b).block_until_ready()
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    program(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(sorted(faults)[len(faults) // 2]))
"""


def _faults_per_call(glibc_tunables: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAX_PLATFORMS"] = "cpu"
    if glibc_tunables is not None:
        env["GLIBC_TUNABLES"] = glibc_tunables
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_CALL],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    sys.platform != "linux" or xla_cpu._glibc() is None,
    reason="glibc's malloc settings (mallopt) exist on glibc only",
)
def test_entry_point_setup_reuses_freed_pages_and_glibc_tunables_opt_out():
    # The user's own glibc.malloc settings win: nothing changed, every call maps its
    # temporary afresh (16k faults of 4 KiB for 64 MiB).
    default_faults = _faults_per_call("glibc.malloc.trim_threshold=131072")
    assert default_faults > 8000
    # configure_for_cpu_if_needed() keeps the freed pages: a typical warm call reuses them.
    assert _faults_per_call(None) < 0.05 * default_faults


def test_user_glibc_malloc_tunables_are_left_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert xla_cpu.keep_freed_memory() is False


@pytest.mark.parametrize(
    "cli",
    [
        "main",
        "embed",
        "search",
        "export",
        "launch",
        "inspection.__main__",
        "interop.convert",
        "datasets.synthetic",
    ],
)
def test_importing_a_command_line_starts_neither_tensorflow_nor_jax(cli):
    # glibc's heap settings (keep_freed_memory) hold only for threads started after them, so
    # a command line's module must not start TensorFlow or JAX: its main() sets up first.
    probe = f"import sys, psta_jax.{cli}; print(sorted({{'tensorflow', 'jax'}} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "[]", f"python -m psta_jax.{cli} imports {out.stdout.strip()}"

"""psta_jax.xla_cpu: memory released after compiling leaves compiled programs usable."""

import jax
import jax.numpy as jnp
import numpy as np

from psta_jax import xla_cpu


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

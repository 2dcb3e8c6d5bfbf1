"""Helpers for tests and benchmarks: random weights without compiling initialisers.

Initialising a model eagerly compiles one XLA program per distinct parameter shape (seconds
each on a CPU); building the abstract model with `nnx.eval_shape` and filling it from NumPy
compiles nothing until the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx


def fill_random(module: nnx.Module, seed: int = 0) -> nnx.Module:
    """Gives every variable of an (abstract) module random values, in place.

    BatchNorm variances uniform [0.5, 1.5], scales uniform [0.5, 1.0], everything else
    normal with std 0.7 / sqrt(fan_in).
    """
    rng = np.random.default_rng(seed)
    flat = dict(nnx.to_flat_state(nnx.state(module)))
    for path, variable in flat.items():
        shape, dtype = variable.shape, variable.dtype
        if path[-1] == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif path[-1] == "scale":
            value = rng.uniform(0.5, 1.0, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.normal(0.0, 0.7 / np.sqrt(fan_in), shape)
        flat[path] = variable.replace(jnp.asarray(value, dtype))
    nnx.update(module, nnx.from_flat_state(flat))
    return module


def random_model(make: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """`make()`'s module (e.g. `lambda: PSTA(625, rngs=nnx.Rngs(0))`) with random weights."""
    return fill_random(nnx.eval_shape(make), seed)

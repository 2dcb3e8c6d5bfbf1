"""Tiny PSTA models for fast CPU tests.

Initialising a model eagerly compiles one XLA program per distinct parameter shape
(seconds each on a busy CPU), so tests build the abstract model with `nnx.eval_shape`
and fill it from NumPy instead: no compilation until the forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psta_jax.models import PSTA

TINY = dict(depth=10, width=4, feature_dim=16, image_size=(32, 16), seq_len=4, num_stages=2)
NUM_CLASSES = 5


def fill_random(module: nnx.Module, seed: int = 0) -> nnx.Module:
    """Gives every variable of an (abstract) module random values, in place."""
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


def tiny_model(seed: int = 0, num_classes: int = NUM_CLASSES, **overrides) -> PSTA:
    kwargs = dict(TINY, **overrides)
    model = nnx.eval_shape(lambda: PSTA(num_classes, **kwargs, rngs=nnx.Rngs(0)))
    return fill_random(model, seed)


def tiny_clips(batch: int = 2, seq_len: int = 4, seed: int = 0,
               image_size: tuple[int, int] = (32, 16)) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, seq_len, *image_size, 3)), jnp.float32)


def forward(model: nnx.Module, clips: jax.Array, *, train: bool):
    """Jitted `model(clips)` in train or eval mode; the model's state is left untouched."""
    model.train() if train else model.eval()
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, clips)


def forward_both(model: nnx.Module, clips: jax.Array):
    """(train-mode PSTAOutput, eval-mode embedding) from one compiled program."""
    model.train()
    train_graph, state = nnx.split(model)
    model.eval()
    eval_graph, _ = nnx.split(model)

    @jax.jit
    def run(state, clips):
        return nnx.merge(train_graph, state)(clips), nnx.merge(eval_graph, state)(clips)

    return run(state, clips)

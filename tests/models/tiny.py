"""Tiny PSTA models for fast CPU tests (random weights from NumPy: see psta_jax.testing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psta_jax.models import PSTA
from psta_jax.testing import fill_random, random_model

TINY = dict(depth=10, width=4, feature_dim=16, image_size=(32, 16), seq_len=4, num_stages=2)
NUM_CLASSES = 5


def tiny_model(seed: int = 0, num_classes: int = NUM_CLASSES, **overrides) -> PSTA:
    kwargs = dict(TINY, **overrides)
    return random_model(lambda: PSTA(num_classes, **kwargs, rngs=nnx.Rngs(0)), seed)


def tiny_clips(
    batch: int = 2, seq_len: int = 4, seed: int = 0, image_size: tuple[int, int] = (32, 16)
) -> jax.Array:
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


__all__ = ["NUM_CLASSES", "TINY", "fill_random", "tiny_clips", "tiny_model"]

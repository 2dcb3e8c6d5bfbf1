"""Run with 4 fake CPU devices: one train step on 1 device vs the same step on 4 devices.

Prints a JSON dict of the largest differences (the test asserts on them).
"""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from psta_jax import config_base  # noqa: E402
from psta_jax.models import build_model  # noqa: E402
from psta_jax.runtime import sharding  # noqa: E402
from psta_jax.training import losses, steps  # noqa: E402
from tests.helpers.tiny import tiny_batch, tiny_model_config  # noqa: E402


def run(mesh, batch, model_config, num_classes):
    """Two steps of plain SGD, so parameter updates are the gradients themselves (Adam's
    normalisation would turn float noise in near-zero gradients into full-size steps)."""
    tx = optax.sgd(1e-4)
    model = build_model(model_config, num_classes, nnx.Rngs(0))
    graphs, state = steps.create_train_state(model, tx, mesh)
    params0 = steps.tree_to_host(state.params)
    loss_fn = losses.bound_psta_loss(num_classes, **config_base.base_config().loss.to_dict())
    step = steps.compile_train_step(graphs, tx, loss_fn, mesh)
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    state = steps.tree_to_host(state)
    updates = jax.tree.map(lambda new, old: new - old, state.params, params0)
    return state, updates, steps.tree_to_host(metrics)


def max_relative(a, b):
    """|a - b| / |b| over the whole tree (global L2 norms)."""
    diff = sum(
        float(np.sum((x - y) ** 2))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    norm = sum(float(np.sum(y**2)) for y in jax.tree.leaves(b))
    return (diff / max(norm, 1e-30)) ** 0.5


def main():
    assert jax.device_count() == 4, jax.devices()
    model_config = tiny_model_config()
    batch = tiny_batch(num_ids=4, per_id=2, model=model_config)
    one, u1, m1 = run(sharding.make_mesh(jax.devices()[:1]), batch, model_config, num_classes=4)
    four, u4, m4 = run(sharding.make_mesh(jax.devices()), batch, model_config, num_classes=4)
    report = {
        "loss_1": float(m1["loss"]),
        "loss_4": float(m4["loss"]),
        "grad_norm_1": float(m1["grad_norm"]),
        "grad_norm_4": float(m4["grad_norm"]),
        "updates": max_relative(u4, u1),
        "params": max_relative(four.params, one.params),
        "model_state": max_relative(four.model_state, one.model_state),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()

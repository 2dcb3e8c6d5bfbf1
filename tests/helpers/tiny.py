"""The one tiny PSTA of the test suite, its inputs, and the tiny training run built on it.

Everything full-size lives in the parity tests (tests/models/test_parity.py,
test_train_parity.py); every other test uses these (seconds to compile on a CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from psta_jax import config_base
from psta_jax.models import PSTA
from psta_jax.models.random_weights import fill_random, random_model

# PSTA's keyword arguments for the tiny model (the full pyramid design, two STAM stages).
TINY = dict(depth=10, width=4, feature_dim=32, image_size=(32, 16), seq_len=4, num_stages=2)
NUM_CLASSES = 5


def tiny_model(seed: int = 0, num_classes: int = NUM_CLASSES, **overrides) -> PSTA:
    """The tiny PSTA with random weights (no initialiser compiled)."""
    kwargs = dict(TINY, **overrides)
    return random_model(lambda: PSTA(num_classes, **kwargs, rngs=nnx.Rngs(0)), seed)


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    """`config.model` of the tiny PSTA."""
    model = config_base.model_config()
    model.update(TINY)
    model.update(overrides)
    return model


def tiny_clips(
    batch: int = 2, seq_len: int = 4, seed: int = 0, image_size: tuple[int, int] = (32, 16)
) -> jax.Array:
    """Normalised-looking float32 clips (B, T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, seq_len, *image_size, 3)), jnp.float32)


def tiny_batch(num_ids: int = 2, per_id: int = 2, *, seed: int = 0, model=None) -> dict:
    """{'clips' (B, T, H, W, 3) float32, 'labels' (B,) int32}, K clips per identity."""
    model = model or tiny_model_config()
    rng = np.random.default_rng(seed)
    batch = num_ids * per_id
    clips = rng.standard_normal((batch, model.seq_len, *model.image_size, 3)).astype(np.float32)
    labels = np.repeat(np.arange(num_ids), per_id).astype(np.int32)
    return {"clips": clips, "labels": labels}


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


def tiny_run_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """The demo recipe on the synthetic dataset, shrunk for tests (seconds per run)."""
    config = config_base.dataset_config(
        "mars", None, raw_dir=f"{data_dir}/synthetic_mars", synthetic=True
    )
    config.data_dir = data_dir
    config.model = tiny_model_config()
    config.batch.update(identities=4, instances=2)
    config.input.eval_batch_size = 64
    config.optimizer.update(warmup_epochs=1, milestones=(3,))
    config.num_epochs = 1
    config.num_train_steps = 4
    config.eval_every_epochs = 100
    config.checkpoint_every_epochs = 100
    config.log_every_steps = 2
    config.update(overrides)
    return config


def restore_saved_params(workdir: str, step: int) -> dict:
    """The `params` saved at `step` of a workdir, on this process's first device, whatever
    device topology wrote them."""
    import os

    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "model")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
    )
    return checkpointer.restore(path, target)["params"]


__all__ = [
    "NUM_CLASSES",
    "TINY",
    "fill_random",
    "forward",
    "forward_both",
    "restore_saved_params",
    "tiny_batch",
    "tiny_clips",
    "tiny_model",
    "tiny_model_config",
    "tiny_run_config",
]

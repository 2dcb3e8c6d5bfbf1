"""Tiny configs and batches shared by the training tests."""

from __future__ import annotations

import ml_collections
import numpy as np

from psta_jax import config_base


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    model = config_base.model_config()
    model.update(depth=18, width=4, feature_dim=32, image_size=(32, 16), seq_len=4, num_stages=2)
    model.update(overrides)
    return model


def tiny_batch(num_ids: int = 2, per_id: int = 2, *, seed: int = 0, model=None) -> dict:
    model = model or tiny_model_config()
    rng = np.random.default_rng(seed)
    batch = num_ids * per_id
    clips = rng.standard_normal((batch, model.seq_len, *model.image_size, 3)).astype(np.float32)
    labels = np.repeat(np.arange(num_ids), per_id).astype(np.int32)
    return {"clips": clips, "labels": labels}


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

    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "model")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
    )
    return checkpointer.restore(path, target)["params"]

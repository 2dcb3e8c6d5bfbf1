"""The device mesh and the two shardings every jitted program uses.

One 1-D mesh over every device of every process (axis `data`): model and optimizer state are
replicated over it, batches are split along their leading axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from psta_jax.runtime.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process (default `jax.devices()`), axis `data`."""
    devices = devices if devices is not None else jax.devices()
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Every device holds the whole array (state, metrics)."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The leading (batch) axis split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of the batch (leading axis = batch)."""
    sharding = data_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def round_up_to_devices(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's devices (evaluation batches)."""
    if batch_size < 1:
        raise ConfigError(f"an evaluation batch needs at least one clip, got {batch_size}")
    return -(-batch_size // mesh.size) * mesh.size


def check_divides(batch_size: int, mesh: jax.sharding.Mesh, what: str) -> None:
    """A `ConfigError` unless `batch_size` splits evenly over the mesh's devices."""
    if batch_size % mesh.size:
        raise ConfigError(
            f"the global batch of {batch_size} clips ({what}) must divide evenly over "
            f"{mesh.size} devices"
        )

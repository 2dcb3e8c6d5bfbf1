"""A trained checkpoint as an eval-mode embedding model, for embed and export.

The checkpoint is found and restored by `psta_jax.checkpointing` (a workdir: its best step,
else its latest; a `checkpoints/` folder; one step folder; or a converted release
checkpoint); its model is built from the `config.json` saved beside it. The checkpoint's
identity is a hash of that config and the step, so files embedded by different models are
never compared by mistake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from psta_jax import checkpointing, clip_preparation, sharding, steps
from psta_jax.evaluation import model_eval
from psta_jax.serving.embedding_file import CheckpointIdentity
from psta_jax.serving.errors import ServingInputError

_NORMALISE_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A restored checkpoint: its run config, eval/train graphs and model variables
    ({'params', 'model_state'}, replicated over `mesh`)."""

    config: ml_collections.ConfigDict
    num_classes: int
    graphs: steps.ModelGraphs
    variables: dict
    identity: CheckpointIdentity
    mesh: jax.sharding.Mesh

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(T, H, W, 3) of one input clip."""
        height, width = (int(s) for s in self.config.model.image_size)
        return int(self.config.model.seq_len), height, width, 3

    @property
    def feature_dim(self) -> int:
        return int(self.config.model.feature_dim)


def config_hash(saved: dict) -> str:
    """16 hex digits of the SHA-256 of the saved config (canonical JSON)."""
    return hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:16]


def load(checkpoint: str | os.PathLike, mesh: jax.sharding.Mesh | None = None) -> TrainedModel:
    """Restores the model of `checkpoint` with the config saved beside it."""
    try:
        directory, step = checkpointing.resolve_model_checkpoint(checkpoint)
    except FileNotFoundError as error:
        raise ServingInputError(str(error)) from error
    saved = checkpointing.read_config(directory)
    if saved is None:
        raise ServingInputError(
            f"{checkpoint}: no {checkpointing.CONFIG_FILE} beside the checkpoint (looked in "
            f"{directory} and two levels up); expected a training workdir or a converted "
            "release checkpoint")
    num_classes = saved.get("num_classes")
    if not isinstance(num_classes, int) or "model" not in saved:
        raise ServingInputError(f"{directory}: {checkpointing.CONFIG_FILE} lacks 'model' or an "
                                "integer 'num_classes'")
    config = ml_collections.ConfigDict({k: v for k, v in saved.items() if k != "num_classes"})
    mesh = mesh or sharding.make_mesh()
    try:
        graphs, step, variables = model_eval.restore_model(
            checkpoint, config.model, num_classes, mesh)
    except checkpointing.IncompatibleCheckpointError as error:
        raise ServingInputError(
            f"{checkpoint}: the checkpoint does not match the model its "
            f"{checkpointing.CONFIG_FILE} describes (a checkpoint from another model config?): "
            f"{error}") from error
    identity = CheckpointIdentity(config_hash=config_hash(saved), step=int(step),
                                  path=os.path.abspath(os.fspath(checkpoint)))
    return TrainedModel(config=config, num_classes=num_classes, graphs=graphs,
                        variables=variables, identity=identity, mesh=mesh)


def embedding_function(model: TrainedModel, *, l2_normalise: bool = False
                       ) -> Callable[[jax.Array], jax.Array]:
    """uint8 clips (B, T, H, W, 3) -> (B, feature_dim) float32 eval-mode embeddings, with the
    eval pipeline's normalisation inside and the model's weights closed over (constants).

    `l2_normalise` divides each clip's embedding by its L2 norm.
    """
    prepare = clip_preparation.prepare_eval_clips(model.config)
    params = jax.device_get(model.variables["params"])
    model_state = jax.device_get(model.variables["model_state"])
    clip_shape = model.clip_shape

    def embed(clips: jax.Array) -> jax.Array:
        chex.assert_rank(clips, 5)
        chex.assert_type(clips, jnp.uint8)
        if tuple(clips.shape[1:]) != clip_shape:
            raise ValueError(f"expected clips (B, {', '.join(map(str, clip_shape))}), got "
                             f"{clips.shape}")
        network = nnx.merge(model.graphs.eval, params, model_state)
        out = network(prepare(clips, None)).astype(jnp.float32)
        if l2_normalise:
            norm = jnp.linalg.norm(out, axis=1, keepdims=True)
            out = out / jnp.maximum(norm, _NORMALISE_EPS)
        return out

    return embed

"""A trained checkpoint as an eval-mode model: the one way embed, export, inspection and
`--config.mode=evaluate` restore a model.

A checkpoint is named as a workdir (its best step, else its latest), a `checkpoints/` folder
(its latest step), one step folder, or a converted release checkpoint
(`runtime.checkpointing.resolve_model_checkpoint`). The model is built abstractly (no
initialisers run) from the config.json saved beside it, and filled from the checkpoint's
`model` item only. Its identity (a hash of that config.json and the step) keeps results of
different models apart.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from psta_jax import config_base, datasets, evaluation
from psta_jax.input.preprocess import EvalPipelineConfig, clip_preparation
from psta_jax.models import build_model
from psta_jax.runtime import checkpointing, sharding, workdir
from psta_jax.training import steps


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A restored checkpoint: the run that wrote it (its config.json), its eval/train graphs,
    its model variables ({'params', 'model_state'}, replicated over `mesh`), its step and
    identity, and what the run's config says about using it (read once, at load)."""

    run: workdir.RunConfig
    graphs: steps.ModelGraphs
    variables: dict
    step: int
    identity: workdir.CheckpointIdentity
    mesh: jax.sharding.Mesh
    eval_input: EvalPipelineConfig  # the test sampler, clip length and size
    eval_settings: evaluation.EvalSettings  # protocol, distance, re-ranking
    eval_batch_size: int  # clips per evaluation batch over all devices
    dataset: datasets.DatasetSpec  # what the run trained and evaluated on
    model_fields: dict[str, Any]  # PSTA's keyword arguments
    ablation: str  # the run's ablation preset ('full' when none was named)

    @property
    def num_classes(self) -> int:
        return self.run.num_classes

    @property
    def params(self) -> nnx.State:
        return self.variables["params"]

    @property
    def model_state(self) -> nnx.State:
        return self.variables["model_state"]

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(T, H, W, 3) of one input clip."""
        return self.eval_input.seq_len, *self.eval_input.image_size, 3

    @property
    def feature_dim(self) -> int:
        return int(self.model_fields["feature_dim"])

    def model(self) -> nnx.Module:
        """The eval-mode PSTA (a fresh module sharing these arrays)."""
        return nnx.merge(self.graphs.eval, self.params, self.model_state)

    @functools.cached_property
    def embed_fn(self) -> Callable:
        """Jitted (params, model_state, uint8 clips (B, T, H, W, 3)) -> (B, feature_dim), the
        embedding evaluation computes (compiled once per batch shape)."""
        return steps.compile_embed(self.graphs, self.mesh, clip_preparation(self.eval_input))


def restore_model(
    checkpoint: str | os.PathLike,
    model_config: Mapping[str, Any],
    num_classes: int,
    mesh: jax.sharding.Mesh,
) -> tuple[steps.ModelGraphs, int, dict]:
    """(graphs, step, {'params', 'model_state'} replicated over `mesh`) of the model that
    `model_config` describes, filled from the checkpoint `checkpoint` names."""
    abstract = nnx.eval_shape(lambda: build_model(model_config, num_classes, nnx.Rngs(0)))
    graphs, params, model_state = steps.split_model(abstract)
    step, variables = checkpointing.restore_model_variables(
        checkpoint, {"params": params, "model_state": model_state}
    )
    return graphs, step, jax.device_put(variables, sharding.replicated(mesh))


def load_trained_model(
    checkpoint: str | os.PathLike, mesh: jax.sharding.Mesh | None = None
) -> TrainedModel:
    """Restores the model of `checkpoint` with the config saved beside it."""
    directory, _ = checkpointing.resolve_model_checkpoint(checkpoint)
    run = workdir.load_run_config(directory)
    mesh = mesh or sharding.make_mesh()
    try:
        graphs, step, variables = restore_model(
            checkpoint, run.config.model.to_dict(), run.num_classes, mesh
        )
    except workdir.IncompatibleCheckpointError as error:
        raise workdir.IncompatibleCheckpointError(
            f"{checkpoint}: the checkpoint does not match the model its {run.path} describes "
            f"(a checkpoint from another model config?): {error}"
        ) from error
    identity = workdir.CheckpointIdentity(
        config_hash=workdir.config_hash(run.payload),
        step=int(step),
        path=os.path.abspath(os.fspath(checkpoint)),
    )
    config = run.config
    return TrainedModel(
        run=run,
        graphs=graphs,
        variables=variables,
        step=int(step),
        identity=identity,
        mesh=mesh,
        eval_input=config_base.eval_input(config),
        eval_settings=config_base.eval_settings(config),
        eval_batch_size=int(config.input.eval_batch_size),
        dataset=config_base.dataset_spec(config),
        model_fields=config.model.to_dict(),
        ablation=str(config.get("ablation", "full")),
    )

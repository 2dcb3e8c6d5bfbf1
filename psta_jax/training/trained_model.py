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
import os
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from psta_jax import config_base, datasets, evaluation
from psta_jax.input.preprocess import EvalPipelineConfig
from psta_jax.models import build_model
from psta_jax.runtime import checkpointing, sharding, workdir
from psta_jax.training import steps


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A restored checkpoint: the run that wrote it, its eval/train graphs, its model
    variables ({'params', 'model_state'}, replicated over `mesh`), its step and identity."""

    run: workdir.RunConfig
    graphs: steps.ModelGraphs
    variables: dict
    step: int
    identity: workdir.CheckpointIdentity
    mesh: jax.sharding.Mesh

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
    def eval_input(self) -> EvalPipelineConfig:
        """The evaluation input of the run (its test sampler, clip length and size)."""
        return config_base.eval_input(self.run.config)

    @property
    def eval_settings(self) -> evaluation.EvalSettings:
        """How the run is evaluated (protocol, distance, re-ranking)."""
        return config_base.eval_settings(self.run.config)

    @property
    def eval_batch_size(self) -> int:
        """Clips per evaluation batch over all devices, as the run evaluated."""
        return int(self.run.config.input.eval_batch_size)

    @property
    def dataset(self) -> datasets.DatasetSpec:
        """The dataset the run trained and evaluated on."""
        return config_base.dataset_spec(self.run.config)

    @property
    def model_fields(self) -> dict[str, Any]:
        """The run's model fields (PSTA's keyword arguments)."""
        return self.run.config.model.to_dict()

    @property
    def ablation(self) -> str:
        """The run's ablation preset ('full' when none was named)."""
        return str(self.run.config.get("ablation", "full"))

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(T, H, W, 3) of one input clip."""
        height, width = (int(s) for s in self.run.config.model.image_size)
        return int(self.run.config.model.seq_len), height, width, 3

    @property
    def feature_dim(self) -> int:
        return int(self.run.config.model.feature_dim)

    def model(self) -> nnx.Module:
        """The eval-mode PSTA (a fresh module sharing these arrays)."""
        return nnx.merge(self.graphs.eval, self.params, self.model_state)


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
    return TrainedModel(
        run=run, graphs=graphs, variables=variables, step=int(step), identity=identity, mesh=mesh
    )

"""The train state and the two jitted SPMD steps (train, embed): one code path for 1 device,
many devices and many hosts.

The train state is replicated over the 1-D device mesh of `psta_jax.runtime.sharding` and each batch
is sharded along it. The step is written as single-device code, so XLA computes the batch-hard
triplet mining and every BatchNorm's statistics over the whole global batch, exactly as one
device holding the whole P x K batch would (docs/design.md, "One SPMD program").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from psta_jax.input.preprocess import PrepareClips
from psta_jax.models.psta import PSTA
from psta_jax.runtime.errors import UserError
from psta_jax.runtime.sharding import data_sharded, replicated

# (logits per head, BN features per head, labels (B,)) -> (total, {'ce', 'triplet'}): the
# training loss with its options bound (`losses.psta_loss`).
LossFn = Callable[
    [tuple[jax.Array, ...], tuple[jax.Array, ...], jax.Array],
    tuple[jax.Array, dict[str, jax.Array]],
]


class NonFiniteLossError(UserError, RuntimeError):
    """The loss, a new parameter or a new BatchNorm statistic became NaN or infinite; the state
    and checkpoints keep the last good step."""


# metrics[FIRST_NON_FINITE]: the index, in `guarded_names`, of the first tensor of a step that
# was not finite (meaningful only where metrics['finite'] == 0). An index, not a scalar to log.
FIRST_NON_FINITE = "first_non_finite"


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. `params` are the trained parameters; `model_state`
    holds the BatchNorm statistics and the frozen BN-neck biases (never updated, never decayed)."""

    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState

    def model_variables(self) -> dict:
        return {"params": self.params, "model_state": self.model_state}


@dataclasses.dataclass(frozen=True)
class ModelGraphs:
    """The static halves of the model in its two modes (BatchNorm flags live in the graph)."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


def split_model(model: PSTA) -> tuple[ModelGraphs, nnx.State, nnx.State]:
    """(graphs, trainable params, everything else) of an NNX model."""
    model.eval()
    eval_graph, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    train_graph, params, model_state = nnx.split(model, nnx.Param, ...)
    return ModelGraphs(train=train_graph, eval=eval_graph), params, model_state


def count_trainable(params: nnx.State) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- steps


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    graphs: ModelGraphs,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    prepare_clips: PrepareClips | None = None,
    log_grad_norm: bool = True,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step on a global batch {'clips' (B,T,H,W,3), 'labels' (B,)}.

    With `prepare_clips`, batches carry uint8 clips (and 'flip' flags and 'erase'
    rectangles) that it turns into flipped, normalised, erased clips on the device
    (preprocess.finish_clips).

    metrics['finite'] is 0 when the loss, a new parameter or a new model_state leaf (BatchNorm
    means and variances) is not finite, and metrics[FIRST_NON_FINITE] indexes the first such
    tensor in `guarded_names` (one reduction per tensor). The loop reads them before any
    evaluation or save and raises NonFiniteLossError naming the step and the tensor, so no NaN
    or inf reaches a checkpoint. When the loss itself is not finite the returned state equals
    the input state.
    With `log_grad_norm`, the metrics hold the gradients' global L2 norm ('grad_norm'): one
    reduction per parameter, ~111 small kernels per step on a GPU.
    """
    # copy: the forward pass updates BatchNorm statistics in place; `state` must keep the old.
    model = nnx.merge(graphs.train, state.params, state.model_state, copy=True)

    clips = _prepared(batch, prepare_clips)

    def objective(model: PSTA):
        out = model(clips)
        return loss_fn(out.logits, out.features, batch["labels"])

    (loss, parts), grads = nnx.value_and_grad(
        objective, argnums=nnx.DiffState(0, nnx.Param), has_aux=True
    )(model)
    new_model_state = nnx.state(model, nnx.Not(nnx.Param))
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)

    # The state falls back on the loss alone; the flags of every new tensor are outputs only
    # (selecting on them too made XLA's CPU compile of the demo's step 5x slower), read on the
    # host before any checkpoint is written.
    loss_finite = jnp.isfinite(loss)
    flags = _finite_flags(loss, new_params, new_model_state)
    finite = jnp.all(flags)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(loss_finite, new, old))
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        model_state=keep(new_model_state, state.model_state),
        opt_state=keep(new_opt_state, state.opt_state),
    )
    metrics = {
        "loss": loss,
        "ce": parts["ce"],
        "triplet": parts["triplet"],
        "finite": finite.astype(jnp.float32),
        FIRST_NON_FINITE: jnp.argmin(flags).astype(jnp.int32),
    }
    if log_grad_norm:
        metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, metrics


def _guarded_leaves(loss: Any, params: Any, model_state: Any) -> list[tuple[str, Any]]:
    """(name, tensor) of what the step's guard checks, in a fixed order: the loss, then every
    floating-point leaf of model_state and params ('model_state/base/layer1/0/bn1/var')."""
    tree = {"loss": loss, "model_state": model_state, "params": params}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(_path_name(path), x) for path, x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]


def _path_name(path: tuple) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            if key.name != "value":  # an nnx Variable's array
                parts.append(key.name)
        else:
            parts.append(str(key))
    return "/".join(parts)


def _finite_flags(loss: jax.Array, params: nnx.State, model_state: nnx.State) -> jax.Array:
    """(N,) bool: whether each tensor of `_guarded_leaves` is finite (one reduction each)."""
    leaves = _guarded_leaves(loss, params, model_state)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for _, x in leaves])


def guarded_names(state: TrainState) -> list[str]:
    """The names of the tensors the step's guard checks, in the order metrics[FIRST_NON_FINITE]
    indexes: 'loss', then 'model_state/...' and 'params/...' paths (only the structure of
    `state` is read)."""
    loss = np.zeros((), np.float32)
    return [name for name, _ in _guarded_leaves(loss, state.params, state.model_state)]


def embed(
    params: nnx.State,
    model_state: nnx.State,
    clips: jax.Array,
    *,
    graphs: ModelGraphs,
    prepare_clips: PrepareClips | None = None,
) -> jax.Array:
    """Eval-mode clip embeddings (B, feature_dim) float32."""
    model = nnx.merge(graphs.eval, params, model_state)
    return model(_prepared({"clips": clips}, prepare_clips))


def _prepared(batch: Mapping[str, jax.Array], prepare_clips: PrepareClips | None) -> jax.Array:
    if prepare_clips is None:
        return batch["clips"]
    return prepare_clips(batch["clips"], batch.get("erase"), batch.get("flip"))


def compile_train_step(
    graphs: ModelGraphs,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    mesh: jax.sharding.Mesh,
    prepare_clips: PrepareClips | None = None,
    log_grad_norm: bool = True,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
    step = functools.partial(
        train_step,
        graphs=graphs,
        tx=tx,
        loss_fn=loss_fn,
        prepare_clips=prepare_clips,
        log_grad_norm=log_grad_norm,
    )
    return jax.jit(
        step,
        in_shardings=(replicated(mesh), data_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def compile_embed(
    graphs: ModelGraphs, mesh: jax.sharding.Mesh, prepare_clips: PrepareClips | None = None
) -> Callable:
    return jax.jit(
        functools.partial(embed, graphs=graphs, prepare_clips=prepare_clips),
        in_shardings=(replicated(mesh), replicated(mesh), data_sharded(mesh)),
        out_shardings=data_sharded(mesh),
    )


def create_train_state(
    model: PSTA, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> tuple[ModelGraphs, TrainState]:
    graphs, params, model_state = split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
    )
    return graphs, jax.device_put(state, replicated(mesh))


def tree_to_host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)

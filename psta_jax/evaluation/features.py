"""Tracklet features: a model's clip embeddings of every eval batch, gathered from every
process and averaged per tracklet.

`tracklet_features` needs only a compiled embedding function, the model variables and an
iterable of evaluation batches (`input_pipeline.create_eval_iterator` or anything yielding the
same dicts); `split_features` is the train loop's form (a split and the run's config).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from psta_jax import distributed, input_pipeline, sharding

# (params, model_state, clips (B, T, H, W, 3) data-sharded) -> (B, D) embeddings.
EmbedFn = Callable[[nnx.State, nnx.State, jax.Array], jax.Array]
ID_KEYS = ("tracklet_ids", "pids", "camids")


def clip_features(
    embed_fn: EmbedFn,
    params: nnx.State,
    model_state: nnx.State,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """Every clip of every batch through the model, gathered from all processes.

    `batches` are this process's slices of global eval batches {'clips', 'tracklet_ids',
    'pids', 'camids', 'mask'}. Returns the concatenated, unmasked {'features' (N, D),
    'tracklet_ids', 'pids', 'camids' (N,)} in the order batches arrive (every process gets the
    same arrays).
    """
    gathered: dict[str, list[np.ndarray]] = {key: [] for key in ("features", *ID_KEYS)}
    for batch in batches:
        clips = sharding.shard_batch({"clips": batch["clips"]}, mesh)["clips"]
        features = embed_fn(params, model_state, clips)
        local = {key: np.asarray(batch[key]) for key in (*ID_KEYS, "mask")}
        everything = _gather(features, local)
        mask = everything.pop("mask").astype(bool)
        for key, value in everything.items():
            gathered[key].append(value[mask])
    if not gathered["features"]:
        raise ValueError("clip_features: expected at least one evaluation batch, got none")
    return {key: np.concatenate(values) for key, values in gathered.items()}


def _gather(features: jax.Array, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The global batch's features (a batch-sharded jax.Array) and every process's ids."""
    if jax.process_count() == 1:
        return {"features": np.asarray(features), **local}
    from jax.experimental import multihost_utils

    distributed.barrier("gather_features")  # processes may reach here far apart (compilation)
    # A non-addressable global array comes back whole; host-local NumPy arrays are concatenated
    # in process order, which is the order of the processes' rows in the global batch.
    gathered = multihost_utils.process_allgather({"features": features, **local}, tiled=True)
    return {key: np.asarray(value) for key, value in gathered.items()}


def tracklet_features(
    embed_fn: EmbedFn,
    params: nnx.State,
    model_state: nnx.State,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """One feature per tracklet: the mean of its clips' features (as the release).

    Returns {'features' (M, D) float32, 'tracklet_ids', 'pids', 'camids' (M,)} in ascending
    tracklet-id order (= split order); every process gets the same arrays.
    """
    clips = clip_features(embed_fn, params, model_state, batches, mesh)
    ids, features = input_pipeline.average_clip_features(clips["features"], clips["tracklet_ids"])
    # The first clip of each tracklet (unique ids come sorted, as average_clip_features's).
    kept = np.flatnonzero(clips["tracklet_ids"] >= 0)
    _, first = np.unique(clips["tracklet_ids"][kept], return_index=True)
    first = kept[first]
    return {
        "features": features,
        "tracklet_ids": ids,
        "pids": clips["pids"][first],
        "camids": clips["camids"][first],
    }


def split_features(
    store: input_pipeline.TrackletStore,
    config: ml_collections.ConfigDict,
    embed_fn: EmbedFn,
    params: nnx.State,
    model_state: nnx.State,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """`tracklet_features` of every tracklet of `store` under the config's eval pipeline.

    Returns {'features' (N, D), 'pids' (N,), 'camids' (N,), 'tracklet_ids' (N,)} in the
    split's order, with the split's own pids and camids (int64).
    """
    batches = input_pipeline.eval_iterator(store, config)
    result = tracklet_features(embed_fn, params, model_state, iter(batches), mesh)
    position = {int(t): i for i, t in enumerate(store.tracklet_ids)}
    order = np.asarray([position[int(t)] for t in result["tracklet_ids"]])
    if len(order) != len(store.tracklet_ids):
        raise RuntimeError(
            f"evaluation saw {len(order)} of {len(store.tracklet_ids)} tracklets of the split"
        )
    return {
        "features": result["features"],
        "tracklet_ids": result["tracklet_ids"],
        "pids": store.pids[order],
        "camids": store.camids[order],
    }

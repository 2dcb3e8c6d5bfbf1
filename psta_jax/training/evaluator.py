"""Evaluating a model: every query and gallery clip through the compiled embedding, gathered
from every process, averaged per tracklet and scored under the dataset's protocol
(`psta_jax.evaluation`, NumPy).

`Evaluator` plans the two splits' batches once and scores any model variables: the train
loop's periodic evaluation, `evaluate_checkpoint` (`--config.mode=evaluate`) and inspection
use it. `tracklet_features` is the step every embedding of tracklets goes through
(embed's too), so a split embedded by `python -m psta_jax.embed` ranks exactly as evaluation
ranks it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from psta_jax import config_base, datasets, evaluation
from psta_jax.input.batch_plans import num_identities
from psta_jax.input.pipeline import EvalBatches
from psta_jax.input.preprocess import EvalPipelineConfig, clip_preparation
from psta_jax.runtime import distributed, sharding, workdir
from psta_jax.training import steps, trained_model

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
    from jax.experimental import multihost_utils  # noqa: PLC0415

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
    ids, features = evaluation.average_clip_features(clips["features"], clips["tracklet_ids"])
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


def eval_batches(
    store: datasets.TrackletStore,
    eval_input: EvalPipelineConfig,
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> EvalBatches:
    """This process's evaluation batches of a split; `batch_size` clips per global batch,
    rounded up to a multiple of the devices."""
    return EvalBatches(
        store,
        eval_input,
        batch_size=sharding.round_up_to_devices(batch_size, mesh),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


class Evaluator:
    """Scores model variables on a dataset's query and gallery splits.

    The batches are planned once (each call makes a fresh pass over them); every process
    computes the same metrics, process 0 logs the report.
    """

    SPLITS = ("query", "gallery")

    def __init__(
        self,
        splits: datasets.Splits,
        eval_input: EvalPipelineConfig,
        settings: evaluation.EvalSettings,
        *,
        batch_size: int,
        mesh: jax.sharding.Mesh,
    ):
        self.settings = settings
        self.mesh = mesh
        self.stores = {name: getattr(splits, name) for name in self.SPLITS}
        self.batches = {
            name: eval_batches(store, eval_input, batch_size, mesh)
            for name, store in self.stores.items()
        }

    def features(
        self, embed_fn: EmbedFn, params: nnx.State, model_state: nnx.State
    ) -> dict[str, dict[str, np.ndarray]]:
        """{'query', 'gallery'}: {'features' (N, D), 'tracklet_ids', 'pids', 'camids' (N,)},
        rows in split order with the split's own ids."""
        out = {}
        for name, store in self.stores.items():
            result = tracklet_features(embed_fn, params, model_state, self.batches[name], self.mesh)
            if not np.array_equal(result["tracklet_ids"], np.sort(store.tracklet_ids)):
                raise RuntimeError(
                    f"evaluation saw {len(result['tracklet_ids'])} of the "
                    f"{store.num_tracklets} tracklets of the {name} split"
                )
            order = np.argsort(np.argsort(store.tracklet_ids))  # split order of each id row
            out[name] = {
                "features": result["features"][order],
                "tracklet_ids": store.tracklet_ids,
                "pids": store.pids,
                "camids": store.camids,
            }
        return out

    def result(
        self, embed_fn: EmbedFn, params: nnx.State, model_state: nnx.State
    ) -> evaluation.EvalResult:
        """CMC/mAP of the model variables under the settings' protocol."""
        features = self.features(embed_fn, params, model_state)
        query, gallery = features["query"], features["gallery"]
        return evaluation.evaluate(
            query["features"],
            gallery["features"],
            query["pids"],
            gallery["pids"],
            query["camids"],
            gallery["camids"],
            protocol=self.settings.protocol,
            distance=self.settings.distance,
            rerank=self.settings.rerank,
            max_rank=self.settings.max_rank,
        )

    def __call__(self, embed_fn: EmbedFn, params: nnx.State, model_state: nnx.State) -> dict:
        """The metrics as JSON-ready values (`evaluation.to_json`); process 0 logs the table."""
        result = self.result(embed_fn, params, model_state)
        if jax.process_index() == 0:
            logging.info("\n%s", evaluation.format_report(result))
        return evaluation.to_json(result)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
    """`--config.mode=evaluate`: scores the checkpoint `config.checkpoint` names (default: the
    workdir's) on the config's dataset.

    Returns the metrics with 'checkpoint' and 'checkpoint_step'; process 0 also writes them to
    <workdir>/eval_results.json.
    """
    source = config.checkpoint or workdir_path
    saved = workdir.find_run_config(source)
    mesh = sharding.make_mesh()
    splits = datasets.open_dataset(config_base.dataset_spec(config))
    eval_input = config_base.eval_input(config)
    num_classes = saved.num_classes if saved else num_identities(splits.train.pids)
    workdir.check_compatible(saved, config.model.to_dict(), num_classes)
    graphs, step, variables = trained_model.restore_model(
        source, config.model.to_dict(), num_classes, mesh
    )
    embed_fn = steps.compile_embed(graphs, mesh, clip_preparation(eval_input))
    evaluator = Evaluator(
        splits,
        eval_input,
        config_base.eval_settings(config),
        batch_size=config.input.eval_batch_size,
        mesh=mesh,
    )
    metrics = evaluator(embed_fn, variables["params"], variables["model_state"])
    metrics["checkpoint"] = os.fspath(source)
    metrics["checkpoint_step"] = step
    if jax.process_index() == 0:
        workdir.write_results(workdir_path, workdir.EVAL_RESULTS_FILE, metrics)
    return metrics

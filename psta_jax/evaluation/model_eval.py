"""Evaluating a model: features of the query and gallery splits, then CMC/mAP under the
dataset's protocol; for the train loop's periodic evaluation and for a saved checkpoint."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging
from etils import epath
from flax import nnx

from psta_jax import checkpointing, clip_preparation, config_base, input_pipeline, sharding, steps
from psta_jax.evaluation import features as features_lib
from psta_jax.evaluation.protocols import evaluate
from psta_jax.evaluation.report import format_report, to_json
from psta_jax.models import build_model

EVAL_RESULTS_FILE = "eval_results.json"


def evaluate_splits(
    config: ml_collections.ConfigDict,
    splits: input_pipeline.Splits,
    embed_fn: features_lib.EmbedFn,
    params: nnx.State,
    model_state: nnx.State,
    mesh: jax.sharding.Mesh,
) -> dict:
    """Features of every query and gallery tracklet, then CMC/mAP under the dataset's protocol.

    Returns the metrics as JSON-ready values (`report.to_json`); process 0 logs the report.
    """
    query, gallery = (
        features_lib.split_features(store, config, embed_fn, params, model_state, mesh)
        for store in (splits.query, splits.gallery)
    )
    result = evaluate(
        query["features"],
        gallery["features"],
        query["pids"],
        gallery["pids"],
        query["camids"],
        gallery["camids"],
        protocol=config.dataset.protocol,
        distance=config.eval.distance,
        rerank=config.eval.rerank,
        max_rank=config.eval.max_rank,
    )
    if jax.process_index() == 0:
        logging.info("\n%s", format_report(result))
    return to_json(result)


def restore_model(
    source: str | os.PathLike,
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    mesh: jax.sharding.Mesh,
) -> tuple[steps.ModelGraphs, int, dict]:
    """A checkpoint's model (best, else latest, of a workdir; or a model checkpoint folder).

    The model is built abstractly (no initialisers run) and filled from the checkpoint.
    Returns (graphs, step, {'params', 'model_state'} replicated over `mesh`).
    """
    abstract = nnx.eval_shape(lambda: build_model(model_config, num_classes, nnx.Rngs(0)))
    graphs, params, model_state = steps.split_model(abstract)
    step, variables = checkpointing.restore_model_variables(
        source, {"params": params, "model_state": model_state}
    )
    return graphs, step, jax.device_put(variables, sharding.replicated(mesh))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluate mode: restores a checkpoint's model (config.checkpoint, else the workdir's).

    Returns the metrics with 'checkpoint' and 'checkpoint_step'; process 0 also writes them to
    workdir/eval_results.json.
    """
    source = config.checkpoint or workdir
    saved = checkpointing.read_config(checkpointing.resolve_model_checkpoint(source)[0])
    mesh = sharding.make_mesh()
    splits = input_pipeline.open_dataset(config)
    num_classes = (saved or {}).get("num_classes") or input_pipeline.TrainData(
        splits.train, config
    ).num_identities
    checkpointing.check_compatible(
        saved, config_base.run_facts(config, num_classes), str(source)
    )
    graphs, step, variables = restore_model(source, config.model, num_classes, mesh)
    embed_fn = steps.compile_embed(graphs, mesh, clip_preparation.prepare_eval_clips(config))
    metrics = evaluate_splits(
        config, splits, embed_fn, variables["params"], variables["model_state"], mesh
    )
    metrics["checkpoint"] = os.fspath(source)
    metrics["checkpoint_step"] = step
    if jax.process_index() == 0:
        out = epath.Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        (out / EVAL_RESULTS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics

"""The main job: train with periodic evaluation, checkpoint, resume; or evaluate a checkpoint."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from flax import nnx

from psta_jax import checkpointing, data, distributed, evaluation, optimizer, steps
from psta_jax.models import build_model

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"  # every logged scalar, one JSON object per line (process 0)


class ScalarLog:
    """Writes scalars to TensorBoard (clu) and, on process 0, to workdir/metrics.jsonl."""

    def __init__(self, workdir: epath.Path):
        self.is_main = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(
            os.fspath(workdir), just_logging=not self.is_main
        )
        self.path = workdir / METRICS_FILE

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self.writer.write_scalars(step, scalars)
        if self.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}))
                f.write("\n")

    def flush(self) -> None:
        self.writer.flush()


def _config_facts(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    return {"model": config.model.to_dict(), "num_classes": num_classes}


def _load_pretrained(model, config: ml_collections.ConfigDict) -> None:
    if config.pretrained:
        from psta_jax.interop import load_torchvision_resnet50

        load_torchvision_resnet50(config.pretrained, model)
        logging.info("backbone initialised from %s", config.pretrained)
    elif config.model.depth == 50 and config.model.width == 64:
        banner = "=" * 78
        logging.warning(
            "\n%s\nWARNING: training the full ResNet-50 from RANDOM weights (config.pretrained is "
            "empty).\nThe paper's numbers need torchvision's ImageNet weights: "
            "--config.pretrained=/path/to/resnet50-0676ba61.pth\n%s",
            banner,
            banner,
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config`'s model in `workdir`, resuming from its latest checkpoint.

    Returns the final evaluation metrics (also written to workdir/results.json).
    """
    workdir_path = epath.Path(workdir)
    is_main = jax.process_index() == 0
    mesh = steps.make_mesh()
    splits = data.open_dataset(config)
    train_data = data.TrainData(splits.train, config)
    num_classes = train_data.num_identities
    steps_per_epoch = train_data.steps_per_epoch
    total_steps = (
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )
    checkpoint_every = _every(
        config.checkpoint_every_steps, config.checkpoint_every_epochs, steps_per_epoch
    )
    eval_every = _every(config.eval_every_steps, config.eval_every_epochs, steps_per_epoch)

    checkpointing.check_compatible(
        checkpointing.read_config(workdir_path), _config_facts(config, num_classes), workdir
    )
    tx, schedule = optimizer.create_optimizer(config.optimizer, steps_per_epoch)
    model = build_model(config.model, num_classes, nnx.Rngs(config.seed))
    _load_pretrained(model, config)
    graphs, state = steps.create_train_state(model, tx, mesh)
    del model
    steps.log_parameter_overview(state.params)

    checkpoints = checkpointing.Checkpoints(workdir_path, max_to_keep=config.max_to_keep)
    restored = checkpoints.restore_latest({"model": state.model_variables(), "opt": _opt(state)})
    if restored is not None:
        state = _with_restored(state, restored[1], mesh)
        logging.info("resumed from %s at step %d", workdir, int(state.step))
    checkpointing.write_config(workdir_path, config, **_config_facts(config, num_classes))

    train_step = steps.compile_train_step(
        graphs, tx, num_classes, config.loss, mesh, data.prepare_train_clips(config)
    )
    embed_fn = steps.compile_embed(graphs, mesh, data.prepare_eval_clips(config))
    log = ScalarLog(workdir_path)
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=log.writer)
    start_step = int(state.step)
    host_batches = train_data.iterator(seed=config.seed, start_step=start_step)
    batches = (steps.shard_batch(batch, mesh) for batch in host_batches)
    if start_step < total_steps:
        # Compile before the first collective, then line the processes up (see barrier).
        first_batch = next(batches)
        train_step = train_step.lower(state, first_batch).compile()
        distributed.barrier("train_step_compiled")
        batches = itertools.chain([first_batch], batches)
    timer = steps.StepTimer(clips_per_step=train_data.global_batch_size)
    pending: list[dict] = []
    metrics: dict = {}

    try:
        for step in range(start_step + 1, total_steps + 1):
            state, step_metrics = train_step(state, next(batches))
            pending.append(step_metrics)
            timer.tick()
            progress(step)
            is_last = step == total_steps
            if step % config.log_every_steps == 0 or is_last or step % checkpoint_every == 0:
                _write_train_metrics(log, step, pending, schedule, timer)
                pending = []
            if step % eval_every == 0 or is_last:
                metrics = evaluate(config, splits, embed_fn, state, mesh)
                log.write(step, _scalar_metrics(metrics))
                checkpoints.save_if_best(step, _items(state), {"mAP": metrics["mAP"], "step": step})
            if step % checkpoint_every == 0 or is_last:
                checkpoints.save(step, _items(state), {"step": step})
    finally:  # an error (e.g. a NaN loss) still lets pending saves finish
        checkpoints.wait()
        checkpoints.close()
    log.flush()
    if not metrics:  # resumed a finished run: evaluate what it left
        metrics = evaluate(config, splits, embed_fn, state, mesh)
    if is_main:
        (workdir_path / RESULTS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


def _every(steps_value: int, epochs_value: int, steps_per_epoch: int) -> int:
    return steps_value if steps_value > 0 else max(1, epochs_value * steps_per_epoch)


def _opt(state: steps.TrainState) -> dict:
    return {"opt_state": state.opt_state, "step": state.step}


def _items(state: steps.TrainState) -> dict:
    return {"model": state.model_variables(), "opt": _opt(state)}


def _with_restored(state: steps.TrainState, items: Mapping, mesh) -> steps.TrainState:
    restored = steps.TrainState(
        step=items["opt"]["step"],
        params=items["model"]["params"],
        model_state=items["model"]["model_state"],
        opt_state=items["opt"]["opt_state"],
    )
    return jax.device_put(restored, steps.replicated(mesh))


def _write_train_metrics(log: ScalarLog, step: int, pending: list[dict], schedule, timer) -> None:
    host = jax.device_get(pending)
    finite = np.array([m["finite"] for m in host])
    if not finite.all():
        bad = step - len(host) + 1 + int(np.argmin(finite))
        raise steps.NonFiniteLossError(
            f"the loss became non-finite at step {bad}; training stopped. The parameters and "
            "checkpoints keep the last finite step. Lower the learning rate or check the inputs."
        )
    means = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "finite"}
    means["learning_rate"] = float(schedule(step - 1))
    means["clips_per_second"] = timer.rate()
    log.write(step, {f"train/{k}": v for k, v in means.items()})


def _scalar_metrics(metrics: Mapping) -> dict[str, float]:
    return {f"eval/{k}": float(v) for k, v in metrics.items() if k == "mAP" or k.startswith("rank")}


def evaluate(config, splits, embed_fn, state: steps.TrainState, mesh) -> dict:
    """Features of every query and gallery tracklet, then CMC/mAP under the dataset's protocol."""
    query = data.extract_tracklet_features(splits.query, config, embed_fn, state, mesh)
    gallery = data.extract_tracklet_features(splits.gallery, config, embed_fn, state, mesh)
    result = evaluation.evaluate(
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
        logging.info("\n%s", evaluation.format_report(result))
    return evaluation.to_json(result)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluate mode: restores a checkpoint's model (config.checkpoint, else the workdir's)."""
    source = config.checkpoint or workdir
    saved = checkpointing.read_config(checkpointing.resolve_model_checkpoint(source)[0])
    mesh = steps.make_mesh()
    splits = data.open_dataset(config)
    num_classes = (saved or {}).get("num_classes") or data.TrainData(
        splits.train, config
    ).num_identities
    checkpointing.check_compatible(saved, _config_facts(config, num_classes), str(source))
    model = build_model(config.model, num_classes, nnx.Rngs(config.seed))
    graphs, params, model_state = steps.split_model(model)
    step, variables = checkpointing.restore_model_variables(
        source, {"params": params, "model_state": model_state}
    )
    state = steps.TrainState(
        step=np.int32(step),
        params=variables["params"],
        model_state=variables["model_state"],
        opt_state=(),
    )
    state = jax.device_put(state, steps.replicated(mesh))
    embed_fn = steps.compile_embed(graphs, mesh, data.prepare_eval_clips(config))
    metrics = evaluate(config, splits, embed_fn, state, mesh)
    metrics["checkpoint"] = os.fspath(source)
    metrics["checkpoint_step"] = step
    if jax.process_index() == 0:
        out = epath.Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics

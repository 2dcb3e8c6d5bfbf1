"""The main job: train with periodic evaluation, checkpoint, resume (evaluating a saved
checkpoint is psta_jax.evaluation.model_eval.evaluate_checkpoint)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from clu.metric_writers import MetricWriter
from etils import epath
from flax import nnx

from psta_jax import (
    checkpointing,
    clip_preparation,
    config_base,
    distributed,
    input_pipeline,
    metric_writers,
    optimizer,
    progress,
    sharding,
    steps,
    xla_cpu,
)
from psta_jax.evaluation import model_eval
from psta_jax.models import build_model

RESULTS_FILE = "results.json"
METRICS_FILE = metric_writers.METRICS_FILE  # every logged scalar, one JSON object per line


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
    mesh = sharding.make_mesh()
    splits = input_pipeline.open_dataset(config)
    train_data = input_pipeline.TrainData(splits.train, config)
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
        checkpointing.read_config(workdir_path), config_base.run_facts(config, num_classes), workdir
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
    checkpointing.write_config(workdir_path, config, **config_base.run_facts(config, num_classes))

    train_step = steps.compile_train_step(
        graphs, tx, num_classes, config.loss, mesh, clip_preparation.prepare_train_clips(config),
        log_grad_norm=config.log_grad_norm,
    )
    embed_fn = steps.compile_embed(graphs, mesh, clip_preparation.prepare_eval_clips(config))
    start_step = int(state.step)
    writer = metric_writers.create_metric_writer(workdir_path, resume_step=start_step)
    train_progress = progress.TrainProgress(
        num_train_steps=total_steps, clips_per_step=train_data.global_batch_size
    )
    profiler = progress.StepProfiler(workdir_path, *config.profile_steps)
    host_batches = train_data.iterator(seed=config.seed, start_step=start_step)
    batches = (sharding.shard_batch(batch, mesh) for batch in host_batches)
    if start_step < total_steps:
        # Compile before the first collective, then line the processes up (see barrier).
        first_batch = next(batches)
        train_step = train_step.lower(state, first_batch).compile()
        xla_cpu.release_compilation_memory()  # ~1 GB the compiler freed, before the steps
        distributed.barrier("train_step_compiled")
        batches = itertools.chain([first_batch], batches)
    pending: list[dict] = []
    metrics: dict = {}

    train_progress.start(start_step)
    try:
        for step in range(start_step + 1, total_steps + 1):
            with profiler.step(step):
                state, step_metrics = train_step(state, next(batches))
            profiler.step_done(step, state)
            checkpoints.raise_if_save_failed()  # a failed save stops training at once
            pending.append(step_metrics)
            is_last = step == total_steps
            checkpoint_now = step % checkpoint_every == 0 or is_last
            if step % config.log_every_steps == 0 or checkpoint_now:
                _write_train_metrics(writer, step, pending, schedule, train_progress)
                pending = []
            evaluated = None
            if step % eval_every == 0 or is_last:
                try:
                    with train_progress.timed("evaluation", wait_for=state):
                        metrics = _evaluate(config, splits, embed_fn, state, mesh)
                        # The heap keeps what evaluation freed (xla_cpu.keep_freed_memory):
                        # back to the system, so its peak does not stay beside the steps'.
                        xla_cpu.trim_heap()
                except Exception:
                    # A failed evaluation must not cost the steps since the last checkpoint.
                    checkpoints.save(step, _items(state))
                    logging.error("evaluation at step %d failed; that step is checkpointed", step)
                    raise
                evaluated = _eval_scalars(metrics)
                writer.write_scalars(step, {f"eval/{k}": v for k, v in evaluated.items()})
            # One save per step: a checkpoint step, or an evaluation that beats the best mAP;
            # an evaluated step carries its metrics, which rank it for the best-mAP slot.
            if checkpoint_now or (evaluated and checkpoints.improves_best(evaluated)):
                with train_progress.timed("checkpoint", wait_for=state):
                    checkpoints.save(step, _items(state), metrics=evaluated)
    finally:  # an error (e.g. a NaN loss) still lets pending saves and writes finish
        profiler.stop()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    if not metrics:  # resumed a finished run: evaluate what it left
        metrics = _evaluate(config, splits, embed_fn, state, mesh)
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
    return jax.device_put(restored, sharding.replicated(mesh))


def _write_train_metrics(
    writer: MetricWriter,
    step: int,
    pending: list[dict],
    schedule,
    train_progress: progress.TrainProgress,
) -> None:
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
    means.update(train_progress.report(step))  # steps/clips per second, training time only
    writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})


def _eval_scalars(metrics: Mapping) -> dict[str, float]:
    """mAP and rank-k of an evaluation's JSON metrics."""
    return {k: float(v) for k, v in metrics.items() if k == "mAP" or k.startswith("rank")}


def _evaluate(config, splits, embed_fn, state: steps.TrainState, mesh) -> dict:
    return model_eval.evaluate_splits(
        config, splits, embed_fn, state.params, state.model_state, mesh
    )

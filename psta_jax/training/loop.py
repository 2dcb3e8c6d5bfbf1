"""The main job: train with periodic evaluation, checkpoints and logs; resume from the latest
checkpoint. The one place below the command line that reads the run's config: each part
gets only the settings it needs (`config_base.train_input`, `eval_input`, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from flax import nnx

from psta_jax import config_base, datasets
from psta_jax.input import preprocess
from psta_jax.input.pipeline import TrainBatches
from psta_jax.interop import imagenet_weights
from psta_jax.models import build_model
from psta_jax.runtime import checkpointing, distributed, sharding, workdir, xla_cpu
from psta_jax.runtime.errors import ConfigError
from psta_jax.training import evaluator as evaluator_lib
from psta_jax.training import loop_timing, losses, optimizer, steps
from psta_jax.training import metric_writers as writers_lib


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop does what, in steps."""

    total_steps: int
    checkpoint_every: int
    eval_every: int
    log_every: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Schedule:
        def every(steps_value: int, epochs_value: int) -> int:
            return steps_value if steps_value > 0 else max(1, epochs_value * steps_per_epoch)

        total = config.num_train_steps
        return cls(
            total_steps=total if total > 0 else config.num_epochs * steps_per_epoch,
            checkpoint_every=every(config.checkpoint_every_steps, config.checkpoint_every_epochs),
            eval_every=every(config.eval_every_steps, config.eval_every_epochs),
            log_every=config.log_every_steps,
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
    """Trains `config`'s model in `workdir_path`, resuming from its latest checkpoint.

    Returns the final evaluation metrics (also written to <workdir>/results.json). One
    training at a time per workdir: process 0 holds its lock (`runtime.workdir.training_lock`).
    """
    is_lock_holder = jax.process_index() == 0
    with workdir.training_lock(workdir_path) if is_lock_holder else contextlib.nullcontext():
        return _train_and_evaluate(config, epath.Path(workdir_path))


def _train_and_evaluate(config: ml_collections.ConfigDict, root: epath.Path) -> dict:
    mesh = sharding.make_mesh()
    splits = datasets.open_dataset(config_base.dataset_spec(config))
    train_input = config_base.train_input(config)
    eval_input = config_base.eval_input(config)
    sharding.check_divides(
        train_input.global_batch_size, mesh, "config.batch.identities x config.batch.instances"
    )
    train_data = TrainBatches(
        splits.train,
        train_input,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    num_classes = train_data.num_identities
    schedule = Schedule.from_config(config, train_data.steps_per_epoch)
    saved = workdir.find_run_config(root, levels_up=0)  # a new run may sit inside another's
    workdir.check_compatible(saved, config.model.to_dict(), num_classes)

    # The model, its optimiser and the train state, restored from the latest checkpoint.
    tx, learning_rate = optimizer.create_optimizer(
        train_data.steps_per_epoch, **config.optimizer.to_dict()
    )
    checkpoints = checkpointing.Checkpoints(root, max_to_keep=config.max_to_keep)
    model = build_model(config.model.to_dict(), num_classes, nnx.Rngs(config.seed))
    _load_pretrained(model, config.pretrained, config.model, resume_step=checkpoints.latest_step())
    graphs, state = steps.create_train_state(model, tx, mesh)
    del model
    logging.info("trainable parameters: %s", f"{steps.count_trainable(state.params):,}")
    restored = checkpoints.restore_latest({"model": state.model_variables(), "opt": _opt(state)})
    if restored is not None:
        state = _with_restored(state, restored[1], mesh)
        logging.info("resumed from %s at step %d", root, int(state.step))
    if jax.process_index() == 0:
        workdir.write_run_config(root, config, num_classes)

    # The two programs and the parts around them.
    train_step = steps.compile_train_step(
        graphs,
        tx,
        losses.bound_psta_loss(num_classes, **config.loss.to_dict()),
        mesh,
        preprocess.clip_preparation(train_input),
        log_grad_norm=config.log_grad_norm,
    )
    embed_fn = steps.compile_embed(graphs, mesh, preprocess.clip_preparation(eval_input))
    evaluator = evaluator_lib.Evaluator(
        splits,
        eval_input,
        config_base.eval_settings(config),
        batch_size=config.input.eval_batch_size,
        mesh=mesh,
    )
    start_step = int(state.step)
    writer, file_writer = writers_lib.create_metric_writers(root, resume_step=start_step)
    # Logs a progress line (steps/s, ETA, time in evaluation and checkpoints) and writes
    # steps_per_sec and uptime to the files: the line already shows them.
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=schedule.total_steps,
        writer=file_writer,
        every_steps=schedule.log_every,
        every_secs=None,
    )
    # Writes per log interval the time spent waiting for input and the host's CPU share, and
    # the wall time of each evaluation and save (loop_timing; no wait on the device).
    timings = loop_timing.LoopTimings(file_writer, every_steps=schedule.log_every)
    hooks = [report_progress, timings]
    first_profiled, num_profiled = config.profile_steps
    if num_profiled > 0:  # a TensorBoard trace of these steps, one per process
        hooks.append(
            periodic_actions.Profile(
                logdir=root,
                first_profile=first_profiled - 1,  # starts in the hook after that step
                num_profile_steps=num_profiled,
                profile_duration_ms=None,
                every_secs=None,
            )
        )
    batches = (
        sharding.shard_batch(batch, mesh) for batch in train_data.iterator(start_step=start_step)
    )
    if start_step < schedule.total_steps:
        # Compile before the first collective, then line the processes up (see barrier).
        first_batch = next(batches)
        train_step = train_step.lower(state, first_batch).compile()
        xla_cpu.release_compilation_memory()  # what the compiler freed, before the steps run
        distributed.barrier("train_step_compiled")
        batches = itertools.chain([first_batch], batches)
    batches = timings.batches(batches)

    metrics: dict = {}
    pending: list[dict] = []
    try:
        for step in range(start_step + 1, schedule.total_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, step_metrics = train_step(state, next(batches))
            checkpoints.raise_if_save_failed()  # a failed save stops training at once
            pending.append(step_metrics)
            is_last = step == schedule.total_steps
            checkpoint_now = step % schedule.checkpoint_every == 0 or is_last
            eval_now = step % schedule.eval_every == 0 or is_last
            # The metrics are read (and a non-finite step raises) before any evaluation or save.
            if step % schedule.log_every == 0 or checkpoint_now or eval_now:
                _write_train_metrics(writer, step, pending, learning_rate, state)  # waits
                pending = []
            for hook in hooks:  # after the wait: the progress line measures finished steps
                hook(step)
            evaluated = None
            if eval_now:
                with report_progress.timed("eval"), timings.timed("eval", step):
                    metrics = _evaluate(evaluator, embed_fn, state, step, checkpoints)
                evaluated = _eval_scalars(metrics)
                writer.write_scalars(step, {f"eval/{k}": v for k, v in evaluated.items()})
            # One save per step: a checkpoint step, or an evaluation that beats the best mAP;
            # an evaluated step carries its metrics, which rank it for the best-mAP slot.
            if checkpoint_now or (evaluated and checkpoints.improves_best(evaluated)):
                with report_progress.timed("checkpoint"), timings.timed("checkpoint", step):
                    checkpoints.save(step, _items(state), metrics=evaluated)
    finally:  # an error (e.g. a NaN loss) still lets pending saves and writes finish
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    if not metrics:  # resumed a finished run: evaluate what it left
        metrics = evaluator(embed_fn, state.params, state.model_state)
    if jax.process_index() == 0:
        workdir.write_results(root, workdir.RESULTS_FILE, metrics)
    return metrics


def _load_pretrained(
    model: nnx.Module, pretrained: str, model_config, *, resume_step: int | None = None
) -> None:
    """Loads `config.pretrained` into the backbone: "imagenet" (the ResNet-50 backbone only;
    another backbone keeps its random weights), "none" / "" (random weights) or a .pth path
    (the ResNet-50 backbone only). Each process resolves the value itself: a download is
    renamed into the cache atomically (`interop.imagenet_weights`). Nothing is resolved or
    loaded when the run resumes (`resume_step`, the workdir's latest checkpoint): the
    checkpoint's weights replace the model's."""
    if resume_step is not None:
        logging.info(
            "the workdir holds checkpoints to resume from (latest step %d): "
            "config.pretrained=%r is not loaded",
            resume_step,
            pretrained,
        )
        return
    resnet50 = model_config.depth == 50 and model_config.width == 64
    backbone = f"depth {model_config.depth}, width {model_config.width}"
    choice = imagenet_weights.kind(pretrained)
    if choice == imagenet_weights.IMAGENET and not resnet50:
        logging.info(
            "config.pretrained='imagenet' applies to the ResNet-50 backbone; this one (%s) "
            "starts from random weights",
            backbone,
        )
        return
    if choice == imagenet_weights.PATH and not resnet50:
        raise ConfigError(
            f"config.pretrained={pretrained!r}: torchvision ResNet-50 weights need the ResNet-50 "
            f"backbone (config.model.depth=50, width=64), not {backbone}; use "
            "--config.pretrained=none for random weights"
        )
    weights = imagenet_weights.locate_pretrained(pretrained)
    if weights is None:
        if resnet50:
            logging.warning(
                "training the full ResNet-50 from RANDOM weights, as config.pretrained=%r asks; "
                "the paper's numbers need torchvision's ImageNet weights: "
                "--config.pretrained=imagenet (the default) or a path to the .pth file",
                pretrained,
            )
        return
    from psta_jax.interop import load_torchvision_resnet50  # noqa: PLC0415 (imports torch)

    load_torchvision_resnet50(imagenet_weights.read_weights(weights), model)
    logging.info("backbone initialised from %s", weights.path)


def _evaluate(
    evaluator: evaluator_lib.Evaluator,
    embed_fn,
    state: steps.TrainState,
    step: int,
    checkpoints: checkpointing.Checkpoints,
) -> dict:
    try:
        metrics = evaluator(embed_fn, state.params, state.model_state)
    except Exception:
        # A failed evaluation must not cost the steps since the last checkpoint.
        checkpoints.save(step, _items(state))
        logging.error("evaluation at step %d failed; that step is checkpointed", step)
        raise
    # The heap keeps what evaluation freed (xla_cpu.keep_freed_memory): back to the system, so
    # its peak does not stay beside the steps'.
    xla_cpu.trim_heap()
    return metrics


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
    writer: metric_writers.MetricWriter,
    step: int,
    pending: list[dict],
    learning_rate,
    state: steps.TrainState,
) -> None:
    """The means of the steps since the last write; stops at a step whose loss, parameters or
    BatchNorm statistics were not finite, naming the first such tensor (from `state`'s
    structure)."""
    host = jax.device_get(pending)
    finite = np.array([m["finite"] for m in host])
    if not finite.all():
        first = int(np.argmin(finite))
        bad = step - len(host) + 1 + first
        tensor = steps.guarded_names(state)[int(host[first][steps.FIRST_NON_FINITE])]
        raise steps.NonFiniteLossError(
            f"training became non-finite at step {bad} (first NaN or inf in {tensor}); "
            "training stopped. The parameters and checkpoints keep the last finite step. "
            "Lower the learning rate or check the inputs."
        )
    not_logged = ("finite", steps.FIRST_NON_FINITE)
    means = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k not in not_logged}
    means["learning_rate"] = float(learning_rate(step - 1))
    writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})


def _eval_scalars(metrics: Mapping) -> dict[str, float]:
    """mAP and rank-k of an evaluation's JSON metrics."""
    return {k: float(v) for k, v in metrics.items() if k == "mAP" or k.startswith("rank")}

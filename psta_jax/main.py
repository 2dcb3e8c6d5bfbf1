"""Entry point: python -m psta_jax.main --config=configs/mars.py --workdir=DIR.

Any config field can be overridden (--config.batch.identities=4). `config.mode` selects
`train` (train with periodic evaluation, resuming from DIR's latest checkpoint) or
`evaluate` (evaluate config.checkpoint, or DIR's best checkpoint).

Expected failures (bad data, an incompatible or damaged checkpoint, a full disk, a config
check) end with one message and exit code 1 (`psta_jax.errors`); `--verbose` shows the
traceback.
"""

from __future__ import annotations

import logging as python_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from psta_jax import distributed, errors, xla_cpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py[:presets]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


MODES = ("train", "evaluate")


class _QuietLibraries(python_logging.Filter):
    """Drops the INFO chatter of Orbax and TensorFlow Datasets (warnings still show).

    Their error records keep their one-line message but lose the attached traceback: a failed
    checkpoint save is reported once, as an expected error, by `psta_jax.errors`.
    """

    _NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/distributed")
    # Orbax's abandoned writes also surface through asyncio ("Task exception was never
    # retrieved"), each with a traceback.
    _NO_TRACEBACK = (*_NOISY, "/asyncio/")

    def filter(self, record: python_logging.LogRecord) -> bool:
        if record.exc_info and not _verbose():
            if any(part in record.pathname for part in self._NO_TRACEBACK):
                record.exc_info, record.exc_text = None, None
        noisy = any(part in record.pathname for part in self._NOISY)
        if noisy and record.getMessage().startswith("Requested `tracked_metric`"):
            return False  # every checkpoint-only save: steps without an evaluation are expected
        return record.levelno >= python_logging.WARNING or not noisy


def _hide_abandoned_write_noise(unraisable) -> None:
    """Drops what TensorStore prints when a failed checkpoint write calls back into a closed
    asyncio loop ('RuntimeError: Event loop is closed', one traceback per array); the
    failure itself is reported once by `checkpointing.CheckpointSaveError`."""
    if isinstance(unraisable.exc_value, RuntimeError) and not _verbose():
        if "Event loop is closed" in str(unraisable.exc_value):
            return
    sys.__unraisablehook__(unraisable)


def _verbose() -> bool:
    return FLAGS["verbose"].value or logging.get_verbosity() >= logging.DEBUG


def _load_config():
    """FLAGS.config; config_flags reports a config file that failed to load only on use."""
    try:
        config = FLAGS.config
        config.mode  # noqa: B018 - the first access raises the deferred load error
    except OSError as error:
        raise errors.ConfigError(f"cannot load --config: {error}") from None
    return config


def _check_mode(config) -> None:
    if config.mode not in MODES:
        raise errors.ConfigError(
            f"config.mode must be 'train' or 'evaluate', got {config.mode!r}: set "
            "--config.mode=train or --config.mode=evaluate"
        )


def _check_workdir(workdir: str) -> None:
    """Creates the workdir and proves it writable before anything long starts."""
    if "://" in workdir:  # Cloud storage: Orbax and TensorBoard report their own errors.
        return
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise WorkdirError(
            f"cannot write to the workdir {workdir}: {error.strerror or error}. Choose a "
            "writable --workdir (its parent folders are created as needed)."
        ) from error


class WorkdirError(errors.UserError, OSError):
    """The workdir cannot be created or written."""


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    sys.unraisablehook = _hide_abandoned_write_noise
    config = _load_config()
    _check_mode(config)  # Before JAX starts: a typo costs no start-up time.
    _check_workdir(FLAGS.workdir)
    xla_cpu.configure_for_cpu_if_needed()  # before JAX starts its backends
    # Must run before any other JAX call: joins the other processes of a multi-host run.
    distributed.initialize_from_flags()

    import jax

    from psta_jax import input_pipeline, train
    from psta_jax.evaluation import model_eval

    input_pipeline.disable_tf_accelerators()
    logging.info(
        "JAX process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    if config.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    else:
        model_eval.evaluate_checkpoint(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(errors.absl_main(main), flags_parser=errors.parse_absl_flags)

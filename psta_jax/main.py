"""Entry point: python -m psta_jax.main --config=configs/mars.py --workdir=DIR.

Any config field can be overridden (--config.batch.identities=4). `config.mode` selects
`train` (train with periodic evaluation, resuming from DIR's latest checkpoint) or
`evaluate` (evaluate config.checkpoint, or DIR's best checkpoint).
"""

from __future__ import annotations

import logging as python_logging

from absl import app, flags, logging
from ml_collections import config_flags

from psta_jax import distributed, xla_cpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py[:presets]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(python_logging.Filter):
    """Drops the INFO chatter of Orbax and TensorFlow Datasets (warnings still show)."""

    _NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/distributed")

    def filter(self, record: python_logging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in self._NOISY)
        return record.levelno >= python_logging.WARNING or not noisy


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
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
    config = FLAGS.config
    if config.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    elif config.mode == "evaluate":
        model_eval.evaluate_checkpoint(config, FLAGS.workdir)
    else:
        raise app.UsageError(f"config.mode must be 'train' or 'evaluate', got {config.mode!r}")


if __name__ == "__main__":
    app.run(main)

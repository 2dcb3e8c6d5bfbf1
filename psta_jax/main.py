"""Train or evaluate PSTA: python -m psta_jax.main --config=configs/mars.py --workdir=DIR
(console script: psta-train).

Any config field can be overridden (`--config.batch.identities=4`). `config.mode` selects
`train` (train with periodic evaluation, resuming from DIR's latest checkpoint) or
`evaluate` (evaluate config.checkpoint, or DIR's best checkpoint). Multi-process runs join
with `--distributed=auto` or `--coordinator_address --num_processes --process_id`
(`runtime.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from psta_jax import config_base
from psta_jax.runtime import cli, distributed, errors, workdir

MODES = config_base.MODES  # ("train", "evaluate")


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Training configuration file (configs/*.py[:presets]).",
        flag_values=values,
        lock_config=True,
        sys_argv=list(argv),
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints, logs and results.", flag_values=values
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=values)
    distributed.define_flags(values)


def _load_config(values: flags.FlagValues):
    """The parsed, validated config (`config_base.validate`: every field in one message);
    config_flags reports a config file that failed to load on use."""
    try:
        config = values.config
        config.mode  # noqa: B018 - the first access raises the deferred load error
    except errors.UserError:
        raise
    except (OSError, ValueError, AttributeError, ImportError, SyntaxError) as error:
        raise errors.FlagError(f"cannot load --config: {error}") from None
    if config.mode not in MODES:
        raise errors.ConfigError(
            f"config.mode must be 'train' or 'evaluate', got {config.mode!r}: set "
            "--config.mode=train or --config.mode=evaluate"
        )
    return config_base.validate(config)


def _run(values: flags.FlagValues) -> dict:
    config = _load_config(values)  # before JAX starts: a typo costs no start-up time
    workdir.check_writable(values.workdir)
    # Before any other JAX call: joins the other processes of a multi-process run.
    distributed.initialize_from_flags(values)

    import jax  # noqa: PLC0415 (after the CPU setup)
    from absl import logging  # noqa: PLC0415

    from psta_jax.training import evaluator, loop  # noqa: PLC0415

    logging.info(
        "JAX process %d/%d, %d local / %d global %s device(s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    if config.mode == "train":
        metrics = loop.train_and_evaluate(config, values.workdir)
    else:
        metrics = evaluator.evaluate_checkpoint(config, values.workdir)
    expected = config.get("expected_results")
    if expected and jax.process_index() == 0:  # the demo: its range over seeds, from the README
        from psta_jax.evaluation import expected_range_note  # noqa: PLC0415

        ranges = {k: tuple(v) for k, v in expected.ranges.items()}
        logging.info("%s", expected_range_note(metrics, ranges, expected.source))
    return metrics


main = cli.Command(
    name="psta-train",
    summary="Train PSTA with periodic evaluation (resuming from the workdir), or evaluate a "
    "checkpoint with --config.mode=evaluate.",
    define_flags=_define_flags,
    run=_run,
)

if __name__ == "__main__":
    main.entry()

"""Convert an authors' release checkpoint (.pth) into a psta-jax checkpoint for evaluation
(console script: psta-convert).

  python -m psta_jax.interop.convert --checkpoint=rank1_0.91515154_checkpoint_ep350.pth \
      --out=ckpt/mars [--config=configs/mars.py]

The output directory has the layout of a training workdir's `checkpoints/` (step 0, model
variables only) plus `config.json`, so `--config.mode=evaluate --config.checkpoint=DIR`
evaluates it. The model config (default: the release's network) must match the checkpoint;
num_classes is read from the classifier. An existing non-empty DIR is never overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags

from psta_jax.runtime import cli, workdir
from psta_jax.runtime.errors import UserError

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "mars.py")


class OutputExistsError(UserError, FileExistsError):
    """The output directory already holds files (they are never overwritten)."""


def convert(source, out: str | os.PathLike, config: ml_collections.ConfigDict) -> epath.Path:
    """Writes `source` (a .pth path or a name -> array mapping) as a checkpoint in `out`."""
    out = epath.Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not empty; choose a new --out directory")
    from psta_jax.interop.torch_import import load_official_psta, read_state_dict  # noqa: PLC0415
    from psta_jax.models import MODEL_FIELDS  # noqa: PLC0415
    from psta_jax.runtime import checkpointing  # noqa: PLC0415
    from psta_jax.training import steps  # noqa: PLC0415

    state_dict = read_state_dict(source)
    overrides = {k: v for k, v in config.model.to_dict().items() if k in MODEL_FIELDS}
    overrides["image_size"] = tuple(overrides["image_size"])
    model = load_official_psta(state_dict, **overrides)
    num_classes = int(model.classifier[0].kernel.shape[-1])
    _, params, model_state = steps.split_model(model)
    manager = checkpointing.Checkpoints(out, max_to_keep=1, async_save=False)
    origin = os.fspath(source) if isinstance(source, str | os.PathLike) else "<mapping>"
    manager.save(
        0, {"model": {"params": params, "model_state": model_state}}, {"converted_from": origin}
    )
    manager.wait()
    manager.close()
    workdir.write_run_config(out, config, num_classes, converted_from=origin)
    return out


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    flags.DEFINE_string(
        "checkpoint",
        None,
        "The release checkpoint (.pth) to convert.",
        flag_values=values,
        required=True,
    )
    flags.DEFINE_string(
        "out",
        None,
        "The output folder (must not exist or be empty).",
        flag_values=values,
        required=True,
    )
    config_flags.DEFINE_config_file(
        "config",
        DEFAULT_CONFIG,
        "A config whose model section describes the checkpoint's network.",
        flag_values=values,
        sys_argv=list(argv),
    )


def _run(values: flags.FlagValues) -> epath.Path:
    out = convert(values.checkpoint, values.out, values.config)
    print(f"wrote {out}: evaluate with --config.mode=evaluate --config.checkpoint={out}")
    return out


main = cli.Command(
    name="psta-convert",
    summary="Convert an authors' release checkpoint (.pth) into a psta-jax checkpoint.",
    define_flags=_define_flags,
    run=_run,
    uses_tensorflow=False,
)

if __name__ == "__main__":
    main.entry()

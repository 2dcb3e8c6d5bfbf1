"""Convert an authors' release checkpoint (.pth) into a psta-jax checkpoint for evaluation.

  python -m psta_jax.interop.convert --checkpoint rank1_0.91515154_checkpoint_ep350.pth \
      --out ckpt/mars [--config=configs/mars.py]

The output directory has the layout of a training workdir's `checkpoints/` (step 0, model
variables only) plus `config.json`, so `--config.mode=evaluate --config.checkpoint=DIR`
evaluates it. The model config (default: the release's network) must match the checkpoint;
num_classes is read from the classifier. An existing non-empty DIR is never overwritten.
"""

from __future__ import annotations

import os

import ml_collections
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from psta_jax import checkpointing, errors, steps
from psta_jax.errors import UserError
from psta_jax.interop.torch_import import load_official_psta, read_state_dict
from psta_jax.models import MODEL_FIELDS

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Release checkpoint (.pth) to convert.")
_OUT = flags.DEFINE_string("out", None, "Output directory (must not exist or be empty).")
config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "..", "..", "configs", "mars.py"),
    "Config whose model section describes the checkpoint's network.",
)


class OutputExistsError(UserError, FileExistsError):
    """The output directory already holds files (they are never overwritten)."""


def convert(source, out: str | os.PathLike, config: ml_collections.ConfigDict) -> epath.Path:
    """Writes `source` (a .pth path or a name -> array mapping) as a checkpoint in `out`."""
    out = epath.Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not empty; choose a new --out directory")
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
    checkpointing.write_config(out, config, num_classes=num_classes, converted_from=origin)
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _CHECKPOINT.value or not _OUT.value:
        raise app.UsageError("--checkpoint and --out are required")
    out = convert(_CHECKPOINT.value, _OUT.value, flags.FLAGS.config)
    print(f"wrote {out}: evaluate with --config.mode=evaluate --config.checkpoint={out}")


if __name__ == "__main__":
    app.run(errors.absl_main(main), flags_parser=errors.parse_absl_flags)

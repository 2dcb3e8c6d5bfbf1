"""The one module that talks to Orbax: periodic, best-by-mAP and converted checkpoints.

A workdir holds:
  checkpoints/<step>/   the latest `max_to_keep` train states (items `state` and `meta`)
  best/<step>/          the train state with the best mAP so far (one kept)
  config.json           the run's config (written by process 0)
Each step folder holds the items `model` (model variables), `opt` (optimizer state and
step) and `meta` (JSON). A converted release checkpoint (psta_jax.interop.convert) has the
same `checkpoints/<step>/` layout without `opt`, plus its config.json.

Every process calls save/restore (Orbax coordinates multi-host saves on a shared directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
CONFIG_FILE = "config.json"

# Config fields that change the shapes or meaning of a checkpoint's arrays.
_COMPATIBILITY_FIELDS = ("model", "num_classes")


class IncompatibleCheckpointError(ValueError):
    """A checkpoint was written by a run whose model does not match this config."""


def _absolute(path: str | os.PathLike) -> epath.Path:
    """Orbax needs absolute paths; local relative ones are made absolute (URLs kept)."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _manager(directory: epath.Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=True, **options),
        item_names=("model", "opt", "meta"),
    )


class Checkpoints:
    """Latest and best checkpoints of one workdir."""

    def __init__(
        self, workdir: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ):
        self.workdir = _absolute(workdir)
        self._latest = _manager(
            self.workdir / LATEST_DIR,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
        )
        self._best = _manager(
            self.workdir / BEST_DIR,
            max_to_keep=1,
            best_fn=lambda metrics: metrics["mAP"],
            best_mode="max",
            keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=async_save,
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.best_step()

    def save(
        self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Saves `items` ({'model': ..., 'opt': ...}) as the checkpoint of `step` (once)."""
        if step in self._latest.all_steps():
            return
        self._latest.save(step, args=_save_args(items, meta))

    def save_if_best(
        self, step: int, items: Mapping[str, Any], metrics: Mapping[str, float]
    ) -> None:
        """Keeps `items` under best/ when their mAP is the best seen so far."""
        best = self._best.best_step()
        if best is not None:
            best_map = self._best_metrics().get("mAP", float("-inf"))
            if metrics["mAP"] <= best_map:
                return
        self._best.save(step, args=_save_args(items, metrics), metrics=dict(metrics))

    def _best_metrics(self) -> dict:
        step = self._best.best_step()
        restored = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def restore_latest(self, targets: Mapping[str, Any]) -> tuple[int, dict] | None:
        """(step, items) of the latest checkpoint shaped like `targets`; None if none."""
        step = self._latest.latest_step()
        if step is None:
            return None
        return step, _restore_items(self._latest, step, targets, self.workdir / LATEST_DIR)

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _save_args(items: Mapping[str, Any], meta: Mapping[str, Any] | None) -> ocp.args.Composite:
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    return ocp.args.Composite(meta=ocp.args.JsonSave(dict(meta or {})), **args)


def _restore_items(
    manager: ocp.CheckpointManager, step: int, targets: Mapping[str, Any], where: epath.Path
) -> dict:
    args = {name: ocp.args.StandardRestore(_abstract(t)) for name, t in targets.items()}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
        raise IncompatibleCheckpointError(
            f"checkpoint {where / str(step)} does not fit this model/optimizer (the arrays it "
            f"holds differ in structure or shape from what this config builds): "
            f"{str(error).splitlines()[0][:300]}"
        ) from error
    return {name: restored[name] for name in targets}


def resolve_model_checkpoint(path: str | os.PathLike) -> tuple[epath.Path, int]:
    """Finds the checkpoint to evaluate under `path`: a workdir (its best, else latest), a
    `best/` or `checkpoints/` folder (its newest step) or one step folder."""
    path = _absolute(path)
    candidates = [path / BEST_DIR, path / LATEST_DIR, path]
    for directory in candidates:
        if not directory.is_dir():
            continue
        steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        if steps:
            return directory, steps[-1]
    if path.name.isdigit() and path.is_dir():
        return path.parent, int(path.name)
    raise FileNotFoundError(
        f"no checkpoint found at {path}: expected a workdir (with best/ or checkpoints/), "
        "one of those folders, or a step folder inside them"
    )


def restore_model_variables(path: str | os.PathLike, target: Any) -> tuple[int, Any]:
    """Restores only the model variables of the checkpoint at `path` (no optimizer state).

    `target` is a pytree shaped like the model variables. Works on training checkpoints
    and on converted release checkpoints alike.
    """
    directory, step = resolve_model_checkpoint(path)
    manager = _manager(directory)
    try:
        return step, _restore_items(manager, step, {"model": target}, directory)["model"]
    finally:
        manager.close()


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict, **extra) -> None:
    """Saves the config (plus facts like num_classes) as JSON in the workdir (process 0)."""
    if jax.process_index() != 0:
        return
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.loads(config.to_json_best_effort())
    payload.update(extra)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def read_config(directory: str | os.PathLike) -> dict | None:
    """The JSON config saved in `directory` (or its parents up to two levels), if any."""
    path = epath.Path(directory)
    for candidate in (path, path.parent, path.parent.parent):
        file = candidate / CONFIG_FILE
        if file.exists():
            return json.loads(file.read_text())
    return None


def check_compatible(
    saved: Mapping[str, Any] | None, current: Mapping[str, Any], where: str
) -> None:
    """Raises a clear error when a saved run's model config differs from the current one."""
    if saved is None:
        return
    differences = []
    for field in _COMPATIBILITY_FIELDS:
        old, new = saved.get(field), current.get(field)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for key in sorted(set(old) | set(new)):
                if key in ("dtype", "remat"):  # compute-only: any value restores the same arrays
                    continue
                if _normalise(old.get(key)) != _normalise(new.get(key)):
                    differences.append(
                        f"{field}.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
                    )
        elif old is not None and _normalise(old) != _normalise(new):
            differences.append(f"{field}: checkpoint {old!r}, now {new!r}")
    if differences:
        raise IncompatibleCheckpointError(
            f"the checkpoint in {where} was written with another model config; use a new "
            "--workdir or the matching config. Differences: " + "; ".join(differences)
        )


def _normalise(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value

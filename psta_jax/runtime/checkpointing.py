"""The one module that talks to Orbax: the train states of a workdir, and which one is best.

A workdir holds:
  checkpoints/<step>/   train states, kept by one Orbax CheckpointManager whose preservation
                        policy keeps the latest `max_to_keep` steps plus the step with the
                        best mAP (which may be older than all of them)
  config.json           the run's config (`runtime.workdir`)
  damaged_checkpoints/<step>/   steps that no longer restored when training resumed (kept)
Each step folder holds the items `model` (model variables: params and BatchNorm statistics),
`opt` (optimizer state and step), `meta` (JSON) and, for a step that was evaluated,
Orbax's `metrics` (JSON: mAP, rank-k), which `best_step` ranks. A step is written at most
once: when it is both evaluated and checkpointed, its metrics go into that one save.

A converted release checkpoint (psta_jax.interop.convert) has the same layout with step 0
and no `opt`, plus its config.json.

Naming a checkpoint to evaluate (`resolve_model_checkpoint`): a workdir means its best step
(its latest when no step was evaluated), a `checkpoints/` folder its latest step, and a step
folder (`checkpoints/120`) that step. Evaluation restores `model` only.

Every process calls save/restore (Orbax coordinates multi-host saves on a shared directory).

Failures are `UserError`s with one message each: a checkpoint whose arrays differ from the
model (`IncompatibleCheckpointError`, told apart by the layout in Orbax's metadata), one whose
files are missing or unreadable (`DamagedCheckpointError`; resume falls back to the newest
step that restores), and a failed save (`CheckpointSaveError`: the step, the folder, its free
space; an asynchronous failure is raised by `raise_if_save_failed` at the next step).
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers

from psta_jax.runtime.errors import UserError
from psta_jax.runtime.workdir import IncompatibleCheckpointError, absolute_path

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # where resume moves steps that no longer restore
# OS errors a save reports in its text (TensorStore and Orbax wrap them in ValueError).
_SAVE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)
BEST_METRIC = "mAP"  # higher is better


class DamagedCheckpointError(UserError):
    """A checkpoint's files are missing or unreadable although its layout fits this config."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """No checkpoint where one was named (evaluate mode, inspection)."""


class CheckpointSaveError(UserError, OSError):
    """Writing a checkpoint failed (disk full, permissions, ...)."""


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _best_metric(metrics: Mapping[str, float]) -> float:
    return float(metrics[BEST_METRIC])


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {
        "model": ocp.StandardCheckpointHandler(),
        "opt": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


def _manager(directory: epath.Path, *, read_only: bool = False, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            read_only=read_only,
            create=not read_only,
            # What Orbax sets (with a warning) for a read-only manager.
            save_interval_steps=0 if read_only else 1,
            best_fn=_best_metric,
            best_mode="max",
            **options,
        ),
        item_handlers=_handlers(),
    )


def _retention(max_to_keep: int) -> checkpoint_managers.PreservationPolicy:
    """Keep the latest `max_to_keep` steps and the one evaluated step with the best mAP."""
    return checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=max_to_keep),
            checkpoint_managers.BestN(
                get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )


def _log_unfinished_saves(directory: epath.Path) -> None:
    """Logs the `<step>.orbax-checkpoint-tmp-*` folders an interrupted save left behind;
    the manager (cleanup_tmp_directories) removes them. Committed steps are never touched."""
    if jax.process_index() != 0:
        return
    leftovers = sorted(p.get().name for p in ocp.utils.tmp_checkpoints(directory))
    if leftovers:
        logging.warning(
            "removing %d unfinished checkpoint folder(s) an interrupted save left in %s: %s",
            len(leftovers),
            directory,
            ", ".join(leftovers),
        )


class Checkpoints:
    """The train states of one workdir: the latest `max_to_keep` and the best by mAP."""

    def __init__(
        self, workdir: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ):
        self.workdir = absolute_path(workdir)
        self.directory = self.workdir / CHECKPOINT_DIR
        _log_unfinished_saves(self.directory)
        self._manager = _manager(
            self.directory,
            preservation_policy=_retention(max_to_keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        # Metrics of the steps saved by this process: an asynchronous save may not have
        # written them to disk yet when the next evaluation asks for the best mAP.
        self._saved_metrics: dict[int, dict] = {}
        self._saving_step: int | None = None  # the step of the latest save call
        self._failed = False  # a save failed (reported once, by CheckpointSaveError)

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The evaluated step with the highest mAP; None when no kept step was evaluated."""
        return self._manager.best_step()  # ranks only steps saved with metrics

    def metrics(self, step: int) -> dict | None:
        """The evaluation metrics saved with `step`, or None (not evaluated)."""
        if step in self._saved_metrics:
            return self._saved_metrics[step]
        return self._manager.metrics(step)

    def improves_best(self, metrics: Mapping[str, float]) -> bool:
        """Whether `metrics` beat the best kept step's mAP (True when none was evaluated)."""
        best = self.best_step()
        return best is None or _best_metric(metrics) > _best_metric(self.metrics(best))

    def save(
        self,
        step: int,
        items: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Saves `items` ({'model': ..., 'opt': ...}) as the checkpoint of `step`, once.

        `metrics` (with 'mAP') rank the step for `best_step`; without them the step is kept
        only while it is among the latest `max_to_keep`. Returns whether it was written
        (False when `step` is already saved).
        """
        if step in self._manager.all_steps():
            return False
        # Orbax waits for the previous save anyway; waiting here names the step that failed.
        self.wait()
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self._saving_step = step
        try:
            saved = self._manager.save(
                step, args=_save_args(items, {"step": step, **(meta or {})}), metrics=metrics
            )
        except Exception as error:  # Orbax reports I/O failures as ValueError, OSError, ...
            raise self._save_error(step, error) from error
        if saved and metrics is not None:
            self._saved_metrics[step] = metrics
        return saved

    def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
        """The one message for a failed save: the step, the folder and its free space."""
        self._failed = True
        folder = os.fspath(self.directory)
        try:
            existing = next(p for p in (folder, *_parents(folder)) if os.path.isdir(p))
            free = f"{shutil.disk_usage(existing).free / 2**20:.1f} MiB free there"
        except (OSError, StopIteration):
            free = "free space unknown"
        kept = [s for s in self._manager.all_steps() if s != step]
        last = f"step {max(kept)} is the last good checkpoint" if kept else "no step was saved"
        text = " ".join(str(error).split())
        reasons = [os.strerror(code) for code in _SAVE_ERRNOS if os.strerror(code) in text]
        detail = (reasons[0] + "; " if reasons else "") + text[:300]
        return CheckpointSaveError(
            f"cannot save the checkpoint of step {step} to {folder} ({free}): {detail}. "
            f"Training stopped; {last} and stays as it was. Free disk space or fix the "
            "folder's permissions, then run the same command to resume."
        )

    def raise_if_save_failed(self) -> None:
        """Raises `CheckpointSaveError` if a finished asynchronous save failed (cheap)."""
        if self._failed or self._saving_step is None or self._manager.is_saving_in_progress():
            return
        self.wait()

    def restore(self, step: int, targets: Mapping[str, Any]) -> dict:
        """The items of `step` shaped like `targets` (e.g. {'model': ..., 'opt': ...})."""
        return _restore_items(self._manager, step, targets)

    def restore_latest(self, targets: Mapping[str, Any]) -> tuple[int, dict] | None:
        """(step, items) of the newest checkpoint that restores, shaped like `targets`.

        A damaged step (files missing or unreadable) is skipped with a warning and, once an
        older step restored, moved to `<workdir>/damaged_checkpoints/<step>` (kept, so that
        training can write that step again). None when there is no checkpoint. Raises
        `IncompatibleCheckpointError` for a checkpoint of another model, and
        `DamagedCheckpointError` when no step restores.
        """
        damaged: dict[int, str] = {}
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                items = self.restore(step, targets)
            except DamagedCheckpointError as error:
                logging.warning("%s; trying the step before it", error)
                damaged[step] = str(error)
            else:
                if damaged:
                    self._set_aside(sorted(damaged))
                    logging.warning(
                        "resuming from step %d: damaged step(s) %s moved to %s (not deleted)",
                        step,
                        ", ".join(str(s) for s in sorted(damaged)),
                        self.workdir / DAMAGED_DIR,
                    )
                return step, items
            _finalize_abandoned_reads()
        if damaged:
            raise DamagedCheckpointError(
                f"no checkpoint in {self.directory} restores; every step is damaged: "
                + " | ".join(damaged.values())
                + f". Move {self.directory} elsewhere to train from scratch."
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged step folders out of the checkpoint folder (process 0), keeping them."""
        from psta_jax.runtime import distributed

        if jax.process_index() == 0:
            target = self.workdir / DAMAGED_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = target / str(step)
                suffix = 1
                while destination.exists():  # an earlier resume set this step aside already
                    destination = target / f"{step}.{suffix}"
                    suffix += 1
                (self.directory / str(step)).rename(destination)
        distributed.barrier("damaged_checkpoints_moved")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending (asynchronous) saves are on disk; raises if one failed."""
        if self._failed:
            return  # Reported once already; Orbax would raise the same error again.
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._save_error(self._saving_step, error) from error

    def close(self) -> None:
        try:
            self._manager.close()  # waits for pending saves first
        except Exception as error:
            if not self._failed:
                raise self._save_error(self._saving_step, error) from error
            # Already reported once as CheckpointSaveError; Orbax raises it again here.

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _save_args(items: Mapping[str, Any], meta: Mapping[str, Any]) -> ocp.args.Composite:
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    return ocp.args.Composite(meta=ocp.args.JsonSave(dict(meta)), **args)


def _restore_items(manager: ocp.CheckpointManager, step: int, targets: Mapping[str, Any]) -> dict:
    """Restores `targets`' items of `step`; a failure is classified by the saved layout.

    When the arrays recorded in the step's metadata differ from `targets` (names or
    shapes), the checkpoint belongs to another model: `IncompatibleCheckpointError`. When
    they match (or cannot be read), its files are damaged: `DamagedCheckpointError`.
    """
    args = {name: ocp.args.StandardRestore(_abstract(t)) for name, t in targets.items()}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as error:  # TensorStore, Orbax and the OS raise many types here.
        folder = manager.directory / str(step)
        detail = " ".join(str(error).split())[:300]
        differences = _layout_differences(manager, step, targets)
        if differences:
            failure: UserError = IncompatibleCheckpointError(
                f"checkpoint {folder} does not fit this model/optimizer: the arrays it holds "
                f"differ from what this config builds ({'; '.join(differences[:5])}). Use a "
                "new --workdir, or the config it was written with (its config.json)."
            )
        else:
            failure = DamagedCheckpointError(
                f"checkpoint step {step} in {manager.directory} is damaged (missing or "
                f"unreadable files): {detail}"
            )
    else:
        return {name: restored[name] for name in targets}
    # Raised without its cause (the message holds it): the cause's frames would keep the
    # failed reads alive, and their noise would surface at exit.
    _finalize_abandoned_reads()
    raise failure


def _finalize_abandoned_reads() -> None:
    """Collects the array reads a failed restore left pending, without their noise.

    Otherwise each prints 'Exception ignored in: <coroutine ...>' with a traceback when it is
    garbage collected, often at interpreter exit, long after the failure was handled.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _saved_layout(
    manager: ocp.CheckpointManager, step: int, name: str
) -> dict[tuple[str, ...], tuple[int, ...]] | None:
    """{array path: shape} of item `name` of `step`, from Orbax's metadata; None when it
    cannot be read (then the files are damaged, not from another model)."""
    try:
        item = manager.metadata(step).item_metadata[name]
        flat = jax.tree_util.tree_flatten_with_path(item.tree)[0]
    except Exception:  # missing or unreadable metadata files: Orbax raises many types
        return None
    return {tuple(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _layout_differences(
    manager: ocp.CheckpointManager, step: int, targets: Mapping[str, Any]
) -> list[str]:
    """How the arrays saved in `step` differ from `targets` (empty: they match, or the saved
    layout cannot be read, which points at damage rather than another model)."""
    differences = []
    for name, target in targets.items():
        saved = _saved_layout(manager, step, name)
        if saved is None:
            continue
        flat = jax.tree_util.tree_flatten_with_path(target)[0]
        wanted = {tuple(_key_name(k) for k in path): tuple(np.shape(v)) for path, v in flat}
        for path in sorted(set(saved) | set(wanted)):
            where = f"{name}/{'/'.join(path)}"
            if path not in saved:
                differences.append(f"{where}: not in the checkpoint")
            elif path not in wanted:
                differences.append(f"{where}: not in this model")
            elif saved[path] != wanted[path]:
                differences.append(f"{where}: shape {saved[path]} saved, {wanted[path]} now")
    return differences


def _parents(path: str) -> list[str]:
    """The parent folders of `path`, nearest first."""
    parents = []
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        parents.append(path)
    return parents


def _step_dirs(directory: epath.Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def resolve_model_checkpoint(path: str | os.PathLike) -> tuple[epath.Path, int]:
    """(folder of steps, step) to evaluate for `path`:

    - a workdir or converted checkpoint (holds `checkpoints/`): its best step, else latest;
    - a folder of steps (`checkpoints/`): its latest step;
    - one step folder (`checkpoints/120`): that step.
    """
    path = absolute_path(path)
    if (path / CHECKPOINT_DIR).is_dir() and _step_dirs(path / CHECKPOINT_DIR):
        directory = path / CHECKPOINT_DIR
        manager = _manager(directory, read_only=True)
        try:
            best = manager.best_step()
            step = best if best is not None else manager.latest_step()
        finally:
            manager.close()
        if step is not None:
            return directory, step
    if path.is_dir() and _step_dirs(path):
        return path, _step_dirs(path)[-1]
    if path.name.isdigit() and path.is_dir():
        return path.parent, int(path.name)
    raise CheckpointNotFoundError(
        f"no checkpoint found at {path}: expected a workdir (holding {CHECKPOINT_DIR}/), "
        f"a {CHECKPOINT_DIR}/ folder, or one step folder inside it"
    )


def restore_model_variables(path: str | os.PathLike, target: Any) -> tuple[int, Any]:
    """Restores only the model variables of the checkpoint `path` names (no optimizer state).

    `target` is a pytree shaped like the model variables. Works on training checkpoints
    and on converted release checkpoints alike; see `resolve_model_checkpoint`.
    """
    directory, step = resolve_model_checkpoint(path)
    manager = _manager(directory, read_only=True)
    try:
        return step, _restore_items(manager, step, {"model": target})["model"]
    finally:
        manager.close()

"""A run's workdir on disk: its config.json, its results, which run made a checkpoint.

    <workdir>/config.json          the run's config plus `num_classes` (written by process 0)
    <workdir>/checkpoints/<step>/  train states (`runtime.checkpointing`)
    <workdir>/metrics.jsonl        every logged scalar (`training.metric_writers`)
    <workdir>/results.json         the final evaluation of a training run
    <workdir>/eval_results.json    the evaluation of `--config.mode=evaluate`
    <workdir>/.training.lock       held by the one training that runs in the workdir

This module is the one reader and writer of config.json; a converted release checkpoint
(`python -m psta_jax.interop.convert`) holds one too. A checkpoint's identity (a hash of
config.json and the step) tells embedding files of different models apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
from etils import epath

from psta_jax.runtime.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "eval_results.json"
RESULT_FILES = (RESULTS_FILE, EVAL_RESULTS_FILE)
LOCK_FILE = ".training.lock"

# Model fields that change only how the arrays are computed, not which arrays exist.
_COMPUTE_ONLY_FIELDS = ("dtype", "remat")


class WorkdirError(UserError, OSError):
    """The workdir cannot be created or written."""


class WorkdirBusyError(WorkdirError):
    """Another training holds the workdir."""


class RunConfigError(UserError, FileNotFoundError):
    """No readable config.json where a trained run or checkpoint was named."""


class IncompatibleCheckpointError(UserError, ValueError):
    """A workdir or checkpoint was written by a run whose model differs from this config."""


def absolute_path(path: str | os.PathLike) -> epath.Path:
    """Local paths made absolute (Orbax needs them); URLs (gs://...) as given."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def check_writable(workdir: str | os.PathLike) -> None:
    """Creates `workdir` and proves it writable before anything long starts."""
    workdir = os.fspath(workdir)
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


@contextlib.contextmanager
def training_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds `<workdir>/.training.lock` while one training runs there.

    A second training in the same workdir would delete the first one's in-flight checkpoint
    and write beside it, so it stops at once with `WorkdirBusyError`, naming the process that
    holds the lock. The lock is an advisory `flock`: the operating system releases it when its
    holder exits, killed or not, so a leftover file never blocks a new run. Object-store
    workdirs (gs://...) have no such lock; there one run per workdir is the user's rule.
    """
    workdir = os.fspath(workdir)
    if "://" in workdir:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    try:
        handle = open(path, "a+")  # never truncates what a holder wrote
    except OSError as error:
        raise WorkdirError(
            f"cannot create {path}: {error.strerror or error}. Choose a writable --workdir."
        ) from error
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WorkdirBusyError(
                f"another training is running in the workdir {workdir}: {holder} holds "
                f"{path}. Wait for it to finish or stop it, or choose another --workdir."
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        handle.write(
            f"process {os.getpid()} on host {socket.gethostname()} "
            f"({os.path.basename(sys.argv[0]) or 'python'}, started {started})\n"
        )
        handle.flush()
        try:
            yield
        finally:  # an empty file: the workdir looks the same before and after a run
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run's saved config.json: the config (without `num_classes`), the classifier width,
    the file it came from and its exact JSON payload (what `config_hash` hashes)."""

    config: ml_collections.ConfigDict
    num_classes: int
    path: epath.Path
    payload: dict

    @property
    def folder(self) -> epath.Path:
        return self.path.parent


def write_run_config(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    num_classes: int,
    **extra: Any,
) -> None:
    """Saves `config`, `num_classes` and `extra` facts as the workdir's config.json (process 0
    calls it)."""
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.loads(config.to_json_best_effort())
    payload.update(extra, num_classes=num_classes)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def _parse(path: epath.Path) -> RunConfig:
    try:
        payload = json.loads(path.read_text())
    except ValueError as error:
        raise RunConfigError(
            f"{path} is not valid JSON ({error}); it should be the run's config written by "
            "psta_jax.main. Restore it, or copy it from a run with the same config."
        ) from error
    num_classes = payload.get("num_classes") if isinstance(payload, dict) else None
    if not isinstance(num_classes, int) or "model" not in payload:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise RunConfigError(
            f"{path}: expected a run's config with 'model' and an integer 'num_classes', got {keys}"
        )
    config = ml_collections.ConfigDict({k: v for k, v in payload.items() if k != "num_classes"})
    return RunConfig(config=config, num_classes=num_classes, path=path, payload=payload)


def find_run_config(path: str | os.PathLike, *, levels_up: int = 2) -> RunConfig | None:
    """The config.json of the run that `path` belongs to, or None when there is none.

    `path` may be a workdir, its `checkpoints/` folder or one step folder: the file is looked
    for there and up to `levels_up` levels up (0: the workdir's own only). A config.json that
    exists but does not parse is a `RunConfigError`.
    """
    path = epath.Path(path)
    for candidate in [path, *path.parents][: levels_up + 1]:
        file = candidate / CONFIG_FILE
        if file.exists():
            return _parse(file)
    return None


def load_run_config(path: str | os.PathLike) -> RunConfig:
    """`find_run_config`, or a `RunConfigError` that says where it looked."""
    found = find_run_config(path)
    if found is None:
        raise RunConfigError(
            f"no {CONFIG_FILE} at {path} or two levels above it: expected a training workdir "
            "written by psta_jax.main (config.json beside checkpoints/) or a release checkpoint "
            "converted by psta_jax.interop.convert"
        )
    return found


def check_compatible(saved: RunConfig | None, model: Mapping[str, Any], num_classes: int) -> None:
    """Raises `IncompatibleCheckpointError` naming each field where `saved`'s model differs."""
    if saved is None:
        return
    old_model = saved.payload.get("model") or {}
    differences = [
        f"model.{key}: checkpoint {old_model.get(key)!r}, now {model.get(key)!r}"
        for key in sorted(set(old_model) | set(model))
        if key not in _COMPUTE_ONLY_FIELDS and _plain(old_model.get(key)) != _plain(model.get(key))
    ]
    if saved.num_classes != num_classes:
        differences.append(f"num_classes: checkpoint {saved.num_classes}, now {num_classes}")
    if differences:
        raise IncompatibleCheckpointError(
            f"the checkpoint in {saved.folder} was written with another model config; use a new "
            "--workdir or the matching config. Differences: " + "; ".join(differences)
        )


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_hash(payload: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of a saved config (canonical JSON)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class CheckpointIdentity:
    """Which trained model made a result: the hash of its config.json and its step."""

    config_hash: str
    step: int
    path: str = ""

    def same_model(self, other: CheckpointIdentity) -> bool:
        return (self.config_hash, self.step) == (other.config_hash, other.step)

    def describe(self) -> str:
        return f"config {self.config_hash} step {self.step}" + (
            f" ({self.path})" if self.path else ""
        )


def read_results(workdir: str | os.PathLike) -> dict | None:
    """The workdir's final metrics (results.json, else eval_results.json), if any."""
    for name in RESULT_FILES:
        path = epath.Path(workdir) / name
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError as error:
                raise RunConfigError(f"{path} is not valid JSON ({error})") from error
    return None


def write_results(workdir: str | os.PathLike, name: str, metrics: Mapping[str, Any]) -> None:
    """Writes `metrics` as `<workdir>/<name>` (process 0 calls it), replacing it atomically."""
    folder = epath.Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(metrics), indent=2)
    if "://" in os.fspath(folder):  # object stores write whole objects
        (folder / name).write_text(text)
        return
    partial = folder / f".{name}.partial"
    partial.write_text(text)
    os.replace(partial, folder / name)

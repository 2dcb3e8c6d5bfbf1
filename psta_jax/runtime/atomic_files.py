"""Outputs that appear whole or not at all, and stop signals taken at safe points.

A command's output file is written under a temporary name beside its target and renamed onto
it (`os.replace`, atomic within one file system) once complete, so a failure (a full or
read-only disk, a bug, Ctrl-C) leaves the previous output byte-identical and removes the
temporary. Several outputs of one folder are built in a staging folder inside it and moved
into place at the end (`staging_folder`, `move_into_place`).

    with atomic_files.deferred_stop_signals():        # around a command's whole body
        ...
        atomic_files.raise_if_stopped()               # between units of work
        with atomic_files.replacing(path, "the embeddings file") as temporary:
            write(temporary)                          # renamed onto `path` on success

SIGINT and SIGTERM that arrive inside `deferred_stop_signals` are recorded, not raised where
they land: a KeyboardInterrupt raised in a library's `__del__` (TensorFlow's function
collector) is printed and swallowed, and one raised while tf.data threads run can crash the
interpreter at exit. `raise_if_stopped` raises them at safe points (KeyboardInterrupt, or
`errors.Terminated` for SIGTERM), and `replacing` calls it before the rename, so a stopped
command never replaces an output. A second Ctrl-C raises at once.

Failures to write are an `OutputError` naming the output, the reason and the free space.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator

from psta_jax.runtime import errors

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # stop signals recorded by the active deferred_stop_signals


class OutputError(errors.UserError):
    """An output cannot be written where it was asked for: a folder where a file is expected
    (or the reverse), a full or read-only disk, missing permissions."""


# ----------------------------------------------------------------------------- stop signals


def _record(signum: int, frame) -> None:
    del frame
    if signum == signal.SIGINT and signal.SIGINT in _received:
        raise KeyboardInterrupt  # the second Ctrl-C: the user insists
    _received.append(signum)


@contextlib.contextmanager
def deferred_stop_signals() -> Iterator[None]:
    """Records SIGINT / SIGTERM while the block runs (see the module docstring); a signal
    recorded but not yet raised when the block ends is raised then. Outside the main thread
    (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in _STOP_SIGNALS}
    _received.clear()
    for number in _STOP_SIGNALS:
        signal.signal(number, _record)
    try:
        yield
        raise_if_stopped()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _received.clear()


def stop_requested() -> bool:
    """Whether a stop signal was recorded and not yet raised."""
    return bool(_received)


def raise_if_stopped() -> None:
    """Raises the first recorded stop signal: KeyboardInterrupt for SIGINT,
    `errors.Terminated` for SIGTERM; nothing when none was recorded."""
    if not _received:
        return
    signum = _received[0]
    _received.clear()  # raised once: a caller that catches it goes on
    if signum == signal.SIGTERM:
        raise errors.Terminated(
            "stopped by SIGTERM; outputs that were not complete were not written (earlier "
            "files at their paths are unchanged)"
        )
    raise KeyboardInterrupt


# ----------------------------------------------------------------------------- failures


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def _is_write_failure(error: BaseException) -> bool:
    """An OSError (not an expected error of ours), or a library's error that reports a full
    or read-only disk in its text (TensorFlow's ResourceExhaustedError)."""
    if isinstance(error, errors.UserError):
        return False
    codes = errors.FULL_DISK_ERRNOS + errors.NOT_WRITABLE_ERRNOS
    return isinstance(error, OSError) or errors.find_os_error(error, codes) is not None


def output_error(what: str, path: str | os.PathLike, error: BaseException) -> OutputError:
    """The `OutputError` of a failed write of `what` at `path`: the reason, the free space and
    what to do (the caller raises it `from error`)."""
    path = os.fspath(path)
    hint = "choose another --out"
    if errors.find_os_error(error, errors.FULL_DISK_ERRNOS):
        hint = "free some space or choose another --out on a disk with room"
    elif errors.find_os_error(error, errors.NOT_WRITABLE_ERRNOS):
        hint = "choose a writable --out (a read-only disk or a folder you may not write to)"
    return OutputError(
        f"cannot write {what} {path}: {_reason(error)} ({errors.free_space(path)} there); "
        f"{hint}. Nothing was replaced: earlier output there is unchanged."
    )


# ----------------------------------------------------------------------------- targets


def _check_ancestors(path: pathlib.Path, what: str) -> pathlib.Path:
    """The nearest existing folder above `path`; an OutputError when that is a file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"cannot write {what} {path}: {parent} is a file, not a folder; choose "
                    "another --out"
                )
            return parent
    return pathlib.Path(path.anchor or ".")


def _probe(folder: pathlib.Path, what: str, target: pathlib.Path) -> None:
    """Proves the existing `folder` writable with a temporary file (nothing is left)."""
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(descriptor)
        os.remove(probe)
    except OSError as error:
        raise output_error(what, target, error) from error


def prepare_file_target(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Checks, before long work starts, that `path` can receive a file: not an existing
    folder, under a writable folder (the nearest existing one is probed; nothing is created).
    Returns it as a Path."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OutputError(
            f"{what} {path} is an existing folder; expected a file path (e.g. {path}/out"
            f"{path.suffix or '.npz'}, or another name)"
        )
    _probe(_check_ancestors(path, what), what, path)
    return path


def prepare_folder_target(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Checks, before long work starts, that `path` can be an output folder: not an existing
    file, writable (or creatable under a writable folder; nothing is created). Returns it as
    a Path."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"{what} {path} is an existing file; expected a folder (a new or existing one)"
        )
    _probe(path if path.is_dir() else _check_ancestors(path, what), what, path)
    return path


# ----------------------------------------------------------------------------- writing


def _new_name(folder: pathlib.Path, stem: str) -> pathlib.Path:
    """A hidden name in `folder` that no file has (created by the caller with O_EXCL or
    mkdir, so it gets the permissions a plain open() / mkdir() gives, unlike mkstemp's 0600)."""
    return folder / f".{stem}.{secrets.token_hex(6)}.tmp"


def _remove(path: pathlib.Path) -> None:
    """Removes a file or a folder tree; a missing one is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def replacing(path: str | os.PathLike, what: str) -> Iterator[pathlib.Path]:
    """Yields a temporary file path beside `path` for the block to write; when the block
    succeeds (and no stop signal is pending) it is renamed onto `path`. On any failure the
    temporary is removed and `path` is left as it was; an OSError becomes an `OutputError`."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is an existing folder; expected a file path")
    _check_ancestors(path, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _new_name(path.parent, path.name)
        temporary.open("xb").close()
    except OSError as error:
        raise output_error(what, path, error) from error
    try:
        yield temporary
        raise_if_stopped()
        os.replace(temporary, path)
    except Exception as error:
        if not _is_write_failure(error):
            raise
        raise output_error(what, path, error) from error
    finally:
        _remove(temporary)


@contextlib.contextmanager
def staging_folder(out_dir: str | os.PathLike, what: str) -> Iterator[pathlib.Path]:
    """A new hidden folder inside `out_dir` (created if needed) where outputs are built
    before `move_into_place` puts them in `out_dir`; removed when the block ends, whatever
    happens. An OSError in the block (or a library's report of a full or read-only disk)
    becomes an `OutputError` naming `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = _new_name(out_dir, "staging")
        stage.mkdir()
    except OSError as error:
        raise output_error(what, out_dir, error) from error
    try:
        yield stage
    except Exception as error:
        if not _is_write_failure(error):
            raise
        raise output_error(what, out_dir, error) from error
    finally:
        _remove(stage)


def move_into_place(staged: pathlib.Path, target: pathlib.Path) -> None:
    """Renames `staged` (a file or a folder, on `target`'s file system) onto `target`. An
    existing folder at `target` is renamed aside first and deleted once `staged` is in place
    (put back if the rename fails)."""
    replaces_folder = target.is_dir() and not target.is_symlink()
    if not replaces_folder and not (staged.is_dir() and target.exists()):
        os.replace(staged, target)
        return
    aside = target.with_name(f".{target.name}.replaced.tmp")
    _remove(aside)
    os.replace(target, aside)
    try:
        os.replace(staged, target)
    except OSError:
        os.replace(aside, target)
        raise
    _remove(aside)


def remove_output(path: pathlib.Path) -> None:
    """Removes an earlier output (a file or a folder) a command wrote and no longer writes."""
    _remove(path)

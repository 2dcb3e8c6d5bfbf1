"""Expected failures: what every command reports as one message instead of a traceback.

An expected failure (bad raw data, an incompatible or damaged checkpoint, a config check, a
full disk, ...) raises a `UserError` whose message says what was expected, where, and how to
fix it. `psta_jax.runtime.cli` prints that message and exits non-zero without a traceback;
any other exception is a bug and keeps its traceback; `--verbose` shows the traceback of an
expected failure too. This module imports nothing heavy, so raising costs nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from typing import TextIO

EXPECTED_FAILURE_EXIT_CODE = 1
USAGE_EXIT_CODE = 2  # a flag that does not parse or is missing, as argparse and getopt
INTERRUPTED_EXIT_CODE = 130  # what shells report for Ctrl-C
TERMINATED_EXIT_CODE = 143  # what shells report for SIGTERM (128 + 15)


class UserError(Exception):
    """An expected failure caused by the input or the environment, not by a bug.

    The message is the whole story a user reads: what was expected, where (a path, a config
    field, a step) and how to fix it.
    """

    exit_code: int = EXPECTED_FAILURE_EXIT_CODE


class ConfigError(UserError, ValueError):
    """A config value that cannot work (names the field, the value and what is allowed)."""


class FlagError(ConfigError):
    """A command-line flag whose value cannot be used (a --config file that does not load):
    a usage error, like a flag that does not parse."""

    exit_code = USAGE_EXIT_CODE


class Terminated(UserError):
    """The process was asked to stop (SIGTERM) and stopped at a safe point, leaving no partial
    output behind."""

    exit_code = TERMINATED_EXIT_CODE


def describe(error: BaseException) -> str:
    """The text printed for an expected error: its message, then its direct cause in one line."""
    text = f"error: {error}".rstrip()
    cause = error.__cause__
    if cause is not None and not isinstance(cause, UserError):
        detail = " ".join(str(cause).split())
        if len(detail) > 300:
            detail = detail[:297] + "..."
        text += f"\n  cause: {type(cause).__name__}: {detail}"
    return text


def report(error: BaseException, stream: TextIO | None = None) -> None:
    """Prints `describe(error)` and a hint about --verbose to `stream` (default stderr)."""
    stream = sys.stderr if stream is None else stream
    stream.write(describe(error) + "\n(run with --verbose for the full traceback)\n")
    stream.flush()


# What the OS reports when a write fails for lack of room, or because the place is not
# writable (a read-only mount, missing permissions).
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def find_os_error(error: BaseException, codes: tuple[int, ...]) -> tuple[int, BaseException] | None:
    """(code, exception) for the first of `codes` that `error`, or an exception it was raised
    from or while handling, reports; None if none does.

    An `OSError` reports its errno; any other exception counts when its message holds the
    OS's text for the code (TensorFlow reports a full disk as `ResourceExhaustedError: <file>;
    No space left on device`, and TFDS wraps that in a `RuntimeError`).
    """
    pending: list[BaseException | None] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in codes:
            return current.errno, current
        text = str(current)
        for code in codes:
            if os.strerror(code) in text:
                return code, current
        pending += [current.__cause__, current.__context__]
    return None


def free_space(path: str | os.PathLike) -> str:
    """'<n> MiB free' on the file system of `path` (or of its nearest existing parent)."""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"

"""Expected failures: what every command reports as one message instead of a traceback.

An expected failure (bad raw data, an incompatible or damaged checkpoint, a config check, a
full disk, ...) raises a `UserError` whose message says what was expected, where, and how to
fix it. `psta_jax.runtime.cli` prints that message and exits non-zero without a traceback;
any other exception is a bug and keeps its traceback; `--verbose` shows the traceback of an
expected failure too. This module imports nothing heavy, so raising costs nothing.
"""

from __future__ import annotations

import sys
from typing import TextIO

EXPECTED_FAILURE_EXIT_CODE = 1
USAGE_EXIT_CODE = 2  # a flag that does not parse or is missing, as argparse and getopt
INTERRUPTED_EXIT_CODE = 130  # what shells report for Ctrl-C


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

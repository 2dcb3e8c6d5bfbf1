"""The error convention of every command-line tool: expected failures end with one message.

An expected failure (bad raw data, an incompatible or damaged checkpoint, a config check, a
full disk, ...) raises a `UserError` whose message says what was expected, where, and how to
fix it. The CLI wrappers below print that message to stderr and exit non-zero without a
traceback; any other exception is a bug and keeps its traceback. `--verbose` (or absl's
`-v 1`) shows the full traceback, with the chain of causes, for expected failures too.

    app.run(errors.absl_main(main), flags_parser=errors.parse_absl_flags)   # absl CLIs
    sys.exit(errors.run_cli(main, argv, verbose=v))   # argparse CLIs (launch, synthetic)

This module imports only absl, so raising a `UserError` costs nothing at import time.
"""

from __future__ import annotations

import functools
import logging as python_logging
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from absl import flags, logging

INTERRUPTED_EXIT_CODE = 130  # What shells report for Ctrl-C.

if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool(
        "verbose", False, "On an expected error, show the full traceback (with its causes)."
    )


class UserError(Exception):
    """An expected failure caused by the input or the environment, not by a bug.

    The message is the whole story a user reads: what was expected, where (a path, a config
    field, a step) and how to fix it.
    """

    exit_code: int = 1


class ConfigError(UserError, ValueError):
    """A config value that cannot work (names the field, the value and what is allowed)."""


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


def _absl_verbose() -> bool:
    if flags.FLAGS.is_parsed() and flags.FLAGS["verbose"].value:
        return True
    return logging.get_verbosity() >= logging.DEBUG


def _run(main: Callable[[], Any], verbose: bool | Callable[[], bool]) -> Any:
    """Calls `main()`; an expected error or Ctrl-C becomes a message and SystemExit."""
    try:
        return main()
    except UserError as error:
        if verbose() if callable(verbose) else verbose:
            traceback.print_exc()
        else:
            # Work the failure abandoned (pending array reads or writes) ends while the
            # process exits; its log records and "Exception ignored in ..." tracebacks would
            # bury the message.
            python_logging.disable(python_logging.ERROR)
            sys.unraisablehook = lambda unraisable: None
            report(error)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None


def absl_main(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Wraps an absl `main(argv)` for `app.run` with the convention above."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> Any:
        return _run(lambda: main(argv), _absl_verbose)

    return wrapped


def _without_traceback(message: str) -> str:
    """A flag error's text with any embedded traceback cut down to its last line."""
    lines = message.splitlines()
    if not any(line.strip().startswith("Traceback (most recent call last)") for line in lines):
        return message
    start = next(i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line)
    head = [line for line in lines[:start] if line.strip()]
    tail = [line.strip() for line in lines[start:] if line.strip()]
    return "\n".join([*head, f"  {tail[-1]}"])


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (`app.run(..., flags_parser=parse_absl_flags)`) with one message.

    A config file that fails to load, or a `--config.x.y=` override of a field the config
    does not have, ends with the reason and exit code 1 instead of a traceback (unless
    --verbose is among the arguments).
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        if "--verbose" in argv:
            raise
        message = _without_traceback(str(error))
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # config overrides
        if "--verbose" in argv:
            raise
        text = str(error.args[0]) if error.args else str(error)
        text = " ".join(text.replace("\\n", " ").replace("\\'", "'").split())
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        message = f"a --config.* override does not fit the config ({type(error).__name__}: {text})"
    sys.stderr.write(f"error: {message}\nPass --helpshort or --helpfull to see help on flags.\n")
    raise SystemExit(1)


def run_cli(main: Callable[[], Any], *, verbose: bool = False) -> Any:
    """Runs an argparse CLI's `main()` with the convention above; returns what it returns."""
    return _run(main, verbose)

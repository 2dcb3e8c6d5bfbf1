"""A command run in the test's process, as a user's shell would see it."""

import logging
import sys
from collections.abc import Callable


def exit_code_and_stderr(run: Callable[[], object], capsys, monkeypatch) -> tuple[int, str]:
    """Calls `run` (a command's entry point); returns its exit code (0 when it returns) and
    what it wrote to stderr."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored afterwards
    try:
        run()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    finally:
        logging.disable(logging.NOTSET)  # cli.run silences logging after an expected error
    return code, capsys.readouterr().err

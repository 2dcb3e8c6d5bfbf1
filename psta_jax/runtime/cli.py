"""How every command line starts: one flag style, the CPU set up first, quiet logs, and one
error convention.

    main = cli.Command(name="psta-embed", summary="...", define_flags=_define, run=_run)
    if __name__ == "__main__":
        main.entry()

`Command` is the whole contract of a command module. Its flags are absl flags (`--name=value`,
`--flag` / `--noflag` for switches, `--flagfile=FILE`) on a `FlagValues` of its own, so
several commands can run in one process (tests). `run(command, argv)`:

1. sets up the CPU before JAX or TensorFlow start (`runtime.xla_cpu`);
2. parses the flags: a flag that does not parse, an unknown or missing one ends with one
   message and exit code 2; `--help` prints the flags;
3. keeps library chatter out of the log (TensorFlow's C++ notices, TFDS progress bars,
   JAX's backend probes, Orbax's and TFDS's INFO records, deprecation warnings from
   libraries, the noise of abandoned array writes); `--verbose` shows all of it;
4. keeps TensorFlow (tf.data) off accelerators: they belong to JAX;
5. runs the command: a `UserError` ends with its message and exit code 1 (`--verbose`: the
   traceback too), Ctrl-C with "interrupted" and 130; any other exception is a bug and keeps
   its traceback.
"""

from __future__ import annotations

import dataclasses
import logging as python_logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags, logging

from psta_jax.runtime import errors, xla_cpu

# Library modules whose INFO records are chatter for a user (warnings and errors still show).
_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/tensorflow/", "/etils/")
# Libraries whose failed asynchronous work (abandoned checkpoint writes) logs tracebacks that
# would bury the one message of runtime.errors.
_NO_TRACEBACK = (*_CHATTY, "/asyncio/")
_LIBRARY_WARNINGS = r"(tensorflow|tensorflow_datasets|keras|jax|flax|orbax|etils|clu|absl)(\.|$)"
# Library records that describe normal operation, whatever their level.
_EXPECTED = (
    "Requested `tracked_metric`",  # Orbax, at every save of a step that was not evaluated
    "Given directory is read only",  # Orbax, at every checkpoint opened for reading
)

_state = {"verbose": False}


def verbose() -> bool:
    """Whether the running command was given --verbose."""
    return _state["verbose"]


@dataclasses.dataclass(frozen=True)
class Command:
    """A command line: its name, one-line summary, flags and body.

    define_flags(flag_values, argv) defines the command's flags (argv: the command line, for
    flags that read it early, as ml_collections' config flags do); run(flag_values) is the
    body, called with the parsed flags (and, with `takes_arguments`, the arguments after
    `--`); its result is returned by `__call__`. `uses_jax`: set the CPU up first;
    `uses_tensorflow`: keep TensorFlow off accelerators.
    """

    name: str
    summary: str
    define_flags: Callable[[flags.FlagValues, Sequence[str]], None]
    run: Callable[..., Any]
    uses_jax: bool = True
    uses_tensorflow: bool = True
    takes_arguments: bool = False

    def __call__(self, argv: Sequence[str] | None = None) -> Any:
        """Runs the command on `argv` (default sys.argv[1:]); returns what its body returns."""
        return run(self, argv)

    def entry(self) -> None:
        """The console-script entry point (`psta-...`): runs the command on sys.argv."""
        run(self, None)


def define_checkpoint_flag(
    values: flags.FlagValues, *, required: bool = True, purpose: str = ""
) -> None:
    """`--checkpoint`, as every command that loads a trained model names one."""
    flags.DEFINE_string(
        "checkpoint",
        None,
        "A training workdir (its best step, else its latest), its checkpoints/ folder, one step "
        f"folder, or a converted release checkpoint{purpose}.",
        flag_values=values,
        required=required,
    )


def run(command: Command, argv: Sequence[str] | None = None) -> Any:
    """Steps 1-5 of the module docstring."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["verbose"] = "--verbose" in args
    if command.uses_jax:
        xla_cpu.configure_for_cpu_if_needed()  # before JAX or TensorFlow start threads
    quiet_libraries(verbose())
    values, positional = parse_flags(command, args)
    _state["verbose"] = bool(values.verbose)
    if command.uses_tensorflow:
        keep_tensorflow_on_host(verbose())
    try:
        if command.takes_arguments:
            return command.run(values, positional)
        return command.run(values)
    except errors.UserError as error:
        if verbose():
            traceback.print_exc()
        else:
            # Work the failure abandoned (pending array reads or writes) ends while the
            # process exits; its log records and "Exception ignored in ..." tracebacks would
            # bury the message.
            python_logging.disable(python_logging.ERROR)
            sys.unraisablehook = lambda unraisable: None
            errors.report(error)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(errors.INTERRUPTED_EXIT_CODE) from None


def parse_flags(command: Command, args: Sequence[str]) -> tuple[flags.FlagValues, list[str]]:
    """The command's flags parsed from `args`, and the arguments after `--`; a usage error
    exits with one message."""
    values = flags.FlagValues()
    argv = [command.name, *args]
    try:
        command.define_flags(values, argv)
        flags.DEFINE_bool(
            "verbose",
            False,
            "Show library logs, and the traceback of an expected error.",
            flag_values=values,
            module_name=command.name,
        )
        flags.DEFINE_bool(
            "help",
            False,
            "Show this help.",
            flag_values=values,
            module_name=command.name,
            short_name="h",
        )
    except flags.Error as error:
        _usage_error(command, _without_traceback(str(error)), args)
    own = list(args[: args.index("--")] if "--" in args else args)
    if "--help" in own or "-h" in own:  # before validation: required flags may be missing
        sys.stdout.write(help_text(command, values))
        raise SystemExit(0)
    try:
        positional = values(argv)[1:]
    except flags.Error as error:
        _usage_error(command, _without_traceback(str(error)), args)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # --config.* overrides
        if "--verbose" in args:
            raise
        text = str(error.args[0]) if error.args else str(error)
        text = " ".join(text.replace("\\n", " ").replace("\\'", "'").split())
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        _usage_error(
            command,
            f"a --config.* override does not fit the config ({type(error).__name__}: {text})",
            args,
        )
    if positional and not command.takes_arguments:
        _usage_error(command, f"unexpected arguments {positional}; every option is a --flag", args)
    return values, positional


def help_text(command: Command, values: flags.FlagValues) -> str:
    listing = values.get_help(include_special_flags=False)
    return f"usage: {command.name} [--flag=value ...]\n\n{command.summary}\n\n{listing}\n"


def _usage_error(command: Command, message: str, args: Sequence[str]) -> None:
    del args
    sys.stderr.write(f"error: {message}\n(run {command.name} --help for the flags)\n")
    raise SystemExit(errors.USAGE_EXIT_CODE)


def _without_traceback(message: str) -> str:
    """A flag error's text with any embedded traceback cut down to its last line."""
    lines = message.splitlines()
    marker = "Traceback (most recent call last)"
    starts = [i for i, line in enumerate(lines) if marker in line]
    if not starts:
        return message
    head = [line for line in lines[: starts[0]] if line.strip()]
    tail = [line.strip() for line in lines[starts[0] :] if line.strip()]
    return "\n".join([*head, f"  {tail[-1]}"])


class _LibraryChatter(python_logging.Filter):
    """Drops the INFO records of libraries (warnings and errors still show) and strips the
    tracebacks their failed asynchronous work attaches (reported once by runtime.errors)."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        if verbose():
            return True
        path = record.pathname.replace(os.sep, "/")
        if record.exc_info and any(part in path for part in _NO_TRACEBACK):
            record.exc_info, record.exc_text = None, None
        chatty = any(part in path for part in _CHATTY)
        if chatty and record.getMessage().startswith(_EXPECTED):
            return False
        return record.levelno >= python_logging.WARNING or not chatty


def _hide_abandoned_write_noise(unraisable) -> None:
    """Drops what TensorStore prints when a failed checkpoint write calls back into a closed
    asyncio loop ('RuntimeError: Event loop is closed', one traceback per array); the failure
    itself is reported once by `checkpointing.CheckpointSaveError`."""
    if not verbose() and isinstance(unraisable.exc_value, RuntimeError):
        if "Event loop is closed" in str(unraisable.exc_value):
            return
    sys.__unraisablehook__(unraisable)


def quiet_libraries(show_everything: bool) -> None:
    """Step 3 of the module docstring; idempotent. Call before TensorFlow is imported."""
    # TensorFlow's C++ INFO notices (oneDNN, CPU instructions) print when it is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if show_everything else "1")
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults
    logging.use_absl_handler()
    logging.set_verbosity(logging.DEBUG if show_everything else logging.INFO)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryChatter) for f in handler.filters):
        handler.addFilter(_LibraryChatter())
    sys.unraisablehook = _hide_abandoned_write_noise
    if not show_everything:
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=_LIBRARY_WARNINGS)


def keep_tensorflow_on_host(show_everything: bool) -> None:
    """tf.data decodes on the host; accelerators belong to JAX. Also hides TFDS's progress
    bars (they print escape codes into logs) unless `show_everything`."""
    import tensorflow as tf  # noqa: PLC0415 (after the CPU setup)
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tf.config.set_visible_devices([], "GPU")
    if not show_everything:
        tfds.disable_progress_bar()

"""Every command line's start (runtime.cli): one flag style, one message for an expected
error, tracebacks for bugs and --verbose, usage errors and --help alike in every command."""

import importlib
import subprocess
import sys
import tomllib

import pytest
from absl import flags

from psta_jax.runtime import cli, errors
from tests.conftest import REPO_ROOT

# Every command: (module, console script).
COMMANDS = {
    "psta_jax.main": "psta-train",
    "psta_jax.embed": "psta-embed",
    "psta_jax.search": "psta-search",
    "psta_jax.export": "psta-export",
    "psta_jax.launch": "psta-launch",
    "psta_jax.inspection.__main__": "psta-inspect",
    "psta_jax.interop.convert": "psta-convert",
    "psta_jax.datasets.synthetic": "psta-synthetic",
}


class _DiskFull(errors.UserError):
    pass


def _command(body, **fields) -> cli.Command:
    def define(values: flags.FlagValues, argv) -> None:
        flags.DEFINE_integer("count", 1, "How many.", flag_values=values, lower_bound=1)
        flags.DEFINE_string("name", None, "A name.", flag_values=values, required=True)

    return cli.Command(
        name="psta-test", summary="A test command.", define_flags=define, run=body,
        uses_jax=False, uses_tensorflow=False, **fields,
    )  # fmt: skip


def _fails_expectedly(values):
    try:
        raise OSError(28, "No space left on device")
    except OSError as cause:
        raise _DiskFull("cannot save checkpoint 8 to /w/checkpoints: 0 bytes free") from cause


def test_flags_reach_the_body():
    assert _command(lambda v: (v.count, v.name))(["--count=3", "--name=x"]) == (3, "x")
    assert _command(lambda v, rest: rest, takes_arguments=True)(["--name=x", "--", "--a=1"]) == [
        "--a=1"
    ]


def test_expected_error_prints_one_message_and_exits_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _command(_fails_expectedly)(["--name=x"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot save checkpoint 8 to /w/checkpoints: 0 bytes free\n")
    assert "cause: OSError: [Errno 28] No space left on device" in err
    assert "Traceback" not in err and "--verbose" in err


def test_verbose_shows_the_chain(capsys):
    with pytest.raises(SystemExit):
        _command(_fails_expectedly)(["--name=x", "--verbose"])
    err = capsys.readouterr().err
    assert "Traceback" in err and "direct cause" in err and "No space left" in err


def test_bugs_keep_their_traceback():
    def buggy(values):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _command(buggy)(["--name=x"])


def test_ctrl_c_is_one_line(capsys):
    def interrupted(values):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        _command(interrupted)(["--name=x"])
    assert exit_info.value.code == errors.INTERRUPTED_EXIT_CODE
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize(
    "args,words",
    [
        (["--name=x", "--count=0"], "flag --count=0: 0 is not a positive integer"),
        (["--name=x", "--count=two"], "flag --count=two"),
        (["--name=x", "--colour=red"], "Unknown command line flag 'colour'"),
        ([], "--name must have a value"),
        (["--name=x", "extra"], "unexpected arguments ['extra']"),
    ],
)
def test_usage_errors_exit_2_with_one_message(capsys, args, words):
    with pytest.raises(SystemExit) as exit_info:
        _command(lambda values: None)(args)
    assert exit_info.value.code == errors.USAGE_EXIT_CODE
    err = capsys.readouterr().err
    assert words in err and "(run psta-test --help for the flags)" in err
    assert "Traceback" not in err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _command(lambda values: None)(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: psta-test [--flag=value ...]\n\nA test command.")
    assert "--count: How many." in out and "--[no]verbose" in out


def test_long_causes_are_shortened():
    error = errors.UserError("top")
    error.__cause__ = ValueError("x" * 1000)
    text = errors.describe(error)
    assert len(text) < 400 and text.endswith("...")


def test_every_command_is_a_cli_command_with_a_console_script():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {name: f"{module}:main.entry" for module, name in COMMANDS.items()}
    for module, name in COMMANDS.items():
        command = importlib.import_module(module).main
        assert isinstance(command, cli.Command) and command.name == name


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_command_speaks_the_same_flag_style(module):
    """--help lists underscore flags; an unknown flag is exit 2 with one message."""
    run = subprocess.run(
        [sys.executable, "-m", module.removesuffix(".__main__"), "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: {COMMANDS[module]} ")
    listed = [
        name.strip().removeprefix("--").removeprefix("[no]")
        for line in run.stdout.splitlines()
        if line.lstrip().startswith(("--", "-h,"))
        for name in line.split(":")[0].split(",")
        if name.strip().startswith("--")
    ]
    assert "help" in listed and "verbose" in listed, listed
    assert not [name for name in listed if "-" in name], listed
    bad = subprocess.run(
        [sys.executable, "-m", module.removesuffix(".__main__"), "--no-such-flag=1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == errors.USAGE_EXIT_CODE
    assert "Traceback" not in bad.stderr and bad.stderr.startswith("error: ")

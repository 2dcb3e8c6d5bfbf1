"""The CLI error convention: one message for expected errors, tracebacks for bugs and --verbose."""

import pytest

from psta_jax import errors


class _DiskFull(errors.UserError):
    pass


def _fails_expectedly():
    try:
        raise OSError(28, "No space left on device")
    except OSError as cause:
        raise _DiskFull("cannot save checkpoint 8 to /w/checkpoints: 0 bytes free") from cause


def test_expected_error_prints_one_message_and_exits_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        errors.run_cli(_fails_expectedly)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot save checkpoint 8 to /w/checkpoints: 0 bytes free\n")
    assert "cause: OSError: [Errno 28] No space left on device" in err
    assert "Traceback" not in err and "--verbose" in err


def test_verbose_shows_the_chain(capsys):
    with pytest.raises(SystemExit):
        errors.run_cli(_fails_expectedly, verbose=True)
    err = capsys.readouterr().err
    assert "Traceback" in err and "direct cause" in err and "No space left" in err


def test_bugs_keep_their_traceback():
    def buggy():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        errors.run_cli(buggy)


def test_ctrl_c_is_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        errors.run_cli(interrupted)
    assert exit_info.value.code == errors.INTERRUPTED_EXIT_CODE
    assert capsys.readouterr().err == "interrupted\n"


def test_long_causes_are_shortened():
    error = errors.UserError("top")
    error.__cause__ = ValueError("x" * 1000)
    text = errors.describe(error)
    assert len(text) < 400 and text.endswith("...")

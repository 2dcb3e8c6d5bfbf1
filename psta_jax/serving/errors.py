"""The error the serving CLIs raise for bad input (files, folders, checkpoints, options)."""

from __future__ import annotations

from psta_jax.runtime.errors import UserError


class ServingInputError(UserError):
    """Bad input to embed / search / export: the message says what was expected and where."""

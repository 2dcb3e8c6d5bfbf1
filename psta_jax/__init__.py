"""psta-jax: PSTA (Pyramid Spatial-Temporal Aggregation, ICCV 2021) for video person re-id.

The public API a user imports is listed in docs/architecture.md; `psta_loss` is re-exported
here from `psta_jax.training.losses`. Importing the package imports neither JAX nor
TensorFlow: each command sets the CPU up first (`psta_jax.runtime.cli`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"psta_loss": "psta_jax.training.losses"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

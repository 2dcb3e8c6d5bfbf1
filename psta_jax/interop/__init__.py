"""Interoperability with PyTorch: release checkpoints and torchvision ResNet-50.

Loaded on first use (PEP 562): `torch_import` imports JAX, and `python -m
psta_jax.interop.convert` must set the CPU up before JAX starts.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "WeightImportError",
    "export_state_dict",
    "key_map",
    "load_official_psta",
    "load_psta_state_dict",
    "load_state_dict",
    "load_torchvision_resnet50",
    "read_state_dict",
    "torch_name",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.torch_import"), name)

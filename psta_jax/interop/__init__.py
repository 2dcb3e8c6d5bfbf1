"""Interoperability with PyTorch: release checkpoints and torchvision ResNet-50."""

from psta_jax.interop.torch_import import (
    WeightImportError,
    export_state_dict,
    key_map,
    load_official_psta,
    load_psta_state_dict,
    load_state_dict,
    load_torchvision_resnet50,
    read_state_dict,
    torch_name,
)

__all__ = [
    "WeightImportError", "export_state_dict", "key_map", "load_official_psta",
    "load_psta_state_dict", "load_state_dict", "load_torchvision_resnet50", "read_state_dict",
    "torch_name",
]

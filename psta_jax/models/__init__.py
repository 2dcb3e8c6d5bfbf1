"""PSTA network: ResNet backbone, STAM stages and the full model.

`build_model(config.model.to_dict(), num_classes, rngs)` builds a `PSTA` from model fields
named as `PSTA`'s keyword arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from psta_jax.models.psta import PSTA, BNNeck, FrozenParam, PSTAOutput, capture_attention
from psta_jax.models.resnet import ResNet
from psta_jax.models.stam import SRA, STAM, TRA

MODEL_FIELDS = (
    "depth",
    "width",
    "last_stride",
    "feature_dim",
    "image_size",
    "seq_len",
    "aggregation",
    "num_stages",
    "use_sra",
    "use_tra",
    "use_conv_block",
    "dtype",
    "remat",
)


def build_model(model_config: Mapping[str, Any], num_classes: int, rngs: nnx.Rngs) -> PSTA:
    """PSTA from a config (ConfigDict or mapping) with fields named as PSTA's kwargs.

    `dtype` may be a string ('float32', 'bfloat16'); `image_size` any length-2 sequence.
    Unknown fields raise, so a typo in a config does not silently fall back to a default.
    """
    fields = dict(model_config)
    unknown = sorted(set(fields) - set(MODEL_FIELDS) - {"param_dtype"})
    if unknown:
        raise ValueError(
            f"build_model: unknown model config fields {unknown}; "
            f"expected a subset of {list(MODEL_FIELDS)}"
        )
    if "image_size" in fields:
        fields["image_size"] = tuple(int(s) for s in fields["image_size"])
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = jnp.dtype(fields[key])
    return PSTA(num_classes, **fields, rngs=rngs)


__all__ = [
    "PSTA",
    "PSTAOutput",
    "BNNeck",
    "FrozenParam",
    "ResNet",
    "SRA",
    "STAM",
    "TRA",
    "build_model",
    "capture_attention",
    "MODEL_FIELDS",
]

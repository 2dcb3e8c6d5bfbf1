"""ResNet backbone: sizes, strides, torchvision parameter count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psta_jax.models import ResNet


def count(module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_resnet50_matches_torchvision_size():
    model = nnx.eval_shape(lambda: ResNet(50, rngs=nnx.Rngs(0)))
    assert count(model) == 23_508_032  # torchvision resnet50 without fc
    assert model.out_features == 2048
    assert [len(layer) for layer in model.layers] == [3, 4, 6, 3]


@pytest.mark.parametrize("last_stride,expected", [(1, (4, 2)), (2, (2, 1))])
def test_output_map_size_follows_last_stride(last_stride, expected):
    model = nnx.eval_shape(lambda: ResNet(50, width=4, last_stride=last_stride, rngs=nnx.Rngs(0)))
    out = jax.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)
    )
    assert out.shape == (2, *expected, 4 * 8 * 4)


def test_rejects_unknown_depth_and_bad_input():
    with pytest.raises(ValueError, match="depth"):
        ResNet(101, rngs=nnx.Rngs(0))
    model = nnx.eval_shape(lambda: ResNet(10, width=4, rngs=nnx.Rngs(0)))
    with pytest.raises(AssertionError):
        jax.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 32, 16, 1), jnp.float32))

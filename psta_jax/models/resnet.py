"""ResNet 18/34/50 (and a test-sized 10) backbones in Flax NNX, NHWC, torchvision "v1.5" layout.

The attribute names follow torchvision so that its state_dict maps one-to-one
(`psta_jax.interop.torch_import` holds the map):

    conv1, bn1, layer1..layer4 (an `nnx.List` of blocks); each block has
    conv1/bn1/conv2/bn2[/conv3/bn3] and, on the first block of a layer whose
    shape changes, `downsample` (`.conv`, `.bn` = torchvision's `downsample.0/.1`).

Deviations from torchvision are knobs only: `width` scales every layer's width
(64 = torchvision) so tests can build tiny backbones, and `last_stride` sets the
stride of `layer4` (1 for re-identification, 2 for ImageNet). There is no fc layer.
Padding is explicit (PyTorch's symmetric padding), not 'SAME', so a stride-2 conv
sees the same pixels as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from psta_jax.models.batch_norm import BatchNorm
from psta_jax.models.conv import Conv, max_pool

STAGE_SIZES: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),  # not a torchvision model: the smallest backbone, for tests
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
}

# torchvision initialises ResNet convs with Kaiming normal, fan_out.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(num_features: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> BatchNorm:
    """A BatchNorm with PyTorch's epsilon, momentum and unbiased running variance,
    starting in training mode (batch_norm.py)."""
    del rngs
    return BatchNorm(num_features, dtype=dtype, param_dtype=param_dtype)


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    stride: int = 1,
    *,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """Bias-free conv with PyTorch's symmetric padding (kernel_size // 2); see conv.py."""
    return Conv(
        in_features,
        out_features,
        kernel_size,
        stride=stride,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class Downsample(nnx.Module):
    """Projection shortcut: 1x1 conv with the block's stride, then BatchNorm."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int,
        *,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        self.conv = conv(
            in_features, out_features, 1, stride, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.bn = batch_norm(out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


def _shortcut(in_features: int, out_features: int, stride: int, **kw) -> Downsample | None:
    if stride == 1 and in_features == out_features:
        return None
    return Downsample(in_features, out_features, stride, **kw)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34); the stride sits on the first."""

    expansion = 1

    def __init__(
        self, in_features: int, width: int, stride: int, *, dtype, param_dtype, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv(in_features, width, 3, stride, **kw)
        self.bn1 = batch_norm(width, **kw)
        self.conv2 = conv(width, width, 3, **kw)
        self.bn2 = batch_norm(width, **kw)
        self.downsample = _shortcut(in_features, width, stride, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride here: "v1.5") -> 1x1 x4, plus the shortcut (ResNet-50)."""

    expansion = 4

    def __init__(
        self, in_features: int, width: int, stride: int, *, dtype, param_dtype, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        out_features = width * self.expansion
        self.conv1 = conv(in_features, width, 1, **kw)
        self.bn1 = batch_norm(width, **kw)
        self.conv2 = conv(width, width, 3, stride, **kw)
        self.bn2 = batch_norm(width, **kw)
        self.conv3 = conv(width, out_features, 1, **kw)
        self.bn3 = batch_norm(out_features, **kw)
        self.downsample = _shortcut(in_features, out_features, stride, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(y + shortcut)


def _call_block(block: nnx.Module, x: jax.Array) -> jax.Array:
    return block(x)


class ResNet(nnx.Module):
    """ResNet feature extractor without the classifier.

    Args:
      depth: 18, 34 or 50 (10: one basic block per layer, for tests).
      width: base width (torchvision: 64); layer k has width * 2**(k-1) channels
        (times 4 for bottlenecks).
      last_stride: stride of layer4 (1 keeps a 16x8 map for 256x128 inputs).
      dtype: compute dtype; parameters are kept in `param_dtype`.
      remat: recompute each block's activations in the backward pass.

    Call: images (N, H, W, 3) -> feature map (N, H/s, W/s, `out_features`), with
    s = 16 * last_stride.
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        width: int = 64,
        last_stride: int = 1,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if depth not in STAGE_SIZES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {depth}")
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet last_stride must be 1 or 2, got {last_stride}")
        block_cls = Bottleneck if depth >= 50 else BasicBlock
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.remat = remat
        self.conv1 = conv(3, width, 7, 2, **kw)
        self.bn1 = batch_norm(width, **kw)
        in_features = width
        strides = (1, 2, 2, last_stride)
        for index, (num_blocks, stride) in enumerate(zip(STAGE_SIZES[depth], strides, strict=True)):
            layer_width = width * 2**index
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(
                    block_cls(in_features, layer_width, stride if block_index == 0 else 1, **kw)
                )
                in_features = layer_width * block_cls.expansion
            setattr(self, f"layer{index + 1}", nnx.List(blocks))
        self.out_features = in_features
        self.stride = 16 * last_stride

    @property
    def layers(self) -> Sequence[nnx.List]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stem(self, images: jax.Array) -> jax.Array:
        """conv1, bn1, ReLU, 3x3/2 max-pool: images (N, H, W, 3) -> (N, H/4, W/4, width)."""
        chex.assert_rank(images, 4)
        chex.assert_axis_dimension(images, -1, 3)
        x = nnx.relu(self.bn1(self.conv1(images.astype(self.dtype))))
        return max_pool(x, window=3, stride=2, padding=1)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.stem(images)
        call: Callable = nnx.remat(_call_block) if self.remat else _call_block
        for layer in self.layers:
            for block in layer:
                x = call(block, x)
        return x

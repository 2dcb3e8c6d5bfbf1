"""PSTA: Pyramid Spatial-Temporal Aggregation for video person re-identification.

The default model is the authors' release (docs/release_network.md): ResNet-50
(last stride 1) -> `down_channel` (1x1 conv to `feature_dim`, BN, ReLU) -> a pyramid of
STAM stages (frames paired (0, 1), (2, 3), ...; stage n halves the number of maps) ->
stage features f_n (mean over maps and space) -> cumulative features
x_n = mean(f_1..f_n) -> per-stage BN neck -> per-stage classifier.

    model.eval();  emb = model(clips)   # clips (B, T, H, W, 3) -> (B, feature_dim)
    model.train(); out = model(clips)   # PSTAOutput(logits=(...), features=(...))

Ablations (`aggregation`): 'pyramid' (default), 'adjacent' (ARAS: one STAM over every
pair of neighbouring frames (t, t+1), t = 0..T-2, outputs averaged, one head), 'global'
(GRAS: one STAM over (frame t, mean frame) for every t, outputs averaged, one head),
'none' (baseline: temporal mean of the frame maps, one head; also 'pyramid' with
num_stages=0). `use_sra`, `use_tra` and `use_conv_block` switch STAM parts.

BN-neck biases are frozen (the release sets requires_grad False): they are `FrozenParam`
variables, not `nnx.Param`, so an optimizer built on `nnx.Param` (e.g.
`nnx.Optimizer(model, tx, wrt=nnx.Param)`, or `nnx.state(model, nnx.Param)`) never sees
them, and weight decay does not touch them.

Attention maps for inspection: `capture_attention(model, clips)` runs the model with
every STAM reporting its maps through `nnx.sow(nnx.Intermediate, ...)` and returns
(outputs, intermediates); the outputs are those of a plain call. See `stam.py` for the
names and shapes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from psta_jax.models import batch_norm as bn_lib
from psta_jax.models import stam as stam_lib
from psta_jax.models.resnet import ResNet

AGGREGATIONS = ("pyramid", "adjacent", "global", "none")

# Section 8: down_channel keeps PyTorch's default conv init (Kaiming uniform, a=sqrt(5)).
torch_default_conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
classifier_init = nnx.initializers.normal(0.001)


class FrozenParam(nnx.Variable):
    """A parameter that is loaded and saved but never trained (not an `nnx.Param`)."""


class PSTAOutput(NamedTuple):
    """Training outputs, one entry per head (stage): logits (B, num_classes) and BN-neck
    features (B, feature_dim), float32 (float64 for a float64 model)."""

    logits: tuple[jax.Array, ...]
    features: tuple[jax.Array, ...]


class BNNeck(nnx.Module):
    """BatchNorm1d on a clip feature whose bias stays at 0 (a `FrozenParam`).

    Statistics and output in at least float32 (float64 with float64 parameters); the
    running variance moves towards the unbiased batch variance, as PyTorch's.
    """

    def __init__(self, num_features: int, *, param_dtype=jnp.float32):
        self.num_features = num_features
        self.use_running_average = False
        dtype = bn_lib.statistics_dtype(param_dtype)
        self.scale = nnx.Param(jnp.ones((num_features,), dtype))
        self.bias = FrozenParam(jnp.zeros((num_features,), dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_shape(x, (None, self.num_features))
        x = x.astype(jnp.promote_types(x.dtype, self.scale[...].dtype))
        scale, bias = self.scale[...].astype(x.dtype), self.bias[...].astype(x.dtype)
        if self.use_running_average:
            mean, var = self.mean[...].astype(x.dtype), self.var[...].astype(x.dtype)
            return bn_lib.normalize(x, mean, var, scale, bias)
        y, mean, var = bn_lib.batch_normalize(x, scale, bias)
        call_means, call_vars = bn_lib.running_statistics_calls(mean, var, x.shape[0], ())
        self.mean[...] = bn_lib.running_update(self.mean[...], call_means)
        self.var[...] = bn_lib.running_update(self.var[...], call_vars)
        return y


def _check_power_of_two(seq_len: int, what: str) -> int:
    if seq_len < 1 or seq_len & (seq_len - 1):
        raise ValueError(
            f"{what}: the pyramid pairs frames, so T must be a power of two "
            f"(1, 2, 4, 8, ...), got T={seq_len}"
        )
    return int(math.log2(seq_len))


def _stage_feature(maps: jax.Array) -> jax.Array:
    """(B, T', H, W, C) -> (B, C), at least float32: mean over maps and space."""
    return jnp.mean(maps, axis=(1, 2, 3), dtype=bn_lib.statistics_dtype(maps.dtype))


class PSTA(nnx.Module):
    """The PSTA network; see the module docstring.

    Args:
      num_classes: training identities (classifier width).
      depth, width, last_stride: the ResNet backbone (resnet.py).
      feature_dim: C, the down_channel width (1024 in the release); STAM widths are
        C/4 and C/8.
      image_size: (H, W) of input frames; sets the relation-embedding widths 2HW.
      seq_len: T, frames per clip used to check the pyramid depth.
      aggregation: 'pyramid' | 'adjacent' | 'global' | 'none'.
      num_stages: STAM stages of the pyramid, 0..log2(seq_len); number of heads.
      use_sra, use_tra, use_conv_block: STAM ablations.
      dtype: compute dtype (str or dtype); params are `param_dtype`; heads, BN necks and
        the embedding run in at least float32 (float64 with float64 dtype and params, as
        in the float64 parity tests).
      remat: rematerialise backbone blocks in the backward pass.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 50,
        width: int = 64,
        last_stride: int = 1,
        feature_dim: int = 1024,
        image_size: tuple[int, int] = (256, 128),
        seq_len: int = 8,
        aggregation: str = "pyramid",
        num_stages: int = 3,
        use_sra: bool = True,
        use_tra: bool = True,
        use_conv_block: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        if aggregation == "pyramid":
            max_stages = _check_power_of_two(seq_len, "PSTA(seq_len)")
            if not 0 <= num_stages <= max_stages:
                raise ValueError(
                    f"num_stages must be in 0..log2(seq_len)={max_stages} for "
                    f"seq_len={seq_len}, got {num_stages}"
                )
        self.aggregation = "none" if aggregation == "pyramid" and num_stages == 0 else aggregation
        self.num_stages = num_stages
        self.seq_len = seq_len
        self.feature_dim = feature_dim
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.base = ResNet(depth, width=width, last_stride=last_stride, remat=remat, **kw)
        stride = self.base.stride
        if image_size[0] % stride or image_size[1] % stride:
            raise ValueError(
                f"image_size {tuple(image_size)} must be divisible by the backbone stride {stride}"
            )
        self.image_size = tuple(image_size)
        self.map_size = (image_size[0] // stride, image_size[1] // stride)
        self.down_channel = stam_lib.ConvBN(
            self.base.out_features, feature_dim, kernel_init=torch_default_conv_init, **kw
        )
        num_stams = {"pyramid": num_stages, "adjacent": 1, "global": 1, "none": 0}
        self.stages = nnx.List(
            [
                stam_lib.STAM(
                    feature_dim,
                    self.map_size,
                    use_sra=use_sra,
                    use_tra=use_tra,
                    use_conv_block=use_conv_block,
                    **kw,
                )
                for _ in range(num_stams[self.aggregation])
            ]
        )
        num_heads = max(1, len(self.stages))
        self.bottleneck = nnx.List(
            [BNNeck(feature_dim, param_dtype=param_dtype) for _ in range(num_heads)]
        )
        self.classifier = nnx.List(
            [
                nnx.Linear(
                    feature_dim,
                    num_classes,
                    kernel_init=classifier_init,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for _ in range(num_heads)
            ]
        )
        self.use_running_average = False

    def frame_maps(self, clips: jax.Array) -> jax.Array:
        """clips (B, T, H, W, 3) -> down_channel maps (B, T, h, w, feature_dim)."""
        batch, seq_len = clips.shape[:2]
        return self.reduce_channels(
            self.base(clips.reshape(batch * seq_len, *clips.shape[2:])), batch
        )

    def reduce_channels(self, backbone_maps: jax.Array, batch: int) -> jax.Array:
        """Backbone maps (B*T, h, w, 2048) -> down_channel maps (B, T, h, w, feature_dim)."""
        maps = self.down_channel(backbone_maps)
        return maps.reshape(batch, -1, *maps.shape[1:])

    def stage_maps(self, maps: jax.Array) -> list[jax.Array]:
        """Frame maps (B, T, h, w, C) -> the output maps of each stage, (B, T', h, w, C)."""
        if self.aggregation == "pyramid":
            outputs = []
            for stage in self.stages:
                maps = stage(maps[:, 0::2], maps[:, 1::2])
                outputs.append(maps)
            return outputs
        if self.aggregation == "adjacent":
            return [self.stages[0](maps[:, :-1], maps[:, 1:])]
        if self.aggregation == "global":
            reference = jnp.broadcast_to(jnp.mean(maps, axis=1, keepdims=True), maps.shape)
            return [self.stages[0](maps, reference)]
        return [maps]

    def clip_features(self, clips: jax.Array) -> list[jax.Array]:
        """Cumulative features x_n (B, feature_dim), one per head (float32; float64 for a
        float64 model)."""
        self._check_clips(clips)
        return self.features_from_maps(self.frame_maps(clips))

    def features_from_maps(self, maps: jax.Array) -> list[jax.Array]:
        """down_channel maps (B, T, h, w, C) -> cumulative features x_n (B, C), per head."""
        stage_features = [_stage_feature(m) for m in self.stage_maps(maps)]
        cumulative = jnp.cumsum(jnp.stack(stage_features), axis=0)
        counts = jnp.arange(1, len(stage_features) + 1, dtype=cumulative.dtype)
        return list(cumulative / counts[:, None, None])

    def __call__(self, clips: jax.Array) -> jax.Array | PSTAOutput:
        return self.heads(self.clip_features(clips))

    def heads(self, features: list[jax.Array]) -> jax.Array | PSTAOutput:
        """BN necks and classifiers on the cumulative features: eval mode the embedding
        BN(x_last) (B, C); train mode a PSTAOutput."""
        if self.use_running_average:
            embedding = self.bottleneck[-1](features[-1])
            chex.assert_shape(embedding, (features[-1].shape[0], self.feature_dim))
            return embedding
        bn_features = tuple(neck(x) for neck, x in zip(self.bottleneck, features, strict=True))
        logits = tuple(head(f) for head, f in zip(self.classifier, bn_features, strict=True))
        return PSTAOutput(logits=logits, features=bn_features)

    def _check_clips(self, clips: jax.Array) -> None:
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"PSTA expects clips (B, T, H, W, 3), got shape {clips.shape}")
        if tuple(clips.shape[2:4]) != self.image_size:
            raise ValueError(
                f"PSTA was built for image_size {self.image_size}, got frames of "
                f"{tuple(clips.shape[2:4])}"
            )
        seq_len = clips.shape[1]
        if self.aggregation == "pyramid":
            levels = _check_power_of_two(seq_len, "PSTA input clips")
            if levels < self.num_stages:
                raise ValueError(
                    f"{self.num_stages} pyramid stages need T >= "
                    f"{2**self.num_stages} frames, got T={seq_len}"
                )
        elif self.aggregation == "adjacent" and seq_len < 2:
            raise ValueError(f"'adjacent' aggregation needs T >= 2 frames, got T={seq_len}")


def capture_attention(model: PSTA, clips: jax.Array) -> tuple[jax.Array | PSTAOutput, nnx.State]:
    """Runs `model(clips)` and returns (outputs, intermediates).

    `intermediates` is an `nnx.State` of `nnx.Intermediate` values keyed by module path,
    e.g. `intermediates['stages'][0]['sra']['sra_spatial'].get_value()` is a 1-tuple with the
    (B, P, 2, h, w) SRA spatial maps of stage 1 (names and shapes in stam.py).
    """
    model.set_attributes(report_attention=True, raise_if_not_found=False)
    try:
        return nnx.capture(lambda m, x: m(x), nnx.Intermediate)(model, clips)
    finally:
        model.set_attributes(report_attention=False, raise_if_not_found=False)

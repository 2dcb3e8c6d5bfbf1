"""SRA, TRA and STAM: the Spatial-Temporal Aggregation Module of PSTA, in Flax NNX.

Everything follows the network of the authors' release (docs/release_network.md,
sections 3-5; comments cite its sections). Layout is NHWC. A STAM
turns pairs of frame maps into one map per pair; all pairs of a stage go through the same
weights in one call, with the pairs folded into the batch (no Python loop over pairs):

    STAM(first, second): (B, P, H, W, C), (B, P, H, W, C) -> (B, P, H, W, C)

Relation matrices are never transposed: with g, b of shape (N, HW, C') the two views of
R[p, q] = <g[:, p], b[:, q]> that the release concatenates are, in NHWC,
    in(R)[p, q]  = R[p, q] = einsum('npc,nqc->npq', g, b)
    out(R)[p, q] = R[q, p] = einsum('npc,nqc->npq', b, g)
so each is one batched matmul that lands directly in the layout the next 1x1 conv reads.

Intermediate attention (for inspection; outputs are unchanged) is reported with
`nnx.sow(nnx.Intermediate, ...)` when the module's `report_attention` attribute is True
(see `psta_jax.models.psta.capture_attention`). Each STAM reports, per pair (B, P, 2, ...),
with index 2 = (first frame, second frame):
    'sra_spatial' (B, P, 2, H, W), 'sra_channel' (B, P, 2, C),
    'tra_spatial' (B, P, 2, H, W), 'tra_channel' (B, P, 2, C).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from psta_jax.models.batch_norm import (  # noqa: F401 (re-exported: stam.BatchNorm etc.)
    BN_EPSILON,
    BN_MOMENTUM,
    BatchNorm,
    grouped_moments,
    normalize,
)
from psta_jax.models.conv import Conv

# Section 8: STAM convs Kaiming normal (fan_in); Linears Kaiming normal (fan_out), bias 0.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
linear_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

ACTIVATIONS = {"relu": nnx.relu, "sigmoid": nnx.sigmoid, None: lambda x: x}


class ConvBN(nnx.Module):
    """Bias-free conv (1x1 or 3x3, PyTorch padding) -> BatchNorm -> activation.

    Maps to a PyTorch Sequential's (conv, bn) pair: `.conv.kernel` (kh, kw, in, out) is
    the transposed `weight` (out, in, kh, kw).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 1,
        activation: str | None = "relu",
        kernel_init=conv_init,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv(
            in_features,
            out_features,
            kernel_size,
            kernel_init=kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_features, dtype=dtype, param_dtype=param_dtype)
        self.activation = activation

    def __call__(self, x: jax.Array, group_axes: Sequence[int] = ()) -> jax.Array:
        return ACTIVATIONS[self.activation](self.bn(self.conv(x), group_axes))


class ChannelMLP(nnx.Module):
    """Linear -> ReLU -> Linear -> sigmoid (release `channel_para` / `app_channel`)."""

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(kernel_init=linear_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(in_features, hidden, **kw)
        self.fc2 = nnx.Linear(hidden, out_features, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.sigmoid(self.fc2(nnx.relu(self.fc1(x))))


def relation_views(
    query: jax.Array,
    key: jax.Array,
    ref_query: jax.Array,
    ref_key: jax.Array,
    spatial: tuple[int, int],
) -> jax.Array:
    """concat(in(R), out(R')) as an NHWC map with 2HW channels.

    R[p, q] = <query[p], key[q]> and R'[p, q] = <ref_query[p], ref_key[q]>. At position p,
    in(R) holds R[p, :] and out(R') holds R'[:, p]. Inputs (..., HW, C'); output
    (..., H, W, 2HW).
    """
    rel_in = jnp.einsum("...pc,...qc->...pq", query, key)
    rel_out = jnp.einsum("...pc,...qc->...pq", ref_key, ref_query)
    relations = jnp.concatenate([rel_in, rel_out], axis=-1)
    return relations.reshape(*relations.shape[:-2], *spatial, relations.shape[-1])


def spatial_mean(x: jax.Array) -> jax.Array:
    """(..., H, W, C) -> (..., C), accumulated in at least float32."""
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    return jnp.mean(x, axis=(-3, -2), dtype=accumulate).astype(x.dtype)


def _swap_pair(x: jax.Array) -> jax.Array:
    """Frames stacked as (2, ...) = (first, second) -> (second, first): each frame's partner."""
    return jnp.flip(x, axis=0)


class TRA(nnx.Module):
    """Temporal Reference Attention (section 4), for a batch of frame pairs.

    Call: frames (2, B, P, H, W, C) stacked (first, second), their embeddings
    (2, B, P, H, W, C/8) and spatial means (2, B, P, C) -> (B, P, H, W, C).
    """

    def __init__(
        self,
        features: int,
        spatial: tuple[int, int],
        *,
        bn_groups: dict,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c8 = features // 8
        hw = spatial[0] * spatial[1]
        self.spatial = tuple(spatial)
        self.bn_groups = bn_groups
        self.gamma = ConvBN(features, c8, **kw)
        self.beta = ConvBN(features, c8, **kw)
        self.relation_embed = ConvBN(2 * hw, c8, **kw)
        self.appearance_embed = ConvBN(2 * c8, c8, **kw)
        self.spatial_head = ConvBN(2 * c8, 1, activation="sigmoid", **kw)
        self.theta = nnx.Linear(features, c8, use_bias=False, kernel_init=conv_init, **kw)
        self.channel_mlp = ChannelMLP(2 * c8, c8, features, **kw)
        self.report_attention = False

    def __call__(self, frames: jax.Array, embedded: jax.Array, means: jax.Array) -> jax.Array:
        groups = self.bn_groups
        flat = frames.shape[:-3]
        hw = self.spatial[0] * self.spatial[1]
        g = self.gamma(frames, groups["tra_frame"]).reshape(*flat, hw, -1)
        b = self.beta(frames, groups["tra_frame"]).reshape(*flat, hw, -1)
        # Frame i's relations to its partner j: in(R_ij) and out(R_ji).
        relations = relation_views(g, _swap_pair(b), _swap_pair(g), b, self.spatial)
        relation_code = self.relation_embed(relations, groups["tra_relation"])
        appearance = self.appearance_embed(
            jnp.concatenate([embedded, _swap_pair(embedded)], axis=-1), groups["tra_appearance"]
        )
        spatial_weight = self.spatial_head(
            jnp.concatenate([appearance, relation_code], axis=-1), groups["tra_head"]
        )
        theta = nnx.relu(self.theta(means))
        channel_weight = self.channel_mlp(jnp.concatenate([theta, _swap_pair(theta)], -1))
        weighted = channel_weight[..., None, None, :] * spatial_weight * frames
        if self.report_attention:
            self.sow(nnx.Intermediate, "tra_spatial", _pairs_last(spatial_weight[..., 0]))
            self.sow(nnx.Intermediate, "tra_channel", _pairs_last(channel_weight))
        # The release squares the fused map (section 4).
        return jnp.square(nnx.relu(weighted[0] + weighted[1]))


class SRA(nnx.Module):
    """Spatial Reference Attention (section 5), for a batch of frame pairs.

    Call: frames (2, B, P, H, W, C), embeddings (2, B, P, H, W, C/8), spatial means
    (2, B, P, C) -> relu(sum over the pair of channel * spatial * frame), (B, P, H, W, C).
    """

    def __init__(
        self,
        features: int,
        spatial: tuple[int, int],
        *,
        bn_groups: dict,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c8 = features // 8
        hw = spatial[0] * spatial[1]
        self.spatial = tuple(spatial)
        self.bn_groups = bn_groups
        self.alpha = ConvBN(features, c8, **kw)
        self.delta = ConvBN(features, c8, **kw)
        self.relation_embed = ConvBN(2 * hw, c8, **kw)
        self.spatial_head = nnx.List(
            [
                ConvBN(2 * c8, c8, **kw),
                ConvBN(c8, 1, activation="sigmoid", **kw),
            ]
        )
        self.channel_mlp = ChannelMLP(features, c8, features, **kw)
        self.report_attention = False

    def __call__(self, frames: jax.Array, embedded: jax.Array, means: jax.Array) -> jax.Array:
        groups = self.bn_groups
        flat = frames.shape[:-3]
        hw = self.spatial[0] * self.spatial[1]
        a = self.alpha(frames, groups["sra_frame"]).reshape(*flat, hw, -1)
        d = self.delta(frames, groups["sra_frame"]).reshape(*flat, hw, -1)
        relations = relation_views(a, d, a, d, self.spatial)
        relation_code = self.relation_embed(relations, groups["sra_head"])
        x = jnp.concatenate([embedded, relation_code], axis=-1)
        for layer in self.spatial_head:
            x = layer(x, groups["sra_head"])
        channel_weight = self.channel_mlp(means)
        weighted = channel_weight[..., None, None, :] * x * frames
        if self.report_attention:
            self.sow(nnx.Intermediate, "sra_spatial", _pairs_last(x[..., 0]))
            self.sow(nnx.Intermediate, "sra_channel", _pairs_last(channel_weight))
        return nnx.relu(weighted[0] + weighted[1])


def _pairs_last(x: jax.Array) -> jax.Array:
    """(2, B, P, ...) -> (B, P, 2, ...)."""
    return jnp.moveaxis(x, 0, 2)


# Training-mode BatchNorm calls, per layer group: the axes of the stacked (2, B, P, ...) pair
# tensor (conv block: of (B, P, ...)) that the release calls the layer separately for,
# outermost loop first (batch_norm.py: each call normalises with its own statistics and
# moves the running statistics once, in this order). The release's call order in one STAM
# forward pass:
# - Embeding, gamma/beta_temporal, alphi/delta_appearance, gg_spatial, spa_para: one call on
#   all frames of the stage (every pair, both frames) -> ();
# - TRA's pairwise layers gg_temporal, tte_para, te_para: a loop over pairs, and in each
#   pair first the first frame's spatial weight (s_i), then the second's (s_j) -> (pair
#   axis 2, direction axis 0). The float32 reference running statistics decide it: this
#   order matches them to 2e-4, direction-outer misses by 5e-2;
# - conv_block: one call on the fused maps of every pair -> ().
BN_GROUPS_RELEASE = {
    "embedding": (),
    "tra_frame": (),
    "sra_frame": (),
    "sra_head": (),
    "tra_relation": (2, 0),
    "tra_appearance": (2, 0),
    "tra_head": (2, 0),
    "fused": (),
}


class STAM(nnx.Module):
    """Spatial-Temporal Aggregation Module (section 3): a pair of maps -> one map.

    Args:
      features: C, the channel count of every map (1024 in the release).
      spatial: (H, W) of the maps; the relation embeddings take 2HW channels.
      use_sra, use_tra: the two attention blocks; with neither, a pair is fused by
        element-wise addition (the paper's "PAS" ablation).
      use_conv_block: the 1x1 -> 3x3 -> 1x1 block after fusion (no identity shortcut).

    Call: first, second (B, P, H, W, C) -> (B, P, H, W, C).
    """

    def __init__(
        self,
        features: int,
        spatial: tuple[int, int],
        *,
        use_sra: bool = True,
        use_tra: bool = True,
        use_conv_block: bool = True,
        bn_groups: dict | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if features % 8:
            raise ValueError(f"STAM features must be a multiple of 8, got {features}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.features = features
        self.spatial = tuple(spatial)
        self.bn_groups = dict(bn_groups or BN_GROUPS_RELEASE)
        mid, c8 = features // 4, features // 8
        attention_kw = dict(bn_groups=self.bn_groups, **kw)
        if use_sra or use_tra:
            self.embedding = nnx.List([ConvBN(features, mid, **kw), ConvBN(mid, c8, **kw)])
        else:
            self.embedding = None
        self.tra = TRA(features, self.spatial, **attention_kw) if use_tra else None
        self.sra = SRA(features, self.spatial, **attention_kw) if use_sra else None
        if use_conv_block:
            self.conv_block = nnx.List(
                [
                    ConvBN(features, mid, **kw),
                    ConvBN(mid, mid, kernel_size=3, **kw),
                    ConvBN(mid, features, **kw),
                ]
            )
        else:
            self.conv_block = None

    def __call__(self, first: jax.Array, second: jax.Array) -> jax.Array:
        chex.assert_equal_shape([first, second])
        chex.assert_rank(first, 5)
        chex.assert_axis_dimension(first, -1, self.features)
        if first.shape[2:4] != self.spatial:
            raise ValueError(f"STAM built for {self.spatial} maps, got {first.shape[2:4]}")
        frames = jnp.stack([first, second])  # (2, B, P, H, W, C)
        if self.embedding is None:
            fused = first + second
        else:
            embedded = frames
            for layer in self.embedding:
                embedded = layer(embedded, self.bn_groups["embedding"])
            means = spatial_mean(frames)
            fused = jnp.zeros_like(first)
            if self.tra is not None:
                fused = fused + self.tra(frames, embedded, means)
            if self.sra is not None:
                fused = fused + self.sra(frames, embedded, means)
        if self.conv_block is not None:
            for layer in self.conv_block:
                fused = layer(fused, self.bn_groups["fused"])
        chex.assert_equal_shape([fused, first])
        return fused

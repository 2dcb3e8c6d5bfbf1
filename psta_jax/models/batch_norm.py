"""BatchNorm with PyTorch's training semantics, including layers called several times.

PyTorch (the authors' release) normalises with the biased batch variance but moves
`running_var` towards the *unbiased* one (n / (n - 1)), with momentum 0.1, once per call
of the layer. Where the release calls one BatchNorm k times in a forward pass (TRA's
pairwise layers, once per pair and direction), the running statistics move k times, in
call order, each towards that call's batch statistics s_0 .. s_{k-1}:

    r_k = m^k r_0 + (1 - m) * sum_i m^(k-1-i) s_i        (m = 0.9, Flax's convention)

psta-jax runs those k calls as one vectorised call with k groups (`group_axes`) and applies
this closed form, so the result equals the release's sequential updates up to rounding.

    BatchNorm(C)(x)                        # one call: statistics over every axis but the last
    BatchNorm(C)(x, group_axes=(2, 0))     # x (2, B, P, ..., C): one call per (pair, direction)

`group_axes` lists the axes that are *not* pooled, outermost loop of the release first:
(2, 0) means "for each pair p: for each direction d: call", so group (d, p) is call 2p + d.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

BN_MOMENTUM = 0.9  # Flax convention: weight of the old running value (PyTorch's 0.1)
BN_EPSILON = 1e-5


def statistics_dtype(dtype) -> jnp.dtype:
    """At least float32 (bfloat16 activations keep float32 statistics; float64 stays)."""
    return jnp.promote_types(dtype, jnp.float32)


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float = BN_EPSILON,
) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias, as one multiply-add."""
    multiplier = scale * jax.lax.rsqrt(var + epsilon)
    return x * multiplier + (bias - mean * multiplier)


def _normalised_axes(x: jax.Array, group_axes: Sequence[int]) -> tuple[int, ...]:
    axes = tuple(a % x.ndim for a in group_axes)
    if len(set(axes)) != len(axes) or x.ndim - 1 in axes:
        raise ValueError(
            f"BatchNorm group_axes {tuple(group_axes)} must be distinct axes "
            f"other than the channel axis of an input of shape {x.shape}"
        )
    return axes


# Inputs narrower than float32 (bfloat16) take their statistics in one pass; read while
# tracing. benchmarks/batch_norm_statistics.py turns it off to time the two-pass statistics.
ONE_PASS_BELOW_FLOAT32 = True


def grouped_moments(x: jax.Array, group_axes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over every axis but the last and `group_axes`.

    Computed in at least float32. float32 and float64 inputs take two passes, as PyTorch.
    Narrower inputs take one (one read of x instead of two): the sums of d and d^2 for
    d = x - x_0, x_0 the group's first value, in float32. The shift keeps the cancellation
    of E[d^2] - E[d]^2 at the order of float32 rounding, far below bfloat16's own.
    Returns arrays broadcastable against x (kept dims), so each group is normalised with
    its own statistics.
    """
    keep = set(_normalised_axes(x, group_axes)) | {x.ndim - 1}
    axes = tuple(a for a in range(x.ndim) if a not in keep)
    xs = x.astype(statistics_dtype(x.dtype))
    if ONE_PASS_BELOW_FLOAT32 and jnp.finfo(x.dtype).bits < 32:
        shift = xs[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]
        shifted = xs - shift
        shifted_mean = jnp.mean(shifted, axes, keepdims=True)
        shifted_square = jnp.mean(jnp.square(shifted), axes, keepdims=True)
        return shift + shifted_mean, jnp.maximum(shifted_square - jnp.square(shifted_mean), 0)
    mean = jnp.mean(xs, axes, keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axes, keepdims=True)
    return mean, var


def group_size(x: jax.Array, group_axes: Sequence[int]) -> int:
    """The number of values each group's statistics are computed over (PyTorch's n)."""
    keep = set(_normalised_axes(x, group_axes)) | {x.ndim - 1}
    size = 1
    for axis, dim in enumerate(x.shape):
        if axis not in keep:
            size *= dim
    return size


def calls_in_order(stat: jax.Array, group_axes: Sequence[int]) -> jax.Array:
    """Kept-dims group statistics -> (k, C), one row per call in the release's order."""
    order = _normalised_axes(stat, group_axes)
    rest = tuple(a for a in range(stat.ndim) if a not in order)
    return jnp.transpose(stat, order + rest).reshape(-1, stat.shape[-1])


def running_update(
    running: jax.Array, calls: jax.Array, momentum: float = BN_MOMENTUM
) -> jax.Array:
    """The running statistic after k sequential momentum updates, in closed form.

    running (C,), calls (k, C) in call order -> m^k r + (1 - m) sum_i m^(k-1-i) s_i.
    """
    k = calls.shape[0]
    powers = jnp.arange(k - 1, -1, -1, dtype=calls.dtype)
    weights = (1 - momentum) * jnp.asarray(momentum, calls.dtype) ** powers
    updated = momentum**k * running.astype(calls.dtype) + weights @ calls
    return updated.astype(running.dtype)


def batch_normalize(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    group_axes: Sequence[int] = (),
    epsilon: float = BN_EPSILON,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm of x (..., C) with its own statistics: (y, mean, var).

    y (..., C) in statistics_dtype(x.dtype); mean and biased var (kept dims, see
    grouped_moments) to move the running statistics. Its gradient is PyTorch's closed form,
    which needs only x (in x's dtype) and the (1, .., C) statistics: autodiff of the
    two-pass moments would keep x - mean, a second copy of every BatchNorm input, for the
    backward pass.
    """
    n = group_size(x, group_axes)
    if n < 2:
        raise ValueError(
            f"BatchNorm in training mode needs more than one value per channel "
            f"and group (as PyTorch); got input shape {x.shape} with "
            f"group_axes {tuple(group_axes)}"
        )
    return _batch_normalize(x, scale, bias, tuple(group_axes), epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_normalize(x, scale, bias, group_axes, epsilon):
    mean, var = grouped_moments(x, group_axes)
    return normalize(x.astype(mean.dtype), mean, var, scale, bias, epsilon), mean, var


def _batch_normalize_fwd(x, scale, bias, group_axes, epsilon):
    y, mean, var = _batch_normalize(x, scale, bias, group_axes, epsilon)
    return (y, mean, var), (x, mean, var, scale)


def _batch_normalize_bwd(group_axes, epsilon, residuals, cotangents):
    x, mean, var, scale = residuals
    grad_y, grad_mean, grad_var = cotangents
    keep = set(_normalised_axes(x, group_axes)) | {x.ndim - 1}
    pooled = tuple(a for a in range(x.ndim) if a not in keep)
    n = group_size(x, group_axes)
    inv_std = jax.lax.rsqrt(var + epsilon)
    centered = x.astype(mean.dtype) - mean
    x_hat = centered * inv_std
    grad_y = grad_y.astype(mean.dtype)
    # Per group: sum(dy) and sum(dy * x_hat) (one pass over dy and x); scale and bias are
    # shared by the groups, so their gradients add the groups' sums up.
    sum_grad = jnp.sum(grad_y, pooled, keepdims=True)
    sum_grad_x_hat = jnp.sum(grad_y * x_hat, pooled, keepdims=True)
    grad_bias = sum_grad.reshape(-1, x.shape[-1]).sum(0)
    grad_scale = sum_grad_x_hat.reshape(-1, x.shape[-1]).sum(0)
    grad_x = (scale * inv_std) * (grad_y - sum_grad / n - x_hat * (sum_grad_x_hat / n))
    # The statistics are outputs too (zero cotangents when only the running statistics,
    # behind stop_gradient, use them): d mean / dx = 1 / n, d var / dx = 2 (x - mean) / n.
    grad_x = grad_x + grad_mean / n + grad_var * (2 / n) * centered
    return grad_x.astype(x.dtype), grad_scale.astype(scale.dtype), grad_bias.astype(scale.dtype)


_batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


def running_statistics_calls(
    mean: jax.Array, var: jax.Array, n: int, group_axes: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
    """Kept-dims (mean, biased var) of n values per group -> per-call (k, C) mean and
    unbiased variance (what moves the running statistics), without gradient."""
    mean, var = jax.lax.stop_gradient((mean, var))
    return calls_in_order(mean, group_axes), calls_in_order(var * (n / (n - 1)), group_axes)


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis, PyTorch's training semantics (see the module doc).

    Variables are named like `nnx.BatchNorm`'s (scale, bias, mean, var); running
    statistics are kept in at least float32; `model.train()` / `model.eval()` switch
    `use_running_average`.

    Call: x (..., C), optional group_axes -> (..., C) in `dtype` (None: x's dtype).
    """

    def __init__(
        self,
        num_features: int,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # deterministic initialisation: scale 1, bias 0
        self.num_features = num_features
        self.dtype = dtype
        self.use_running_average = False
        stat_dtype = statistics_dtype(param_dtype)
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), stat_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), stat_dtype))

    def __call__(self, x: jax.Array, group_axes: Sequence[int] = ()) -> jax.Array:
        chex.assert_axis_dimension(x, -1, self.num_features)
        compute = statistics_dtype(x.dtype)
        scale, bias = self.scale[...].astype(compute), self.bias[...].astype(compute)
        if self.use_running_average:
            mean, var = self.mean[...].astype(compute), self.var[...].astype(compute)
            y = normalize(x.astype(compute), mean, var, scale, bias)
        else:
            y, mean, var = batch_normalize(x, scale, bias, group_axes)
            call_means, call_vars = running_statistics_calls(
                mean, var, group_size(x, group_axes), group_axes
            )
            self.mean[...] = running_update(self.mean[...], call_means)
            self.var[...] = running_update(self.var[...], call_vars)
        return y.astype(self.dtype or x.dtype)

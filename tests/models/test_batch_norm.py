"""BatchNorm against PyTorch's: unbiased running variance, one momentum update per call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from psta_jax.models import batch_norm as bn_lib
from psta_jax.models.psta import BNNeck


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def test_running_update_is_k_sequential_momentum_updates():
    rng = np.random.default_rng(0)
    running, calls = rng.normal(size=4), rng.normal(size=(5, 4))
    expected = running.copy()
    for call in calls:
        expected = 0.9 * expected + 0.1 * call
    np.testing.assert_allclose(
        bn_lib.running_update(jnp.asarray(running), jnp.asarray(calls)), expected, rtol=1e-12
    )


def test_grouped_calls_equal_torch_calls_in_release_order():
    """x (2, B, P, H, W, C) with group_axes (2, 0) == torch BatchNorm2d called once per pair
    and, inside each pair, once per direction (the release's TRA loop)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5, 2, 6)) * rng.uniform(0.5, 2.0, 6) + rng.normal(size=6)
    ours = bn_lib.BatchNorm(6, dtype=jnp.float64, param_dtype=jnp.float64)
    ours.mean[...] = jnp.asarray(rng.normal(size=6))
    ours.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, 6))
    theirs = torch.nn.BatchNorm2d(6).double().train()
    theirs.running_mean.copy_(torch.tensor(np.array(ours.mean[...])))
    theirs.running_var.copy_(torch.tensor(np.array(ours.var[...])))
    y = np.asarray(ours(jnp.asarray(x), group_axes=(2, 0)))
    for pair in range(4):
        for direction in range(2):
            part = torch.from_numpy(x[direction, :, pair].transpose(0, 3, 1, 2).copy())
            expected = theirs(part).detach().numpy().transpose(0, 2, 3, 1)
            np.testing.assert_allclose(y[direction, :, pair], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.mean[...], theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.var[...], theirs.running_var.numpy(), rtol=1e-12)


def test_bn_neck_equals_torch_batchnorm1d():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 8))
    neck = BNNeck(8, param_dtype=jnp.float64)
    theirs = torch.nn.BatchNorm1d(8).double().train()
    y = np.asarray(neck(jnp.asarray(x)))
    expected = theirs(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    # n / (n - 1) = 4 / 3: the running variance moves towards the unbiased batch variance.
    np.testing.assert_allclose(neck.var[...], theirs.running_var.numpy(), rtol=1e-12)
    np.testing.assert_allclose(neck.mean[...], theirs.running_mean.numpy(), rtol=1e-12)


def test_single_value_per_channel_is_an_error():
    with pytest.raises(ValueError, match="more than one value per channel"):
        BNNeck(8)(jnp.ones((1, 8)))
    with pytest.raises(ValueError, match="group_axes"):
        bn_lib.BatchNorm(3)(jnp.ones((2, 4, 3)), group_axes=(-1,))


@pytest.mark.parametrize("group_axes", [(), (2, 0)])
def test_batch_normalize_gradient_equals_autodiff(group_axes):
    """The closed-form backward (it keeps only x) equals autodiff of the two-pass formula,
    for y, mean and var all carrying cotangents."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(2.0, 3.0, (2, 3, 4, 5, 6)))
    scale, bias = jnp.asarray(rng.normal(size=6)), jnp.asarray(rng.normal(size=6))

    def autodiff(x, scale, bias):
        mean, var = bn_lib.grouped_moments(x, group_axes)
        return bn_lib.normalize(x, mean, var, scale, bias), mean, var

    cotangents = tuple(jnp.asarray(rng.normal(size=out.shape)) for out in autodiff(x, scale, bias))
    outs, vjp = jax.vjp(lambda *a: bn_lib.batch_normalize(*a, group_axes), x, scale, bias)
    expected_outs, expected_vjp = jax.vjp(autodiff, x, scale, bias)
    for out, expected in zip(outs, expected_outs, strict=True):
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    for grad, expected in zip(vjp(cotangents), expected_vjp(cotangents), strict=True):
        np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("group_axes", [(), (2, 0)])
def test_bfloat16_one_pass_moments_equal_exact_moments(group_axes):
    """bfloat16 inputs take one-pass (shifted) statistics: within float32 rounding of the
    exact moments of the same bfloat16 values, also for a channel whose mean is 500 times its
    spread, and never a negative variance."""
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, (2, 3, 64, 5, 6)) * rng.uniform(0.01, 5, 6) + np.array(
        [0.0, 3.0, -40.0, 200.0, 1.0, 0.5]
    )
    x[..., 3] = 200.0 + 0.4 * rng.normal(size=x.shape[:-1])
    x[..., 4] = 1.5  # a constant channel: E[x^2] - E[x]^2 would round below 0
    x = jnp.asarray(x, jnp.bfloat16)
    exact_mean, exact_var = bn_lib.grouped_moments(x.astype(jnp.float64), group_axes)
    mean, var = bn_lib.grouped_moments(x, group_axes)
    assert mean.dtype == var.dtype == jnp.float32
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-6, atol=1e-6)  # a few float32 ulp
    relative_error = np.abs(np.asarray(var, np.float64) - exact_var) / np.asarray(
        exact_var + 1e-5
    )  # what normalisation divides by (BN_EPSILON)
    assert relative_error.max() < 1e-5, relative_error.max()
    assert float(var.min()) >= 0.0
    # float32 inputs keep PyTorch's two-pass statistics, bit for bit.
    x32 = x.astype(jnp.float32)
    pooled = (1, 3) if group_axes else (0, 1, 2, 3)
    two_pass = jnp.mean(
        jnp.square(x32 - jnp.mean(x32, pooled, keepdims=True)), pooled, keepdims=True
    )
    np.testing.assert_array_equal(bn_lib.grouped_moments(x32, group_axes)[1], two_pass)

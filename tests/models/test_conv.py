"""conv.py: our conv / max-pool gradients equal XLA's autodiff ones; cpu_flags parsing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from psta_jax.models import conv as conv_lib
from psta_jax.models import cpu_flags

# (kernel, stride, padding, input H, W): every kind of conv in the model, incl. odd sizes.
CONV_CASES = [(1, 1, 0, 6, 4), (1, 2, 0, 6, 4), (3, 1, 1, 6, 4), (3, 2, 1, 6, 4),
              (3, 2, 1, 7, 5), (7, 2, 3, 8, 6), (1, 2, 0, 7, 5)]


def xla_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel_size,stride,padding,height,width", CONV_CASES)
def test_own_conv_gradients_match_autodiff(kernel_size, stride, padding, height, width):
    keys = jax.random.split(jax.random.PRNGKey(kernel_size * 10 + stride), 3)
    x = jax.random.normal(keys[0], (2, height, width, 3))
    kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 3, 5))

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, stride, padding)))

    ours = jax.grad(loss, argnums=(1, 2))(conv_lib._conv2d_own_gradients, x, kernel)
    expected = jax.grad(loss, argnums=(1, 2))(xla_conv, x, kernel)
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_module_matches_torch_and_keeps_nnx_variables():
    conv = conv_lib.Conv(3, 4, 3, stride=2, kernel_init=nnx.initializers.normal(1.0),
                         rngs=nnx.Rngs(0))
    assert [path for path, _ in nnx.to_flat_state(nnx.state(conv, nnx.Param))] == [("kernel",)]
    x = np.random.default_rng(0).standard_normal((2, 5, 9, 7, 3)).astype(np.float32)
    y = conv(jnp.asarray(x))  # leading axes (2, 5) are batch
    weight = torch.from_numpy(np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x.reshape(10, 9, 7, 3).transpose(0, 3, 1, 2)), weight, stride=2,
        padding=1).numpy().transpose(0, 2, 3, 1).reshape(2, 5, 5, 4, 4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        conv(jnp.zeros((2, 9, 7, 4)))


def test_max_pool_matches_torch_including_first_max_gradient():
    rng = np.random.default_rng(1)
    # Rounded ReLU'd values: many ties inside windows, where the first maximum gets it all.
    x = np.round(np.maximum(rng.standard_normal((2, 9, 6, 3)), 0)).astype(np.float32)
    upstream = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    y, vjp = jax.vjp(conv_lib.max_pool, jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(upstream))
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    y_torch = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
    y_torch.backward(torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_array_equal(y, y_torch.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(grad, x_torch.grad.numpy().transpose(0, 2, 3, 1), atol=1e-6)


@pytest.mark.parametrize("xla_flags,enabled", [
    ("", True),
    ("--xla_force_host_platform_device_count=4", True),
    (cpu_flags.CONVOLUTIONS_OUT_OF_YNN, False),
    ("--xla_cpu_experimental_ynn_fusion_type=", False),
    ("--xla_cpu_experimental_ynn_fusion_type=dot,individual_convolution", True),
    ("--xla_cpu_experimental_ynn_fusion_type=-dot", True),
])
def test_ynn_convolutions_enabled_reads_xla_flags(monkeypatch, xla_flags, enabled):
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    assert cpu_flags.ynn_convolutions_enabled() is enabled


def test_configure_xla_cpu_respects_user_setting_and_refuses_late_calls(monkeypatch):
    user = "--xla_cpu_experimental_ynn_fusion_type=-dot"
    monkeypatch.setenv("XLA_FLAGS", user)
    cpu_flags.configure_xla_cpu()
    assert cpu_flags.ynn_convolutions_enabled()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    jnp.zeros(())  # the backend is up in this process by now
    with pytest.raises(RuntimeError, match="before JAX"):
        cpu_flags.configure_xla_cpu()

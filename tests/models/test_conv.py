"""conv.py: our conv / max-pool gradients equal XLA's autodiff ones; xla_cpu flags and the
decision to set them."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from psta_jax.models import conv as conv_lib
from psta_jax.runtime import xla_cpu
from tests.helpers.tolerances import assert_close_to_scale

# (kernel, stride, padding, input H, W): every kind of conv in the model, incl. odd sizes.
CONV_CASES = [
    (1, 1, 0, 6, 4),
    (1, 2, 0, 6, 4),
    (3, 1, 1, 6, 4),
    (3, 2, 1, 6, 4),
    (3, 2, 1, 7, 5),
    (7, 2, 3, 8, 6),
    (1, 2, 0, 7, 5),
]


def xla_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@pytest.mark.parametrize("kernel_size,stride,padding,height,width", CONV_CASES)
@pytest.mark.parametrize(
    "xla_flags", ["", xla_cpu.CONVOLUTIONS_OUT_OF_YNN], ids=["ynn_convolutions", "xla_convolutions"]
)
def test_conv2d_and_its_gradients_match_xla_autodiff(
    monkeypatch, xla_flags, kernel_size, stride, padding, height, width
):
    """On the CPU, in both settings conv2d reads at trace time: 1x1 matmuls, our im2col
    gradients (YNN convolutions) or XLA's (convolutions out of YNN)."""
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    keys = jax.random.split(jax.random.PRNGKey(kernel_size * 10 + stride), 3)
    x = jax.random.normal(keys[0], (2, height, width, 3))
    kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 3, 5))

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, stride, padding)))

    # Two float32 algorithms (im2col matmul, XLA's convolution): sums in another order.
    assert_close_to_scale(
        conv_lib.conv2d(x, kernel, stride, padding), xla_conv(x, kernel, stride, padding)
    )
    ours = jax.grad(loss, argnums=(1, 2))(conv_lib.conv2d, x, kernel)
    expected = jax.grad(loss, argnums=(1, 2))(xla_conv, x, kernel)
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        assert_close_to_scale(got, want)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_is_a_matmul_on_cpu_and_a_convolution_elsewhere(stride):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 3, 5))
    fn = jax.jit(
        jax.value_and_grad(lambda x, k: jnp.sum(conv_lib.conv2d(x, k, stride) ** 2), (0, 1))
    )

    def ops(platform):
        text = export.export(fn, platforms=(platform,))(x, kernel).mlir_module()
        return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")

    assert ops("cpu") == (0, 3)  # forward, input and kernel gradients: matmuls
    assert ops("cuda") == (3, 0)  # XLA's convolution and its two gradient convolutions


def test_conv_module_matches_torch_and_keeps_nnx_variables():
    torch = pytest.importorskip("torch")
    conv = conv_lib.Conv(
        3, 4, 3, stride=2, kernel_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0)
    )
    assert [path for path, _ in nnx.to_flat_state(nnx.state(conv, nnx.Param))] == [("kernel",)]
    x = np.random.default_rng(0).standard_normal((2, 5, 9, 7, 3)).astype(np.float32)
    y = conv(jnp.asarray(x))  # leading axes (2, 5) are batch
    weight = torch.from_numpy(np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
    expected = (
        torch.nn.functional.conv2d(
            torch.from_numpy(x.reshape(10, 9, 7, 3).transpose(0, 3, 1, 2)),
            weight,
            stride=2,
            padding=1,
        )
        .numpy()
        .transpose(0, 2, 3, 1)
        .reshape(2, 5, 5, 4, 4)
    )
    assert_close_to_scale(y, expected)
    with pytest.raises(ValueError, match="expected"):
        conv(jnp.zeros((2, 9, 7, 4)))


def test_max_pool_matches_torch_including_first_max_gradient():
    torch = pytest.importorskip("torch")
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


@pytest.mark.parametrize(
    "xla_flags,enabled",
    [
        ("", True),
        ("--xla_force_host_platform_device_count=4", True),
        (xla_cpu.CONVOLUTIONS_OUT_OF_YNN, False),
        ("--xla_cpu_experimental_ynn_fusion_type=", False),
        ("--xla_cpu_experimental_ynn_fusion_type=dot,individual_convolution", True),
        ("--xla_cpu_experimental_ynn_fusion_type=-dot", True),
    ],
)
def test_ynn_convolutions_enabled_reads_xla_flags(monkeypatch, xla_flags, enabled):
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    assert xla_cpu.ynn_convolutions_enabled() is enabled


def test_configure_xla_cpu_respects_user_settings_and_refuses_late_calls(monkeypatch):
    user = f"{xla_cpu.YNN_FLAG}=-dot {xla_cpu.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_DEFAULT"
    monkeypatch.setenv("XLA_FLAGS", user)
    jnp.zeros(())  # the backend is up in this process by now
    xla_cpu.configure_xla_cpu()  # both set by the user: nothing to add, so no error
    assert os.environ["XLA_FLAGS"] == user
    assert xla_cpu.ynn_convolutions_enabled()
    monkeypatch.setenv("XLA_FLAGS", f"{xla_cpu.YNN_FLAG}=-dot")
    with pytest.raises(RuntimeError, match="before JAX"):
        xla_cpu.configure_xla_cpu()


@pytest.mark.parametrize(
    "platforms,plugin,device_nodes,on_cpu",
    [
        ("cpu", True, True, True),
        ("cuda,cpu", False, False, False),  # JAX_PLATFORMS decides when set
        ("tpu", False, False, False),
        ("", False, True, True),  # no accelerator plugin: the CPU
        ("", True, False, True),  # a plugin but no device: JAX falls back to the CPU
        ("", True, True, False),
    ],
)
def test_configure_for_cpu_if_needed_sets_flags_only_for_cpu_runs(
    monkeypatch, platforms, plugin, device_nodes, on_cpu
):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(xla_cpu, "_accelerator_plugin_installed", lambda: plugin)
    monkeypatch.setattr(xla_cpu.glob, "glob", lambda pattern: [pattern] if device_nodes else [])
    monkeypatch.setattr(xla_cpu, "_backend_started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert xla_cpu.will_run_on_cpu() is on_cpu
    assert xla_cpu.configure_for_cpu_if_needed() is on_cpu
    assert xla_cpu.ynn_convolutions_enabled() is not on_cpu
    assert (xla_cpu.MEMORY_OPTIMIZED_SCHEDULER in os.environ["XLA_FLAGS"]) is on_cpu


def test_conv2d_follows_xla_flags_at_trace_time(monkeypatch):
    """YNN convolutions on: the CPU program computes its gradients with matmuls (no gradient
    convolution); off: XLA's own. Both give the same gradients."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))

    def grads(xla_flags):
        monkeypatch.setenv("XLA_FLAGS", xla_flags)
        fn = jax.jit(jax.grad(lambda x, k: jnp.sum(conv_lib.conv2d(x, k, 2, 1) ** 2), (0, 1)))
        text = fn.lower(x, kernel).as_text()
        return fn(x, kernel), text.count("stablehlo.convolution")

    ours, ours_convs = grads("")
    plain, plain_convs = grads(xla_cpu.CONVOLUTIONS_OUT_OF_YNN)
    assert (ours_convs, plain_convs) == (1, 3)  # forward only vs forward + 2 gradients
    for got, want in zip(ours, plain, strict=True):
        assert_close_to_scale(got, want)

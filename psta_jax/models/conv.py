"""2-D convolution and max-pooling whose gradients are fast on XLA:CPU (jaxlib 0.10.2).

By default XLA:CPU hands convolutions to YNNPACK fusions. Forward convolutions are fine
there, but the ones autodiff derives for gradients (the kernel gradient contracts over
the batch; the input gradient of a strided conv dilates its input) are 5-50x slower than
the forward pass on ResNet-50's layer shapes (a stride-2 1x1 shortcut at 32 frames: 25 s
vs 1.6 s). `conv2d` picks, at trace time:

- with `xla_cpu.configure_xla_cpu()` (convolutions out of YNN) plain
  `lax.conv_general_dilated` and XLA's own gradient convolutions, fast on every backend;
- otherwise the same forward convolution with a custom VJP whose backward pass depends on
  the platform the program is lowered for (`lax.platform_dependent`, resolved at
  lowering): XLA's own transposed convolutions on GPU/TPU (cuDNN's, the TPU's), and on the
  CPU ours: the input gradient is a stride-1 forward convolution of the output gradient
  with the flipped, transposed kernel (1x1: a matmul; strided: col2im, one matmul then a
  scatter-sum of the taps onto the stride grid), the kernel gradient one matmul between
  the im2col patches of the input and the output gradient.

Same math as `jax.lax.conv_general_dilated` (NHWC, HWIO, symmetric zero padding); only the
order of float additions differs. `max_pool` likewise replaces XLA:CPU's slow
select-and-scatter by its own gradient, on the CPU only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from psta_jax import xla_cpu

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=_DIMENSIONS)


def _patches(x: jax.Array, kernel_size: tuple[int, int], stride: int, padding: int,
             out_size: tuple[int, int]) -> jax.Array:
    """im2col: (N, H, W, C) -> (N, Ho, Wo, kh * kw * C), taps ordered like an HWIO kernel."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    kh, kw = kernel_size
    ho, wo = out_size
    taps = [
        x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
        for i in range(kh) for j in range(kw)
    ]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _input_grad(grad_out: jax.Array, kernel: jax.Array, stride: int, padding: int,
                in_size: tuple[int, int]) -> jax.Array:
    """d loss / d x for y = conv(x, kernel, stride, padding): (N, H, W, Cin)."""
    kh, kw = kernel.shape[:2]
    ho, wo = grad_out.shape[1:3]
    # Scatter the output gradient onto the stride grid (interior padding) and pad its
    # edges so that correlating with the flipped kernel gives exactly in_size.
    pad_h = (kh - 1 - padding, in_size[0] + padding - stride * (ho - 1) - 1, stride - 1)
    pad_w = (kw - 1 - padding, in_size[1] + padding - stride * (wo - 1) - 1, stride - 1)
    if min(pad_h[:2] + pad_w[:2]) < 0:
        raise ValueError(f"conv2d: padding {padding} > kernel size - 1 {kernel.shape[:2]} "
                         "is not supported")
    zero = jnp.zeros((), grad_out.dtype)
    if kh == kw == 1:  # a matmul, then the scatter (nothing to scatter at stride 1)
        grad_in = jnp.einsum("nhwo,io->nhwi", grad_out, kernel[0, 0])
        return jax.lax.pad(grad_in, zero, ((0, 0, 0), pad_h, pad_w, (0, 0, 0)))
    if stride > 1:
        # col2im: one matmul to patch gradients, then each tap's slice is scattered onto
        # the stride grid and summed (a correlation over the dilated gradient would
        # spend stride**2 times the FLOPs on zeros).
        cin = kernel.shape[2]
        grad_patches = jnp.einsum("nhwo,ko->nhwk", grad_out,
                                  kernel.reshape(kh * kw * cin, -1))
        grad_in = None
        for tap in range(kh * kw):
            i, j = divmod(tap, kw)
            # tap (i, j) of output (r, c) reads input (s*r + i - padding, s*c + j - padding)
            tap_h = (i - padding, in_size[0] - 1 - (stride * (ho - 1) + i - padding), stride - 1)
            tap_w = (j - padding, in_size[1] - 1 - (stride * (wo - 1) + j - padding), stride - 1)
            part = jax.lax.pad(grad_patches[..., tap * cin:(tap + 1) * cin], zero,
                               ((0, 0, 0), tap_h, tap_w, (0, 0, 0)))
            grad_in = part if grad_in is None else grad_in + part
        return grad_in
    dilated = jax.lax.pad(grad_out, zero, ((0, 0, 0), pad_h, pad_w, (0, 0, 0)))
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    return _xla_conv(dilated, flipped, 1, 0)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """Cross-correlation as PyTorch's Conv2d: x (N, H, W, Cin), kernel (kh, kw, Cin, Cout),
    symmetric zero `padding`, `stride` -> (N, Ho, Wo, Cout).

    With convolutions out of XLA:CPU's YNN fusions (`xla_cpu.configure_xla_cpu`) XLA's
    own gradient convolutions are the fast ones; with them in (the jaxlib default) ours on
    the CPU and XLA's on every other platform.
    """
    if xla_cpu.ynn_convolutions_enabled():
        return _conv2d_own_gradients(x, kernel, stride, padding)
    return _xla_conv(x, kernel, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_own_gradients(x: jax.Array, kernel: jax.Array, stride: int,
                          padding: int) -> jax.Array:
    return _xla_conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
    return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, grad_out):
    x, kernel = residuals
    return jax.lax.platform_dependent(
        x, kernel, grad_out,
        cpu=functools.partial(_conv2d_cpu_grads, stride=stride, padding=padding),
        default=functools.partial(_conv2d_xla_grads, stride=stride, padding=padding))


def _conv2d_xla_grads(x, kernel, grad_out, *, stride, padding):
    """XLA's own transposed convolutions (what autodiff of `_xla_conv` gives)."""
    _, vjp = jax.vjp(lambda x, kernel: _xla_conv(x, kernel, stride, padding), x, kernel)
    return vjp(grad_out)


def _conv2d_cpu_grads(x, kernel, grad_out, *, stride, padding):
    """im2col / col2im gradients: matmuls instead of YNN's slow gradient convolutions."""
    kh, kw, cin, cout = kernel.shape
    patches = _patches(x, (kh, kw), stride, padding, grad_out.shape[1:3])
    # At least float32 accumulation (bfloat16 inputs); float64 stays float64.
    grad_kernel = jnp.einsum("nhwk,nhwo->ko", patches, grad_out,
                             preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    grad_kernel = grad_kernel.reshape(kh, kw, cin, cout).astype(kernel.dtype)
    grad_x = _input_grad(grad_out, kernel, stride, padding, x.shape[1:3]).astype(x.dtype)
    return grad_x, grad_kernel


_conv2d_own_gradients.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nnx.Conv):
    """`nnx.Conv` (same variables: `kernel` (kh, kw, in, out)) computed with `conv2d`.

    Only what the models use: square kernels, equal strides, symmetric padding, no bias,
    no grouping or dilation.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
                 stride: int = 1, **kwargs):
        padding = kernel_size // 2
        super().__init__(in_features, out_features, (kernel_size, kernel_size),
                         strides=stride, padding=((padding, padding), (padding, padding)),
                         use_bias=False, **kwargs)
        self.stride = stride
        self.pad = padding

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., H, W, in_features) -> (..., Ho, Wo, out_features); leading axes are batch."""
        if x.ndim < 4 or x.shape[-1] != self.in_features:
            raise ValueError(f"Conv: expected (..., H, W, {self.in_features}), got {x.shape}")
        kernel = self.kernel[...]
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        batch_shape = x.shape[:-3]
        y = conv2d(x.reshape(-1, *x.shape[-3:]), kernel, self.stride, self.pad)
        return y.reshape(*batch_shape, *y.shape[1:])


def _pool_taps(x: jax.Array, window: int, stride: int, padding: int,
               out_size: tuple[int, int]) -> list[jax.Array]:
    """The window*window strided views of x padded with -inf, each (N, Ho, Wo, C)."""
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=-jnp.inf)
    ho, wo = out_size
    return [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """PyTorch's MaxPool2d (square window, symmetric -inf padding): (N, H, W, C) ->
    (N, Ho, Wo, C). Its gradient goes to the first maximum of each window in row-major
    order, like PyTorch's (on the CPU without XLA:CPU's slow select-and-scatter)."""
    return _reduce_window_max(x, window, stride, padding)


def _reduce_window_max(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1),
                                 ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _max_pool_fwd(x, window, stride, padding):
    y = max_pool(x, window, stride, padding)
    return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, grad_out):
    x, y = residuals
    sizes = dict(window=window, stride=stride, padding=padding)
    return jax.lax.platform_dependent(
        x, y, grad_out, cpu=functools.partial(_max_pool_cpu_grad, **sizes),
        default=functools.partial(_max_pool_xla_grad, **sizes))


def _max_pool_xla_grad(x, y, grad_out, *, window, stride, padding):
    """XLA's select-and-scatter (what autodiff of `reduce_window` max gives)."""
    del y
    _, vjp = jax.vjp(lambda x: _reduce_window_max(x, window, stride, padding), x)
    return vjp(grad_out)


def _max_pool_cpu_grad(x, y, grad_out, *, window, stride, padding):
    """Per-tap masks and pads: XLA:CPU's select-and-scatter is slow."""
    (h, w), (ho, wo) = x.shape[1:3], y.shape[1:3]
    zero = jnp.zeros((), grad_out.dtype)
    claimed = jnp.zeros(y.shape, bool)
    grad_in = None
    for tap, x_tap in enumerate(_pool_taps(x, window, stride, padding, (ho, wo))):
        i, j = divmod(tap, window)
        is_first_max = (x_tap == y) & ~claimed
        claimed = claimed | is_first_max
        tap_h = (i - padding, h - 1 - (stride * (ho - 1) + i - padding), stride - 1)
        tap_w = (j - padding, w - 1 - (stride * (wo - 1) + j - padding), stride - 1)
        part = jax.lax.pad(jnp.where(is_first_max, grad_out, zero), zero,
                           ((0, 0, 0), tap_h, tap_w, (0, 0, 0)))
        grad_in = part if grad_in is None else grad_in + part
    return (grad_in,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)

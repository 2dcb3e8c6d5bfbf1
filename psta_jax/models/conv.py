"""2-D convolution and max-pooling that are fast on XLA:CPU (jaxlib 0.10.2) and plain XLA
everywhere else.

Every choice below is made per lowering platform (`lax.platform_dependent`, resolved when
the program is lowered): a GPU or TPU program gets XLA's own convolutions and gradients
(cuDNN's, the TPU's), whatever runs on the CPU. On the CPU:

- 1x1 convolutions (half of ResNet-50's FLOPs) are matmuls on the (N*H*W, C) view, forward
  and backward. XLA:CPU runs a 1x1 kernel gradient as a convolution over transposed copies
  of the activations (N, H, W, C) -> (C, H, W, N), one per layer, a large share of a
  ResNet-50 step; as one matmul it needs no copy (docs/benchmarks.md).
- kxk convolutions: XLA's own. By default XLA:CPU hands convolutions to YNNPACK, whose
  gradient convolutions (the kernel gradient contracts over the batch; the input gradient
  of a strided conv dilates its input) are several times slower than the forward pass on
  ResNet-50's shapes; `xla_cpu.configure_xla_cpu()` takes convolutions out of YNN, and
  where it has not (XLA_FLAGS read at trace time) the gradients are ours: the input
  gradient a stride-1 forward convolution of the output gradient with the flipped,
  transposed kernel (strided: col2im, one matmul then a scatter-sum of the taps onto the
  stride grid), the kernel gradient one matmul between the im2col patches of the input
  and the output gradient.

Same math as `jax.lax.conv_general_dilated` (NHWC, HWIO, symmetric zero padding); only the
order of float additions differs. `max_pool` likewise replaces XLA:CPU's slow
select-and-scatter by its own gradient, on the CPU only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from psta_jax.runtime import xla_cpu

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((padding, padding), (padding, padding)),
        dimension_numbers=_DIMENSIONS,
    )


def _patches(
    x: jax.Array, kernel_size: tuple[int, int], stride: int, padding: int, out_size: tuple[int, int]
) -> jax.Array:
    """im2col: (N, H, W, C) -> (N, Ho, Wo, kh * kw * C), taps ordered like an HWIO kernel."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    kh, kw = kernel_size
    ho, wo = out_size
    taps = [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(kh)
        for j in range(kw)
    ]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _input_grad(
    grad_out: jax.Array, kernel: jax.Array, stride: int, padding: int, in_size: tuple[int, int]
) -> jax.Array:
    """d loss / d x for y = conv(x, kernel, stride, padding): (N, H, W, Cin)."""
    kh, kw = kernel.shape[:2]
    ho, wo = grad_out.shape[1:3]
    # Scatter the output gradient onto the stride grid (interior padding) and pad its
    # edges so that correlating with the flipped kernel gives exactly in_size.
    pad_h = (kh - 1 - padding, in_size[0] + padding - stride * (ho - 1) - 1, stride - 1)
    pad_w = (kw - 1 - padding, in_size[1] + padding - stride * (wo - 1) - 1, stride - 1)
    if min(pad_h[:2] + pad_w[:2]) < 0:
        raise ValueError(
            f"conv2d: padding {padding} > kernel size - 1 {kernel.shape[:2]} is not supported"
        )
    zero = jnp.zeros((), grad_out.dtype)
    if kh == kw == 1:  # a matmul, then the scatter (nothing to scatter at stride 1)
        grad_in = jnp.dot(grad_out.reshape(-1, grad_out.shape[-1]), kernel[0, 0].T)
        grad_in = grad_in.reshape(*grad_out.shape[:3], -1)
        return jax.lax.pad(grad_in, zero, ((0, 0, 0), pad_h, pad_w, (0, 0, 0)))
    if stride > 1:
        # col2im: one matmul to patch gradients, then each tap's slice is scattered onto
        # the stride grid and summed (a correlation over the dilated gradient would
        # spend stride**2 times the FLOPs on zeros).
        cin = kernel.shape[2]
        grad_patches = jnp.einsum("nhwo,ko->nhwk", grad_out, kernel.reshape(kh * kw * cin, -1))
        grad_in = None
        for tap in range(kh * kw):
            i, j = divmod(tap, kw)
            # tap (i, j) of output (r, c) reads input (s*r + i - padding, s*c + j - padding)
            tap_h = (i - padding, in_size[0] - 1 - (stride * (ho - 1) + i - padding), stride - 1)
            tap_w = (j - padding, in_size[1] - 1 - (stride * (wo - 1) + j - padding), stride - 1)
            part = jax.lax.pad(
                grad_patches[..., tap * cin : (tap + 1) * cin],
                zero,
                ((0, 0, 0), tap_h, tap_w, (0, 0, 0)),
            )
            grad_in = part if grad_in is None else grad_in + part
        return grad_in
    dilated = jax.lax.pad(grad_out, zero, ((0, 0, 0), pad_h, pad_w, (0, 0, 0)))
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    return _xla_conv(dilated, flipped, 1, 0)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """Cross-correlation as PyTorch's Conv2d: x (N, H, W, Cin), kernel (kh, kw, Cin, Cout),
    symmetric zero `padding`, `stride` -> (N, Ho, Wo, Cout).

    XLA's convolution and gradients on GPU/TPU; on the CPU 1x1 convolutions are matmuls and
    kxk gradients are ours while YNN runs convolutions (see the module docstring).
    """
    return _conv2d(x, kernel, stride, padding)


def _is_pointwise(kernel: jax.Array, padding: int) -> bool:
    return kernel.shape[:2] == (1, 1) and padding == 0


def _pointwise_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A 1x1 conv as one matmul: (N, H, W, Cin) -> (N, Ho, Wo, Cout)."""
    x = x[:, ::stride, ::stride]
    y = jnp.dot(
        x.reshape(-1, x.shape[-1]),
        kernel[0, 0],
        preferred_element_type=jnp.promote_types(x.dtype, jnp.float32),
    )
    return y.astype(x.dtype).reshape(*x.shape[:3], kernel.shape[-1])


def _forward(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    if not _is_pointwise(kernel, padding):
        return _xla_conv(x, kernel, stride, padding)
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=functools.partial(_pointwise_matmul, stride=stride),
        default=functools.partial(_xla_conv, stride=stride, padding=padding),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return _forward(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
    return _forward(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, grad_out):
    x, kernel = residuals
    if _is_pointwise(kernel, padding):
        cpu_grads = _pointwise_cpu_grads
    elif xla_cpu.ynn_convolutions_enabled():
        cpu_grads = _conv2d_cpu_grads
    else:
        cpu_grads = _conv2d_xla_grads
    return jax.lax.platform_dependent(
        x,
        kernel,
        grad_out,
        cpu=functools.partial(cpu_grads, stride=stride, padding=padding),
        default=functools.partial(_conv2d_xla_grads, stride=stride, padding=padding),
    )


def _conv2d_xla_grads(x, kernel, grad_out, *, stride, padding):
    """XLA's own transposed convolutions (what autodiff of `_xla_conv` gives)."""
    _, vjp = jax.vjp(lambda x, kernel: _xla_conv(x, kernel, stride, padding), x, kernel)
    return vjp(grad_out)


def _flat_matmul_grad_kernel(patches: jax.Array, grad_out: jax.Array) -> jax.Array:
    """sum over n, h, w of patches[n, h, w, :] (x) grad_out[n, h, w, :]: (K, Cout), as one
    matmul on the flattened (N*H*W, .) views (an einsum over three contracting axes gets
    copies of both operands on XLA:CPU). At least float32 accumulation."""
    return jax.lax.dot_general(
        patches.reshape(-1, patches.shape[-1]),
        grad_out.reshape(-1, grad_out.shape[-1]),
        (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.promote_types(patches.dtype, jnp.float32),
    )


def _pointwise_cpu_grads(x, kernel, grad_out, *, stride, padding):
    """1x1 conv gradients as matmuls (the input gradient scattered onto the stride grid)."""
    grad_kernel = _flat_matmul_grad_kernel(x[:, ::stride, ::stride], grad_out)
    grad_x = _input_grad(grad_out, kernel, stride, padding, x.shape[1:3]).astype(x.dtype)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


def _conv2d_cpu_grads(x, kernel, grad_out, *, stride, padding):
    """im2col / col2im gradients: matmuls instead of YNN's slow gradient convolutions."""
    kh, kw = kernel.shape[:2]
    patches = _patches(x, (kh, kw), stride, padding, grad_out.shape[1:3])
    grad_kernel = _flat_matmul_grad_kernel(patches, grad_out)
    grad_x = _input_grad(grad_out, kernel, stride, padding, x.shape[1:3]).astype(x.dtype)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nnx.Conv):
    """`nnx.Conv` (same variables: `kernel` (kh, kw, in, out)) computed with `conv2d`.

    Only what the models use: square kernels, equal strides, symmetric padding, no bias,
    no grouping or dilation.
    """

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1, **kwargs
    ):
        padding = kernel_size // 2
        super().__init__(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((padding, padding), (padding, padding)),
            use_bias=False,
            **kwargs,
        )
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


def _pool_taps(
    x: jax.Array, window: int, stride: int, padding: int, out_size: tuple[int, int]
) -> list[jax.Array]:
    """The window*window strided views of x padded with -inf, each (N, Ho, Wo, C)."""
    x = jnp.pad(
        x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf
    )
    ho, wo = out_size
    return [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(window)
        for j in range(window)
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """PyTorch's MaxPool2d (square window, symmetric -inf padding): (N, H, W, C) ->
    (N, Ho, Wo, C). Its gradient goes to the first maximum of each window in row-major
    order, like PyTorch's (on the CPU without XLA:CPU's slow select-and-scatter)."""
    return _reduce_window_max(x, window, stride, padding)


def _reduce_window_max(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, window, window, 1),
        (1, stride, stride, 1),
        ((0, 0), (padding, padding), (padding, padding), (0, 0)),
    )


def _max_pool_fwd(x, window, stride, padding):
    y = max_pool(x, window, stride, padding)
    return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, grad_out):
    x, y = residuals
    sizes = dict(window=window, stride=stride, padding=padding)
    return jax.lax.platform_dependent(
        x,
        y,
        grad_out,
        cpu=functools.partial(_max_pool_cpu_grad, **sizes),
        default=functools.partial(_max_pool_xla_grad, **sizes),
    )


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
        part = jax.lax.pad(
            jnp.where(is_first_max, grad_out, zero), zero, ((0, 0, 0), tap_h, tap_w, (0, 0, 0))
        )
        grad_in = part if grad_in is None else grad_in + part
    return (grad_in,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)

"""XLA:CPU options for PSTA, set through XLA_FLAGS before JAX starts its CPU backend.

jaxlib 0.10.2 runs convolutions, dots and reductions through YNNPACK fusions by default.
Its reductions (BatchNorm statistics) and dots are fast, but its convolutions are not for
the convolutions autodiff derives for gradients (kernel gradients contracting over the
batch, input gradients of strided convs): 5-50x slower than XLA's own Eigen kernels on
ResNet-50's layer shapes at 256x128. `configure_xla_cpu()` takes only the convolutions
out of YNN (`-individual_convolution`); turning every YNN fusion off instead makes the
BatchNorm reductions ~10x slower.

Call `configure_xla_cpu()` first thing in an entry point (before anything creates a JAX
array); once the backend exists it can no longer change and the call raises. Without it
`conv.conv2d` still avoids the slow paths by computing its own gradients.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CONVOLUTIONS_OUT_OF_YNN = f"{YNN_FLAG}=-individual_convolution"


def _backend_started() -> bool:
    import jax._src.xla_bridge as xla_bridge  # noqa: PLC0415 (private; read only)

    return bool(getattr(xla_bridge, "_backends", None))


def configure_xla_cpu() -> None:
    """Appends the PSTA XLA:CPU flags to XLA_FLAGS (idempotent; respects a user setting)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return  # set explicitly by the user
    if _backend_started():
        raise RuntimeError("configure_xla_cpu() must run before JAX initialises its "
                           "backends (call it before creating any jax.Array)")
    os.environ["XLA_FLAGS"] = f"{flags} {CONVOLUTIONS_OUT_OF_YNN}".strip()


def ynn_convolutions_enabled() -> bool:
    """Whether XLA_FLAGS leaves convolutions to YNN fusions (the jaxlib default)."""
    value = None
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith(f"{YNN_FLAG}="):
            value = flag.split("=", 1)[1]
    if value is None:
        return True
    items = [item for item in value.split(",") if item]
    if items and all(item[0] in "+-" for item in items):  # edits of the default list
        return "-individual_convolution" not in items
    return "individual_convolution" in items  # an explicit list (empty: YNN off)

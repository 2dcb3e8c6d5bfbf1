"""XLA:CPU options for PSTA, set through XLA_FLAGS before JAX starts its CPU backend.

jaxlib 0.10.2 routes convolutions and dots through YNNPACK fusions by default. Their
forward convolutions are fine, but the convolutions autodiff derives for gradients (kernel
gradients contracting over the batch, input gradients of strided convs) run 5-50x slower
there than in XLA's own Eigen kernels (measured on ResNet-50's layer shapes at 256x128).
Switching the YNN fusions off makes a ResNet-50 train step several times faster and costs
the forward pass nothing measurable.

Call `configure_xla_cpu()` first thing in an entry point (before anything touches a JAX
array or device); once the backend exists it can no longer change and the call raises.
`conv.conv2d` stays fast either way: it computes its own gradients when YNN is on.
"""

from __future__ import annotations

import os

DISABLE_YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type="


def _backend_started() -> bool:
    import jax._src.xla_bridge as xla_bridge  # noqa: PLC0415 (private; read only)

    return bool(getattr(xla_bridge, "_backends", None))


def configure_xla_cpu() -> None:
    """Appends the PSTA XLA:CPU flags to XLA_FLAGS (idempotent; respects a user setting)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return  # set explicitly by the user
    if _backend_started():
        raise RuntimeError("configure_xla_cpu() must run before JAX initialises its "
                           "backends (call it before creating any jax.Array)")
    os.environ["XLA_FLAGS"] = f"{flags} {DISABLE_YNN_FUSIONS}".strip()


def ynn_fusions_enabled() -> bool:
    """Whether XLA_FLAGS leaves the YNN fusions on (the jaxlib default)."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in flags.split():
        if flag.startswith("--xla_cpu_experimental_ynn_fusion_type="):
            return flag.split("=", 1)[1] != ""
    return True

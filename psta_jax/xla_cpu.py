"""XLA:CPU options for PSTA, set through XLA_FLAGS before JAX starts its CPU backend.

jaxlib 0.10.2 runs convolutions, dots and reductions through YNNPACK fusions by default.
Its reductions (BatchNorm statistics) and dots are fast, but its convolutions are not for
the convolutions autodiff derives for gradients (kernel gradients contracting over the
batch, input gradients of strided convs): 5-50x slower than XLA's own Eigen kernels on
ResNet-50's layer shapes at 256x128. `configure_xla_cpu()` takes only the convolutions
out of YNN (`-individual_convolution`); turning every YNN fusion off instead makes the
BatchNorm reductions ~10x slower. It also picks XLA:CPU's memory-optimised scheduler.

Every entry point that computes calls `configure_for_cpu_if_needed()` first thing (before
anything creates a JAX array; once the backend exists the flags can no longer change):

    from psta_jax import xla_cpu
    xla_cpu.configure_for_cpu_if_needed()  # before the first JAX computation

It sets the flags only when the process will run on the CPU (JAX_PLATFORMS names cpu
first, or no accelerator plugin and device are present). Without the flags
`models.conv.conv2d` still avoids YNN's slow gradient convolutions on the CPU by computing
its own, and only there: the choice is made per lowering platform.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import warnings

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CONVOLUTIONS_OUT_OF_YNN = f"{YNN_FLAG}=-individual_convolution"
SCHEDULER_FLAG = "--xla_cpu_scheduler_type"
# Orders the train step's ops for the least live memory: XLA's temporaries 2.37 -> 2.17
# GiB, peak RSS 4.26 -> 3.98 GiB for a P=2 x K=2 step at 256x128 (no slower measured).
MEMORY_OPTIMIZED_SCHEDULER = f"{SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"

# Device nodes of the accelerators JAX has plugins for (NVIDIA, AMD ROCm, TPU).
_ACCELERATOR_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*",
                             "/dev/vfio/[0-9]*")


def _backend_started() -> bool:
    import jax._src.xla_bridge as xla_bridge  # noqa: PLC0415 (private; read only)

    return bool(getattr(xla_bridge, "_backends", None))


def configure_xla_cpu() -> None:
    """Appends the PSTA XLA:CPU flags to XLA_FLAGS (idempotent; a flag the user set stays
    as set)."""
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in (CONVOLUTIONS_OUT_OF_YNN, MEMORY_OPTIMIZED_SCHEDULER)
               if f.split("=")[0] not in flags]
    if not missing:
        return
    if _backend_started():
        raise RuntimeError("configure_xla_cpu() must run before JAX initialises its "
                           "backends (call it before creating any jax.Array)")
    os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


def _accelerator_plugin_installed() -> bool:
    """Whether a PJRT plugin for an accelerator is installed (found without importing JAX's
    backends: the `jax_plugins` namespace and entry points, and libtpu)."""
    if importlib.util.find_spec("libtpu") is not None:
        return True
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        if any(True for _ in pkgutil.iter_modules(namespace.submodule_search_locations)):
            return True
    return bool(importlib.metadata.entry_points(group="jax_plugins"))


def will_run_on_cpu() -> bool:
    """Whether JAX's default backend in this process will be the CPU, decided without
    starting any backend: JAX_PLATFORMS if set (its first platform wins), else whether an
    accelerator plugin is installed and an accelerator device node is present."""
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    if not _accelerator_plugin_installed():
        return True
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICE_NODES)


def configure_for_cpu_if_needed() -> bool:
    """`configure_xla_cpu()` when this process will compute on the CPU; returns whether the
    flags are set. Call it before anything creates a JAX array; called later (JAX already
    running, e.g. a CLI's main() called from a notebook) it warns and changes nothing."""
    if not will_run_on_cpu():
        return False
    if YNN_FLAG not in os.environ.get("XLA_FLAGS", "") and _backend_started():
        warnings.warn("JAX is already running: the XLA:CPU flags of psta_jax.xla_cpu are not "
                      "applied (call configure_for_cpu_if_needed() before any JAX "
                      "computation)", stacklevel=2)
        return False
    configure_xla_cpu()
    return True


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


def release_compilation_memory() -> bool:
    """Frees what compiling left behind, before a compiled program runs: JAX's tracing and
    lowering caches (jitted functions compile again on their next call; AOT-compiled
    executables that callers hold stay valid), then the heap memory glibc keeps
    (`malloc_trim(0)`). XLA's compiler frees about 1 GB after the full train step, which
    glibc would otherwise keep in its arenas; the caches hold another ~0.15 GB. Together
    the train step's peak RSS drops by that much. Returns whether glibc released memory
    (False where libc has no malloc_trim)."""
    import jax  # noqa: PLC0415 (this module is imported before JAX starts)

    jax.clear_caches()
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False

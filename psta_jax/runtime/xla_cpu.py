"""XLA:CPU setup for PSTA: XLA_FLAGS set before JAX starts its CPU backend, and glibc's heap
kept for reuse between calls.

jaxlib 0.10.2 runs convolutions, dots and reductions through YNNPACK fusions by default.
Its reductions (BatchNorm statistics) and dots are fast, but not its convolutions of the
shapes autodiff derives for gradients (kernel gradients contracting over the batch, input
gradients of strided convs), which XLA's own Eigen kernels run several times faster.
`configure_xla_cpu()` takes only the convolutions out of YNN (`-individual_convolution`):
turning every YNN fusion off would slow the BatchNorm reductions. It also picks XLA:CPU's
memory-optimised scheduler. The measurements behind each choice: docs/benchmarks.md, "Why
the CPU setup is what it is".

Every entry point that computes calls `configure_for_cpu_if_needed()` first thing (before
anything creates a JAX array; once the backend exists the flags can no longer change):

    from psta_jax.runtime import xla_cpu
    xla_cpu.configure_for_cpu_if_needed()  # before the first JAX computation

It sets the flags only when the process will run on the CPU (JAX_PLATFORMS names cpu
first, or no accelerator plugin and device are present), and then also makes glibc keep the
memory XLA:CPU frees (`keep_freed_memory()`), so each call reuses the pages of the last.
Without the flags `models.conv.conv2d` still avoids YNN's slow gradient convolutions on the
CPU by computing its own, and only there: the choice is made per lowering platform.
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
# Orders the train step's ops for the least live memory (a lower peak, no slower).
MEMORY_OPTIMIZED_SCHEDULER = f"{SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"

# Device nodes of the accelerators JAX has plugins for (NVIDIA, AMD ROCm, TPU).
_ACCELERATOR_DEVICE_NODES = (
    "/dev/nvidia[0-9]*",
    "/dev/kfd",
    "/dev/accel[0-9]*",
    "/dev/vfio/[0-9]*",
)


def _backend_started() -> bool:
    import jax._src.xla_bridge as xla_bridge  # noqa: PLC0415 (private; read only)

    return bool(getattr(xla_bridge, "_backends", None))


def configure_xla_cpu() -> None:
    """Appends the PSTA XLA:CPU flags to XLA_FLAGS (idempotent; a flag the user set stays
    as set)."""
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [
        f
        for f in (CONVOLUTIONS_OUT_OF_YNN, MEMORY_OPTIMIZED_SCHEDULER)
        if f.split("=")[0] not in flags
    ]
    if not missing:
        return
    if _backend_started():
        raise RuntimeError(
            "configure_xla_cpu() must run before JAX initialises its "
            "backends (call it before creating any jax.Array)"
        )
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
    """`configure_xla_cpu()` and `keep_freed_memory()` when this process will compute on the
    CPU; returns whether the flags are set. Call it before anything creates a JAX array, and
    before importing TensorFlow (see keep_freed_memory); called later (JAX already running,
    e.g. a CLI's main() called from a notebook) it warns and changes nothing."""
    if not will_run_on_cpu():
        return False
    if YNN_FLAG not in os.environ.get("XLA_FLAGS", "") and _backend_started():
        warnings.warn(
            "JAX is already running: the XLA:CPU flags of psta_jax.runtime.xla_cpu "
            "are not applied (call configure_for_cpu_if_needed() before any JAX "
            "computation)",
            stacklevel=2,
        )
        return False
    configure_xla_cpu()
    keep_freed_memory()
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


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (mallopt and malloc_trim are glibc's)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError off glibc)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Makes glibc keep the memory the process frees, so XLA:CPU reuses its pages.

    Each call of a compiled program allocates its temporaries afresh (a block of tens of MiB
    for an eval clip, GiBs for a train step) and frees them when it ends. glibc serves large
    blocks with new memory maps (and from a thread's own arena, with maps whatever the
    settings) and unmaps them on free, so every call faults its temporaries in again. With
    one arena, no memory maps and no trimming, the heap keeps the freed pages and the next
    call finds them. The heap then stays at its peak until `trim_heap()` or the process's
    end, and freed blocks that no longer fit the next request add to it.

    glibc only (elsewhere returns False), and effective for the threads that first allocate
    after it: call it before JAX and TensorFlow start their threads (after TensorFlow has
    run, most of the faults come back). A GLIBC_TUNABLES with glibc.malloc settings wins:
    nothing is changed then (the way to opt out, e.g.
    GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072). Returns whether the settings apply.
    """
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # -1: never trim (mallopt's value is an int; glibc reads -1 as "no limit").
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def trim_heap() -> bool:
    """Hands the free memory of glibc's heap back to the system (`malloc_trim(0)`); returns
    whether any went back (False off glibc). After `keep_freed_memory()` the heap keeps a
    phase's peak: a training run trims it after each evaluation, before the steps resume."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def release_compilation_memory() -> bool:
    """Frees what compiling left behind, before a compiled program runs: JAX's tracing and
    lowering caches (jitted functions compile again on their next call; AOT-compiled
    executables that callers hold stay valid), then the heap memory glibc keeps
    (`malloc_trim(0)`). XLA's compiler frees much memory after compiling the train step,
    which glibc would otherwise keep in its arenas beside the step's own. Returns whether
    glibc released memory (False where libc has no malloc_trim)."""
    import jax  # noqa: PLC0415 (this module is imported before JAX starts)

    jax.clear_caches()
    gc.collect()
    return trim_heap()

"""Joining a multi-process JAX run (TPU pod slices, GPU clusters, loopback tests).

`initialize_from_flags(flag_values)` must run before any other JAX call. It decides, in this order:
1. explicit flags `--coordinator_address --num_processes --process_id` (or the environment
   variables PSTA_COORDINATOR_ADDRESS, PSTA_NUM_PROCESSES, PSTA_PROCESS_ID, which the local
   launcher `python -m psta_jax.launch` sets);
2. a cluster JAX detects by itself (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes...):
   `--distributed=auto` calls `jax.distributed.initialize()` with no arguments;
3. otherwise a single process.
`--cpu_devices N` (or PSTA_CPU_DEVICES) gives a CPU-only process N devices, with gloo
collectives across processes: that is how multi-host runs are tested on one machine.
"""

from __future__ import annotations

import os

from absl import flags, logging

from psta_jax.runtime.errors import ConfigError


def define_flags(values: flags.FlagValues) -> None:
    """The flags of a command that can join a multi-process run (`psta_jax.main`)."""
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0 for a multi-process run.",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes in the run.", flag_values=values
    )
    flags.DEFINE_integer("process_id", None, "This process's index, 0-based.", flag_values=values)
    flags.DEFINE_enum(
        "distributed",
        "off",
        ["off", "auto"],
        "'auto': let JAX detect the cluster (Cloud TPU, SLURM, Open MPI, ...) and initialise.",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "cpu_devices",
        None,
        "Number of CPU devices for this process (tests and CPU clusters).",
        flag_values=values,
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    cpu_devices: int | None = None,
) -> None:
    """Configures devices and joins the other processes. Call before any other JAX call."""
    import jax

    if cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        missing = [
            name
            for name, v in zip(
                ("coordinator_address", "num_processes", "process_id"), explicit, strict=True
            )
            if v is None
        ]
        if missing:
            raise ConfigError(
                f"a multi-process run needs coordinator_address, num_processes and process_id; "
                f"missing {missing}"
            )
        if cpu_devices:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        logging.info(
            "joined %s as process %d of %d", coordinator_address, process_id, num_processes
        )
    elif auto:
        jax.distributed.initialize()


def initialize_from_flags(values: flags.FlagValues) -> None:
    """`initialize` from the flags of `define_flags`, else the PSTA_* environment variables."""
    initialize(
        coordinator_address=values.coordinator_address
        or os.environ.get("PSTA_COORDINATOR_ADDRESS")
        or None,
        num_processes=values.num_processes or _env_int("PSTA_NUM_PROCESSES"),
        process_id=values.process_id
        if values.process_id is not None
        else _env_int("PSTA_PROCESS_ID"),
        auto=values.distributed == "auto",
        cpu_devices=values.cpu_devices or _env_int("PSTA_CPU_DEVICES"),
    )


_barrier_count = 0


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Waits until every process reaches this point (no-op for one process).

    Uses the coordination service (Orbax's public barrier), not a device collective: CPU
    collectives (gloo) give up after 30 s, which a process still preparing a dataset or
    compiling easily exceeds. Call it before the first collective after uneven work (dataset
    preparation, compilation). Every process must call the same barriers in the same order.
    """
    import jax

    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    global _barrier_count
    _barrier_count += 1
    wait = multihost.get_barrier_sync_fn()
    wait(key=f"psta_jax/{name}/{_barrier_count}", timeout_ms=int(timeout_s * 1000))

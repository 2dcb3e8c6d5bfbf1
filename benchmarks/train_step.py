"""Throughput and peak memory of the jitted SPMD train step on the available devices.

    python benchmarks/train_step.py [--identities=8 --instances=4]
        [--dtypes=float32,bfloat16] [--steps=5] [--remat] [--model=release|demo]
        [--profile_dir=DIR]

The exact step `psta_jax.main` runs (steps.compile_train_step: uint8 clips normalised and
erased on device, forward in train mode, the release's loss, gradients, coupled Adam,
BatchNorm statistics), on a mesh over every local device, with random weights and clips.
Defaults to P=8 x K=4 on accelerators and P=2 x K=2 on the CPU.

Each dtype runs in its own child process, so each peak is its own. Printed per dtype:
clips/s and seconds per step; the peak memory: on the CPU the child's peak RSS (what the
release's 3.4 GB for an fp32 P=2 x K=2 step on this machine measures), on a GPU/TPU the
device's `peak_bytes_in_use` (and `bytes_in_use` after the steps) from `memory_stats()`;
and XLA's plan for the compiled step (`memory_analysis()`: temporaries, arguments,
outputs, donated aliases), which says where the memory goes. With --profile_dir, three
more steps per dtype are traced into DIR/DTYPE (TensorBoard's profile plugin / xprof).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time

from psta_jax.runtime import xla_cpu

NUM_CLASSES = 625
RELEASE_CPU_STEP_S = 10.3  # P=2 x K=2, fp32, 2 threads, this machine at load < 1 (issue 12)
RELEASE_CPU_PEAK_GB = 3.4


def random_batch(config, batch: int, seed: int = 0) -> dict:
    import numpy as np  # noqa: PLC0415 (child processes import JAX's stack themselves)

    rng = np.random.default_rng(seed)
    height, width = config.model.image_size
    clips = rng.integers(0, 256, (batch, config.model.seq_len, height, width, 3), np.uint8)
    return {
        "clips": clips,
        "labels": np.repeat(
            np.arange(batch // config.batch.instances), config.batch.instances
        ).astype(np.int32),
        "erase": np.zeros((batch, 4), np.int32),
        "flip": np.arange(batch) % 2 == 0,
    }


def build_train_step(config, dtype: str):
    """(jitted step, replicated state, sharded batch) as psta_jax.main builds them."""
    from flax import nnx  # noqa: PLC0415

    from psta_jax import config_base  # noqa: PLC0415
    from psta_jax.input import preprocess  # noqa: PLC0415
    from psta_jax.models import build_model  # noqa: PLC0415
    from psta_jax.models.random_weights import random_model  # noqa: PLC0415
    from psta_jax.runtime import sharding  # noqa: PLC0415
    from psta_jax.training import losses, optimizer, steps  # noqa: PLC0415

    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    mesh = sharding.make_mesh()
    tx, _ = optimizer.create_optimizer(100, **config.optimizer.to_dict())
    model_config = config.model.to_dict()
    graphs, state = steps.create_train_state(
        random_model(lambda: build_model(model_config, NUM_CLASSES, nnx.Rngs(0))), tx, mesh
    )
    step = steps.compile_train_step(
        graphs,
        tx,
        losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()),
        mesh,
        preprocess.clip_preparation(config_base.train_input(config)),
        log_grad_norm=config.log_grad_norm,
    )
    batch_size = config.batch.identities * config.batch.instances
    return step, state, sharding.shard_batch(random_batch(config, batch_size), mesh)


def steps_call(step, state, batch, steps_per_call: int):
    """A call that runs `steps_per_call` steps of `step` on `batch` and waits for the last,
    returning its metrics. The state carries over from call to call (the step donates it)."""
    import jax  # noqa: PLC0415

    carry = [state]

    def call() -> dict:
        for _ in range(steps_per_call):
            carry[0], metrics = step(carry[0], batch)
        return jax.block_until_ready(metrics)

    return call


def benchmark_config(model: str, identities: int | None, instances: int | None, on_cpu: bool):
    """The release's recipe (no dataset, nor TFDS, needed) with the network `model`
    (release: ResNet-50 at 256x128; demo: configs/demo.py's) and a P x K batch, by default
    P=2 x K=2 on the CPU and the paper's P=8 x K=4 on accelerators."""
    from psta_jax import config_base  # noqa: PLC0415 (no JAX backend in this process)

    config = config_base.base_config()
    config.batch.identities = identities or (2 if on_cpu else 8)
    config.batch.instances = instances or (2 if on_cpu else 4)
    if model == "demo":
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from configs import demo  # noqa: PLC0415

        config.model = demo.get_config().model
    return config


def compiled_memory(compiled) -> dict[str, float]:
    """XLA's buffer plan for a compiled program, GiB."""
    analysis = compiled.memory_analysis()
    fields = ("temp", "argument", "output", "alias", "generated_code")
    return {f: getattr(analysis, f"{f}_size_in_bytes", 0) / 2**30 for f in fields}


def _proc_status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def reset_host_peak() -> bool:
    """Restarts the kernel's peak-RSS count of this process (Linux); False if it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(steps_only: bool) -> dict[str, float]:
    """GiB: the device's peak and current bytes in use (accelerators), or the host's peak RSS
    of the whole process (compilation included) and, with `steps_only`, since the last
    `reset_host_peak()` (the steps alone)."""
    import jax  # noqa: PLC0415

    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return {
            "device peak": stats["peak_bytes_in_use"] / 2**30,
            "device in use": stats.get("bytes_in_use", 0) / 2**30,
        }
    memory = {"host peak RSS": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if steps_only:
        memory["steps' peak RSS"] = _proc_status_gib("VmHWM")
    return memory


def measure(config, dtype: str, num_steps: int, profile_dir: str | None = None) -> dict:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    step, state, batch = build_train_step(config, dtype)
    start = time.perf_counter()
    step = step.lower(state, batch).compile()  # the one compilation; run below as is
    compile_s = time.perf_counter() - start
    plan = compiled_memory(step)
    xla_cpu.release_compilation_memory()  # as psta_jax.training.loop does after compiling
    steps_only = reset_host_peak()
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    best = min(times)
    batch_size = config.batch.identities * config.batch.instances
    result = {
        "dtype": dtype,
        "batch": batch_size,
        "compile_s": compile_s,
        "first_s": first_s,
        "step_s": best,
        "median_s": float(np.median(times)),
        "clips_per_s": batch_size / best,
        "memory": peak_memory(steps_only),  # before the profiler's buffers
        "plan": plan,
        "loss": float(metrics["loss"]),
        "load": os.getloadavg()[0],
    }
    if profile_dir:
        with jax.profiler.trace(os.path.join(profile_dir, dtype)):
            for _ in range(3):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
    return result


def _child(config, dtype: str, num_steps: int, profile_dir: str | None, queue) -> None:
    xla_cpu.configure_for_cpu_if_needed()
    queue.put(measure(config, dtype, num_steps, profile_dir))


def measure_in_child(config, dtype: str, num_steps: int, profile_dir: str | None) -> dict:
    """`measure` in a fresh process: its peak memory is this step's alone."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(config, dtype, num_steps, profile_dir, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=None)
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument(
        "--profile_dir", default=None, help="trace three more steps per dtype into DIR/DTYPE"
    )
    parser.add_argument(
        "--model",
        choices=("release", "demo"),
        default="release",
        help="release: ResNet-50 at 256x128; demo: configs/demo.py's network",
    )
    args = parser.parse_args()

    on_cpu = xla_cpu.will_run_on_cpu()
    config = benchmark_config(args.model, args.identities, args.instances, on_cpu)
    config.model.remat = args.remat
    print(
        f"PSTA train step, {config.model.image_size[0]}x{config.model.image_size[1]}, "
        f"T={config.model.seq_len}, P={config.batch.identities} x K={config.batch.instances}, "
        f"remat={args.remat}, {'CPU' if on_cpu else 'accelerator'}, load {os.getloadavg()[0]:.1f}"
    )
    rows = [
        measure_in_child(config, dtype, args.steps, args.profile_dir)
        for dtype in args.dtypes.split(",")
    ]
    print(
        f"{'dtype':10s} {'clips':>5s} {'compile':>8s} {'step s':>7s} {'median':>7s} "
        f"{'clips/s':>7s} {'load':>5s}  peak memory (GiB)  |  XLA plan (GiB)"
    )
    for r in rows:
        memory = ", ".join(f"{k} {v:.2f}" for k, v in r["memory"].items())
        plan = r["plan"]
        print(
            f"{r['dtype']:10s} {r['batch']:5d} {r['compile_s']:8.1f} {r['step_s']:7.2f} "
            f"{r['median_s']:7.2f} {r['clips_per_s']:7.2f} {r['load']:5.1f}  {memory}  |  "
            f"temp {plan['temp']:.2f}, args {plan['argument']:.2f}, out {plan['output']:.2f}, "
            f"donated {plan['alias']:.2f}  loss {r['loss']:.3f}"
        )
    if on_cpu:
        print(
            f"Release (PyTorch, fp32, P=2 x K=2) on this 2-core CPU at load < 1: "
            f"{RELEASE_CPU_STEP_S} s per step, {RELEASE_CPU_PEAK_GB} GB peak RSS."
        )


if __name__ == "__main__":
    main()

"""Throughput and peak memory of the jitted SPMD train step on the available devices.

    python benchmarks/train_step.py [--config=configs/mars.py] [--identities=8 --instances=4]
        [--dtypes=float32,bfloat16] [--steps=5] [--remat]

The exact step `psta_jax.main` runs (steps.compile_train_step: uint8 clips normalised and
erased on device, forward in train mode, the release's loss, gradients, coupled Adam,
BatchNorm statistics), on a mesh over every local device, with random weights and clips.
Prints clips/s and seconds per step for each compute dtype, and peak device memory (GPU/TPU)
or peak host RSS (CPU). Defaults to P=8 x K=4 on accelerators and P=2 x K=2 on CPU.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np
from flax import nnx

from psta_jax import config_base, data, optimizer, steps
from psta_jax.models import build_model
from psta_jax.models.random_init import random_model

NUM_CLASSES = 625


def random_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    height, width = config.model.image_size
    clips = rng.integers(0, 256, (batch, config.model.seq_len, height, width, 3), np.uint8)
    return {
        "clips": clips,
        "labels": np.repeat(
            np.arange(batch // config.batch.instances), config.batch.instances
        ).astype(np.int32),
        "erase": np.zeros((batch, 4), np.int32),
    }


def peak_memory_gib() -> tuple[str, float]:
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return "device peak", stats["peak_bytes_in_use"] / 2**30
    return "host peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(config, dtype: str, num_steps: int) -> dict:
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    mesh = steps.make_mesh()
    tx, _ = optimizer.create_optimizer(config.optimizer, steps_per_epoch=100)
    graphs, state = steps.create_train_state(
        random_model(lambda: build_model(config.model, NUM_CLASSES, nnx.Rngs(0))), tx, mesh
    )
    step = steps.compile_train_step(
        graphs, tx, NUM_CLASSES, config.loss, mesh, data.prepare_train_clips(config)
    )
    batch_size = config.batch.identities * config.batch.instances
    batch = steps.shard_batch(random_batch(config, batch_size), mesh)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    best = min(times)
    kind, memory = peak_memory_gib()
    return {
        "dtype": dtype,
        "batch": batch_size,
        "first_s": compile_s,
        "step_s": best,
        "median_s": float(np.median(times)),
        "clips_per_s": batch_size / best,
        "memory_kind": kind,
        "memory_gib": memory,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mars")
    parser.add_argument("--identities", type=int, default=None)
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument(
        "--model",
        choices=("release", "demo"),
        default="release",
        help="release: ResNet-50 at 256x128; demo: configs/demo.py's network",
    )
    args = parser.parse_args()

    config = config_base.dataset_config(args.dataset, None)
    on_cpu = jax.devices()[0].platform == "cpu"
    config.batch.identities = args.identities or (2 if on_cpu else 8)
    config.batch.instances = args.instances or (2 if on_cpu else 4)
    if args.model == "demo":
        config.model.update(depth=18, width=16, feature_dim=128, image_size=(64, 32))
    config.model.remat = args.remat
    devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(
        f"PSTA train step, {config.model.image_size[0]}x{config.model.image_size[1]}, "
        f"T={config.model.seq_len}, P={config.batch.identities} x K={config.batch.instances}, "
        f"remat={args.remat}, on {devices}"
    )
    rows = [measure(config, dtype, args.steps) for dtype in args.dtypes.split(",")]
    print(
        f"{'dtype':10s} {'clips':>6s} {'first (s)':>10s} {'step (s)':>9s} {'median':>8s} "
        f"{'clips/s':>8s} {'memory (GiB)':>14s} {'loss':>8s}"
    )
    for r in rows:
        print(
            f"{r['dtype']:10s} {r['batch']:6d} {r['first_s']:10.2f} {r['step_s']:9.3f} "
            f"{r['median_s']:8.3f} {r['clips_per_s']:8.2f} {r['memory_gib']:8.2f} "
            f"({r['memory_kind']}) {r['loss']:8.4f}"
        )
    print("Release (PyTorch, fp32): 10.9 s per P=2 x K=2 step on this 2-core CPU.")


if __name__ == "__main__":
    main()

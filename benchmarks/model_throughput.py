"""PSTA model throughput on this machine: eval clips/s and one full train step.

    python benchmarks/model_throughput.py [--eval_batches=1,4] [--repeats=3] [--skip_train]

Default model (ResNet-50, last stride 1, three STAM stages, 625 classes) at 256x128,
T=8, float32. Eval: jitted `model(clips)` in eval mode. Train: one jitted step on
P=2 x K=2 clips: forward in train mode, `psta_loss`, gradients w.r.t. `nnx.Param`, an
Adam update, BatchNorm statistics carried. Weights are random (timing only); compile
time is reported apart. Printed beside the release's own CPU figures (PyTorch,
2 threads: 1.47 clips/s eval at batch 1, 10.9 s per train step). To compare at equal
threads, pin the process, e.g. `taskset -c 0,1 python benchmarks/model_throughput.py`.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from psta_jax.losses import psta_loss
from psta_jax.models import PSTA

RELEASE_EVAL_CLIPS_PER_S = 1.47
RELEASE_TRAIN_STEP_S = 10.9
NUM_CLASSES = 625


def random_model(seed: int = 0) -> PSTA:
    """The default PSTA with random weights, built without compiling its initialisers."""
    model = nnx.eval_shape(lambda: PSTA(NUM_CLASSES, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    for path, variable in flat.items():
        shape = variable.shape
        if path[-1] == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif path[-1] == "scale":
            value = rng.uniform(0.5, 1.0, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.normal(0.0, 0.7 / np.sqrt(fan_in), shape)
        flat[path] = variable.replace(jnp.asarray(value, variable.dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def clips(batch: int, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, 8, 256, 128, 3)), jnp.float32)


def time_calls(fn, repeats: int) -> tuple[float, float]:
    """(first call incl. compile, best of `repeats` later calls), seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best


def bench_eval(model: PSTA, batch: int, repeats: int) -> tuple[float, float]:
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = clips(batch)
    return time_calls(lambda: forward(state, x), repeats)


def bench_train(model: PSTA, repeats: int) -> tuple[float, float]:
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(3.5e-4, weight_decay=5e-4)
    opt_state = tx.init(params)
    labels = jnp.asarray([0, 0, 1, 1], jnp.int32)
    x = clips(4, seed=1)

    @jax.jit
    def train_step(params, rest, opt_state, x):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            out = model(x)
            loss, _ = psta_loss(out.logits, out.features, labels, num_classes=NUM_CLASSES)
            return loss

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(model)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, nnx.state(model, nnx.Not(nnx.Param)), opt_state, loss

    carry = [params, rest, opt_state]

    def step():
        carry[0], carry[1], carry[2], loss = train_step(*carry, x)
        return loss

    return time_calls(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval_batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_train", action="store_true")
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{len(os.sched_getaffinity(0))} usable CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    model = random_model()
    rows = []
    for batch in [int(b) for b in args.eval_batches.split(",")]:
        first, best = bench_eval(model, batch, args.repeats)
        rate = batch / best
        release = RELEASE_EVAL_CLIPS_PER_S if batch == 1 else float("nan")
        rows.append((f"eval clips/s (batch {batch})", rate, release, rate / release, first))
    if not args.skip_train:
        first, best = bench_train(model, args.repeats)
        rows.append(("train step s (4 clips)", best, RELEASE_TRAIN_STEP_S,
                     RELEASE_TRAIN_STEP_S / best, first))
    print(f"{'measure':28s} {'psta-jax':>10s} {'release':>10s} {'speed-up':>9s} "
          f"{'1st call s':>11s}")
    for name, ours, release, speedup, first in rows:
        print(f"{name:28s} {ours:10.3f} {release:10.3f} {speedup:8.2f}x {first:11.1f}")


if __name__ == "__main__":
    main()

"""PSTA model throughput on this machine: eval clips/s and one full train step.

    python benchmarks/model_throughput.py [--eval_batches=1,4] [--repeats=3] [--skip_train]
        [--torch_reference] [--jaxlib_default_flags]

Default model (ResNet-50, last stride 1, three STAM stages, 625 classes) at 256x128,
T=8, float32. Eval: jitted `model(clips)` in eval mode. Train: one jitted step on
P=2 x K=2 clips: forward in train mode, `psta_loss`, gradients w.r.t. `nnx.Param`, an
Adam update, BatchNorm statistics carried. Weights are random (timing only); compile
time is reported apart. Printed beside the release's own CPU figures (PyTorch,
2 threads: 1.47 clips/s eval at batch 1, 10.9 s per train step). To compare at equal
threads, pin the process, e.g. `taskset -c 0,1 python benchmarks/model_throughput.py`.

The XLA:CPU flags of `psta_jax.models.cpu_flags` are applied unless
--jaxlib_default_flags. --torch_reference also times a PyTorch ResNet-50 backbone (the
release's, written out here; last stride 1, 2 threads) on the same machine in the same
run: the convolution baseline every PyTorch figure above contains. Besides wall-clock
(best of --repeats) the table gives process CPU seconds per call, which other processes
on a shared machine disturb less; the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

from psta_jax.models import cpu_flags

if "--jaxlib_default_flags" not in sys.argv:
    cpu_flags.configure_xla_cpu()  # before JAX starts its backend

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from psta_jax.losses import psta_loss  # noqa: E402
from psta_jax.models import PSTA  # noqa: E402
from psta_jax.models.random_init import random_model  # noqa: E402

RELEASE_EVAL_CLIPS_PER_S = 1.47
RELEASE_TRAIN_STEP_S = 10.9
NUM_CLASSES = 625


def default_model(seed: int = 0) -> PSTA:
    """The default PSTA with random weights, built without compiling its initialisers."""
    return random_model(lambda: PSTA(NUM_CLASSES, rngs=nnx.Rngs(0)), seed)


def clips(batch: int, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, 8, 256, 128, 3)), jnp.float32)


class Timing(NamedTuple):
    first_s: float  # first call, compile included
    best_s: float  # best wall-clock of the later calls
    cpu_s: float  # process CPU seconds of that best call (all threads)


def time_calls(fn, repeats: int) -> Timing:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best, best_cpu = float("inf"), float("nan")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, best_cpu = elapsed, time.process_time() - start_cpu
    return Timing(first, best, best_cpu)


def bench_eval(model: PSTA, batch: int, repeats: int) -> Timing:
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = clips(batch)
    return time_calls(lambda: forward(state, x), repeats)


def bench_train(model: PSTA, repeats: int) -> Timing:
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


def torch_backbone_eval_s(repeats: int) -> float:
    """Best seconds for the release's ResNet-50 (PyTorch, eval, 2 threads) on 8 frames."""
    import torch  # noqa: PLC0415 (optional; only for this reference line)
    from torch import nn  # noqa: PLC0415

    torch.set_num_threads(2)

    def conv_bn(cin, cout, k, stride=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.body = nn.Sequential(
                *conv_bn(cin, width, 1),
                nn.ReLU(),
                *conv_bn(width, width, 3, stride),
                nn.ReLU(),
                *conv_bn(width, 4 * width, 1),
            )
            self.shortcut = (
                nn.Identity()
                if stride == 1 and cin == 4 * width
                else nn.Sequential(*conv_bn(cin, 4 * width, 1, stride))
            )

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    layers, cin = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for index, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 1), strict=True)):
        for block in range(blocks):
            layers.append(Bottleneck(cin, 64 * 2**index, stride if block == 0 else 1))
            cin = 4 * 64 * 2**index
    backbone = nn.Sequential(*layers).eval()
    frames = torch.randn(8, 3, 256, 128)
    best = float("inf")
    with torch.no_grad():
        backbone(frames)
        for _ in range(repeats):
            start = time.perf_counter()
            backbone(frames)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval_batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument(
        "--torch_reference",
        action="store_true",
        help="also time the release's PyTorch ResNet-50 backbone",
    )
    parser.add_argument(
        "--jaxlib_default_flags",
        action="store_true",
        help="do not apply psta_jax.models.cpu_flags (handled at import)",
    )
    args = parser.parse_args()

    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(os.sched_getaffinity(0))} usable CPU cores, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    model = default_model()
    rows = []  # (measure, ours, release, speed-up, cpu s per call, first call s, load)
    for batch in [int(b) for b in args.eval_batches.split(",")]:
        timing = bench_eval(model, batch, args.repeats)
        rate = batch / timing.best_s
        release = RELEASE_EVAL_CLIPS_PER_S
        rows.append(
            (
                f"eval clips/s (batch {batch})",
                rate,
                release,
                rate / release,
                timing.cpu_s,
                timing.first_s,
                os.getloadavg()[0],
            )
        )
    if not args.skip_train:
        timing = bench_train(model, args.repeats)
        rows.append(
            (
                "train step s (4 clips)",
                timing.best_s,
                RELEASE_TRAIN_STEP_S,
                RELEASE_TRAIN_STEP_S / timing.best_s,
                timing.cpu_s,
                timing.first_s,
                os.getloadavg()[0],
            )
        )
    if args.torch_reference:
        seconds = torch_backbone_eval_s(args.repeats)
        rows.append(
            (
                "torch ResNet-50 only, clips/s",
                1 / seconds,
                RELEASE_EVAL_CLIPS_PER_S,
                1 / seconds / RELEASE_EVAL_CLIPS_PER_S,
                float("nan"),
                float("nan"),
                os.getloadavg()[0],
            )
        )
    print(
        f"{'measure':30s} {'psta-jax':>9s} {'release':>8s} {'speed-up':>9s} "
        f"{'cpu s/call':>10s} {'1st call s':>10s} {'load':>5s}"
    )
    for name, ours, release, speedup, cpu, first, load in rows:
        print(
            f"{name:30s} {ours:9.3f} {release:8.3f} {speedup:8.2f}x {cpu:10.2f} "
            f"{first:10.1f} {load:5.1f}"
        )
    print(
        "release: the authors' PyTorch code, 2 threads (eval at batch 1); speed-up > 1 "
        "is faster than the release (eval: clips/s ratio, train: step-time ratio)"
    )


if __name__ == "__main__":
    main()

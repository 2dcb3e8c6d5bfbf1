"""PSTA model speed on this machine beside a PyTorch ResNet-50 baseline timed in the same run.

    python benchmarks/model_throughput.py [--eval_batches=1] [--repeats=3] [--skip_train]
        [--no_torch] [--dtype=float32] [--jaxlib_default_flags] [--xla_flags='--xla_...']

Ours: the default PSTA (ResNet-50, last stride 1, three STAM stages, 625 classes) at
256x128, T=8, random weights, as psta_jax.main runs it: eval = the jitted embedding of
uint8 clips (`steps.compile_embed`), train = one jitted step on P=2 x K=2 clips
(`steps.compile_train_step`: forward in train mode, the release's loss, gradients,
coupled Adam, BatchNorm statistics).

Baseline: a plain PyTorch ResNet-50 backbone (last stride 1, as in the release; written
out here, no torchvision) at the same shapes, in a child process of this one with as
many threads as this process may use: eval = its forward on the clip's frames, train =
forward + backward + Adam on all P x K x T frames. The release adds its PSTA heads and
loss on top of this backbone, so the baseline is a little faster than the release itself.
The two are measured interleaved (ours, baseline, ours, ...), best of --repeats each, so
their ratio holds when a shared machine's speed drifts; the load average is printed
beside each row.

GFLOP/s: ours from XLA's cost analysis of the compiled program, the baseline from its
convolution and linear layers (train: 3x forward). Peak: cores x 2 FMA units x vector
lanes x 2 flops x the clock /proc/cpuinfo reports.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time

from psta_jax import xla_cpu

CLIP_LEN, IMAGE_SIZE, NUM_CLASSES = 8, (256, 128), 625
TRAIN_IDENTITIES, TRAIN_INSTANCES = 2, 2
# The authors' release on this machine, in one run with our numbers of the time (issue 12;
# load < 1): for reference only, the ratios below use the in-run baseline.
RELEASE_EVAL_CLIPS_PER_S, RELEASE_TRAIN_CLIPS_PER_S = 1.54, 0.39


# ----------------------------------------------------------------------------- hardware


def cpu_peak_gflops(cores: int) -> tuple[float, str]:
    """FP32 peak of `cores` cores: 2 FMA units x lanes x 2 flops x clock (from
    /proc/cpuinfo; AVX-512 doubles the lanes of AVX2)."""
    mhz, flags = 0.0, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "cpu MHz":
                    mhz = max(mhz, float(value))
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        return float("nan"), "unknown CPU"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    peak = cores * 2 * lanes * 2 * mhz / 1e3
    return peak, f"{cores} cores x 2 FMA x {lanes} fp32 lanes x 2 flops x {mhz / 1e3:.2f} GHz"


# ----------------------------------------------------------------------------- PyTorch


def torch_resnet50_backbone():
    """ResNet-50 without pooling and classifier, last stride 1 (the release's backbone)."""
    from torch import nn  # noqa: PLC0415 (optional dependency, child process only)

    def conv_bn(cin, cout, k, stride=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.body = nn.Sequential(
                *conv_bn(cin, width, 1), nn.ReLU(),
                *conv_bn(width, width, 3, stride), nn.ReLU(),
                *conv_bn(width, 4 * width, 1),
            )
            self.shortcut = (
                nn.Identity() if stride == 1 and cin == 4 * width
                else nn.Sequential(*conv_bn(cin, 4 * width, 1, stride))
            )

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.shortcut(x))

    layers, cin = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for index, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 1), strict=True)):
        for block in range(blocks):
            layers.append(Bottleneck(cin, 64 * 2**index, stride if block == 0 else 1))
            cin = 4 * 64 * 2**index
    return nn.Sequential(*layers)


def torch_forward_flops(model, frames) -> float:
    """2 x multiply-adds of every Conv2d and Linear in one forward pass."""
    import torch  # noqa: PLC0415

    total = [0.0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += 2 * output.numel() * module.in_channels // module.groups * kh * kw
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(frames)
    for hook in hooks:
        hook.remove()
    return total[0]


def torch_worker(conn, threads: int) -> None:
    """Serves ('eval' | 'train', clips) requests: (wall s, CPU s, GFLOP, peak RSS GiB)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_resnet50_backbone()
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    flops = {}
    while (request := conn.recv()) is not None:
        kind, clips = request
        frames = torch.randn(clips * CLIP_LEN, 3, *IMAGE_SIZE)
        model.train(kind == "train")
        if request not in flops:
            flops[request] = torch_forward_flops(model, frames) * (3 if kind == "train" else 1)
        wall, cpu = time.perf_counter(), time.process_time()
        if kind == "train":
            optimizer.zero_grad()
            model(frames).mean().backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model(frames)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        conn.send((wall, cpu, flops[request] / 1e9, peak))


class TorchBaseline:
    """The PyTorch baseline in a child process (its threads never compete with XLA's)."""

    def __init__(self, threads: int):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=torch_worker, args=(child, threads), daemon=True)
        self._process.start()

    def run(self, kind: str, clips: int) -> tuple[float, float, float, float]:
        self._conn.send((kind, clips))
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(None)
        self._process.join()


# ----------------------------------------------------------------------------- ours


def build_ours(eval_batches: list[int], train: bool, dtype: str):
    """{measure: (call, GFLOP per call)} for our eval and train programs."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from psta_jax import config_base, input_pipeline, sharding, steps  # noqa: PLC0415
    from psta_jax.models import build_model  # noqa: PLC0415
    from psta_jax.testing import random_model  # noqa: PLC0415

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_step import build_train_step  # noqa: PLC0415 (sibling benchmark)

    config = config_base.dataset_config("mars", None)
    config.model.dtype = dtype
    config.batch.update(identities=TRAIN_IDENTITIES, instances=TRAIN_INSTANCES)
    mesh = sharding.make_mesh()
    calls = {}

    model = random_model(lambda: build_model(config.model, NUM_CLASSES, nnx.Rngs(0)))
    graphs, params, model_state = steps.split_model(model)
    embed = steps.compile_embed(graphs, mesh, input_pipeline.prepare_eval_clips(config))
    rng = np.random.default_rng(0)
    for batch in eval_batches:
        clips = sharding.shard_batch(
            {"clips": rng.integers(0, 256, (batch, CLIP_LEN, *IMAGE_SIZE, 3), np.uint8)}, mesh
        )["clips"]
        compiled = embed.lower(params, model_state, clips).compile()
        calls[("eval", batch)] = (
            lambda clips=clips, fn=compiled: jax.block_until_ready(fn(params, model_state, clips)),
            compiled.cost_analysis()["flops"] / 1e9,
        )
    if train:
        step, state, batch = build_train_step(config, dtype)
        step = step.lower(state, batch).compile()
        flops = step.cost_analysis()["flops"]
        carry = [state]

        def train_call():
            carry[0], metrics = step(carry[0], batch)
            jax.block_until_ready(metrics)

        calls[("train", TRAIN_IDENTITIES * TRAIN_INSTANCES)] = (train_call, flops / 1e9)
    xla_cpu.release_freed_host_memory()  # as psta_jax.train does after compiling
    return calls


def timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval_batches", default="1", help="comma-separated clip counts")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--dtype", default="float32", help="our compute dtype")
    parser.add_argument("--jaxlib_default_flags", action="store_true",
                        help="do not apply psta_jax.xla_cpu's flags")
    parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS (experiments)")
    args = parser.parse_args()
    if not args.jaxlib_default_flags:
        xla_cpu.configure_for_cpu_if_needed()  # before JAX starts its backends
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()

    import jax  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0))
    peak, peak_note = cpu_peak_gflops(cores)
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.device_kind} ({device.platform}); {cores} usable "
          f"CPU cores, FP32 peak {peak:.0f} GFLOP/s ({peak_note}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()[0]:.1f}")
    baseline = None if args.no_torch else TorchBaseline(threads=cores)
    calls = build_ours([int(b) for b in args.eval_batches.split(",")], not args.skip_train,
                       args.dtype)

    best: dict = {}
    for round_index in range(args.repeats + 1):  # round 0 warms up (compiles) and is dropped
        for (kind, clips), (call, ours_gflop) in calls.items():
            runs = [("ours", lambda call=call: timed(call), ours_gflop)]
            if baseline is not None:
                runs.append(("torch", lambda kind=kind, clips=clips: baseline.run(kind, clips),
                             None))
            for who, run, gflop in runs:
                result = run()
                wall, cpu = result[:2]
                gflop = gflop if gflop is not None else result[2]
                key = (kind, clips, who)
                if round_index and (key not in best or wall < best[key][0]):
                    best[key] = (wall, cpu, gflop, os.getloadavg()[0])
    ours_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch_peak = baseline.run("eval", 1)[3] if baseline is not None else float("nan")
    if baseline is not None:
        baseline.close()

    print(f"{'measure':22s} {'who':6s} {'clips/s':>8s} {'s/call':>7s} {'ratio':>6s} "
          f"{'GFLOP':>6s} {'GFLOP/s':>8s} {'%peak':>6s} {'cpu/wall':>8s} {'load':>5s}")
    for kind, clips in calls:
        ours_rate = None
        for who in ("ours", "torch"):
            if (kind, clips, who) not in best:
                continue
            wall, cpu, gflop, load = best[(kind, clips, who)]
            rate = clips / wall
            ours_rate = rate if who == "ours" else ours_rate
            ratio = f"{ours_rate / rate:5.2f}x" if who == "torch" else ""
            print(f"{kind + f' ({clips} clips)':22s} {who:6s} {rate:8.3f} {wall:7.2f} "
                  f"{ratio:>6s} {gflop:6.0f} {gflop / wall:8.1f} {100 * gflop / wall / peak:5.1f}%"
                  f" {cpu / wall:8.2f} {load:5.1f}")
    print(f"peak RSS: ours {ours_peak:.2f} GiB (this process: eval and train programs), "
          f"torch {torch_peak:.2f} GiB")
    print(f"ratio: our clips/s over the PyTorch baseline's in this run (> 1: faster). The "
          f"release itself measured {RELEASE_EVAL_CLIPS_PER_S} eval / "
          f"{RELEASE_TRAIN_CLIPS_PER_S} train clips/s on this machine at load < 1.")


if __name__ == "__main__":
    main()

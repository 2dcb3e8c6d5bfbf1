"""PSTA model speed on this machine beside the authors' PyTorch release, timed in the same run.

    python benchmarks/model_throughput.py [--eval_batches=1] [--repeats=3] [--skip_train]
        [--train_identities=P --train_instances=K] [--train_steps_per_call=1]
        [--baselines=release,backbone] [--baselines_keep_heap]
        [--dtypes=float32,bfloat16] [--jaxlib_default_flags] [--xla_flags='--xla_...']

Ours: the default PSTA (ResNet-50, last stride 1, three STAM stages, 625 classes) at
256x128, T=8, random weights, as psta_jax.main runs it: eval = the jitted embedding of
uint8 clips (`steps.compile_embed`), train = one jitted step on P x K clips (P=2 x K=2 on
the CPU, the paper's P=8 x K=4 on an accelerator; `steps.compile_train_step`: forward in
train mode, the release's loss, gradients, coupled Adam, BatchNorm statistics), in each
compute dtype of --dtypes (parameters stay float32). A timed train call runs
--train_steps_per_call steps back to back and waits for the last (1: each step is waited
for; more: the steady state of a training loop, where the host queues the next step while
the device runs this one), for ours and the baselines alike.

Baselines, in PyTorch with as many threads as this process may use, on uint8 clips
(B, T, 3, H, W) turned into ImageNet-normalised floats inside the timed call:
- release (the headline): the release's network and loss in our PyTorch port
  (`psta_jax.interop.torch_model`, checked against the release's own outputs in
  tests/interop/test_torch_model.py; not the authors' code itself), random init:
  eval = its eval forward (the embedding) of B clips; train = forward in train mode +
  `release_loss` + backward + torch.optim.Adam (lr 3.5e-4, weight decay 5e-4) on P=2 x K=2 clips.
- backbone: the release's ResNet-50 backbone alone on all the clips' frames: eval = its
  forward, train = forward + backward of the maps' mean + the same Adam. A lower bound
  for any PSTA on this backbone.
The baselines always compute in float32, on the CPU or, when JAX runs on a GPU, on that GPU
through CUDA (cuDNN autotuning on, as for training). Each baseline measure (model x
eval/train x batch) runs in its own child process, so its threads never compete with XLA's
and its peak memory is its own; it runs with glibc's default heap, as the release ships,
unless --baselines_keep_heap gives it ours (xla_cpu.keep_freed_memory: on this CPU the
release's train step gains more from it than ours). Ours and the baselines are
measured interleaved (ours, release, backbone, ours, ...), best of --repeats each, so
their ratios hold when a shared machine's speed drifts; the load average is printed
beside each row.

GFLOP/s: ours from XLA's cost analysis of the compiled program (every op), the
baselines from torch.utils.flop_counter.FlopCounterMode over one call (convolutions,
their backward, matmuls incl. the relation maps' bmm; train: the real forward +
backward). CPU peak: cores x 2 FMA units x vector lanes x 2 flops x the clock
/proc/cpuinfo reports. Peak memory: on the CPU each process's peak RSS; on a GPU the
device's peak bytes in use (ours: JAX's `memory_stats()` over all our programs; the
baselines: `torch.cuda.max_memory_allocated()`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time

from psta_jax.runtime import xla_cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import build_train_step, peak_memory, steps_call  # noqa: E402 (sibling)

CLIP_LEN, IMAGE_SIZE, NUM_CLASSES = 8, (256, 128), 625
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BASELINES = ("release", "backbone")


# ----------------------------------------------------------------------------- hardware


def cpu_peak_gflops(cores: int, cpuinfo: str = "/proc/cpuinfo") -> tuple[float, str]:
    """FP32 peak of `cores` cores: 2 FMA units x lanes x 2 flops x clock (from
    /proc/cpuinfo; AVX-512 doubles the lanes of AVX2), and a note naming the CPU (model name,
    family/model, clock): the same benchmark's ratios differ between hosts, so a run says
    which it had."""
    mhz, flags, fields = 0.0, set(), {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "cpu MHz":
                    mhz = max(mhz, float(value))
                elif key == "flags":
                    flags = set(value.split())
                elif key in ("model name", "cpu family", "model"):
                    fields.setdefault(key, value)
    except OSError:
        return float("nan"), "unknown CPU"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    peak = cores * 2 * lanes * 2 * mhz / 1e3
    cpu = (
        f"{fields.get('model name', 'unknown CPU')}, family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')}"
    )
    return peak, (
        f"{cpu}: {cores} cores x 2 FMA x {lanes} fp32 lanes x 2 flops x {mhz / 1e3:.2f} GHz"
    )


# ----------------------------------------------------------------------------- PyTorch


def torch_call(model_name: str, kind: str, clips: int, instances: int, device: str, steps: int = 1):
    """One measured call of a PyTorch baseline on `device`, on fixed random uint8 clips
    (B, T, 3, H, W) that it turns into ImageNet-normalised floats, as our programs do on
    device; train batches hold B / `instances` identities, and a train call runs `steps`
    optimisation steps."""
    import torch  # noqa: PLC0415 (optional dependency, child processes only)

    from psta_jax.interop import torch_model  # noqa: PLC0415 (imports torch)

    generator = torch.Generator().manual_seed(0)
    uint8_clips = torch.randint(
        0, 256, (clips, CLIP_LEN, 3, *IMAGE_SIZE), dtype=torch.uint8, generator=generator
    ).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)

    def prepare():
        return (uint8_clips.float() / 255.0 - mean) / std

    labels = torch.arange(clips // instances, device=device).repeat_interleave(instances)
    if model_name == "release":
        model = torch_model.release_model(NUM_CLASSES, image_size=IMAGE_SIZE, seq_len=CLIP_LEN)

        def forward(x):
            return model(x)

        def loss(outputs):
            return torch_model.release_loss(outputs, labels)[0]
    else:  # the release's backbone alone, on every frame
        model = torch_model.ResNetBackbone(last_stride=1)

        def forward(x):
            return model(x.flatten(0, 1))

        def loss(outputs):
            return outputs.mean()

    model.to(device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    if kind == "eval":
        model.eval()

        def call():
            with torch.no_grad():
                forward(prepare())
            synchronize()

        return call

    model.train()
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=3.5e-4, weight_decay=5e-4
    )

    def call():
        for _ in range(steps):
            optimizer.zero_grad()
            loss(forward(prepare())).backward()
            optimizer.step()
        synchronize()

    return call


def torch_worker(
    conn,
    threads: int,
    model_name: str,
    kind: str,
    clips: int,
    instances: int,
    device: str,
    steps: int,
    keep_heap: bool = False,
) -> None:
    """Builds one baseline call, counts its FLOPs (one untimed call), sends ('ready',
    GFLOP), then serves requests: (wall s, CPU s, GFLOP, peak memory GiB: this process's
    peak RSS on the CPU, the GPU's peak allocated bytes on CUDA). With `keep_heap`, glibc
    keeps freed memory in this process as in ours (xla_cpu.keep_freed_memory)."""
    if keep_heap:
        xla_cpu.keep_freed_memory()  # before torch starts its threads
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    call = torch_call(model_name, kind, clips, instances, device, steps)
    with FlopCounterMode(display=False) as counter:
        call()
    gflop = counter.get_total_flops() / 1e9
    conn.send(("ready", gflop))
    while conn.recv() is not None:
        wall, cpu = timed(call)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        conn.send((wall, cpu, gflop, peak))


class TorchBaseline:
    """One PyTorch baseline measure (model, kind, clips) in its own child process: its
    threads never compete with XLA's, and its peak memory is that measure's alone."""

    def __init__(
        self,
        threads: int,
        model_name: str,
        kind: str,
        clips: int,
        instances: int,
        device: str,
        steps: int = 1,
        keep_heap: bool = False,
    ):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=torch_worker,
            args=(child, threads, model_name, kind, clips, instances, device, steps, keep_heap),
            daemon=True,
        )
        self._process.start()
        _, self.gflop = self._conn.recv()  # built and counted: one child at a time
        self.peak_gib = float("nan")

    def run(self) -> tuple[float, float, float, float]:
        self._conn.send(True)
        result = self._conn.recv()
        self.peak_gib = result[3]
        return result

    def close(self) -> None:
        self._conn.send(None)
        self._process.join()


# ----------------------------------------------------------------------------- ours


def ours_name(dtype: str) -> str:
    """Our rows' label: 'ours' in float32, 'ours-bf16' in bfloat16, ..."""
    return (
        "ours"
        if dtype == "float32"
        else "ours-" + dtype.replace("bfloat", "bf").replace("float", "f")
    )


def build_embed(config, *batches: int) -> tuple:
    """(jitted embedding as psta_jax.main evaluates, params, model state, one sharded batch of
    random uint8 clips per entry of `batches`) for `config.model` with random weights."""
    import numpy as np  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from psta_jax import config_base  # noqa: PLC0415
    from psta_jax.input import preprocess  # noqa: PLC0415
    from psta_jax.models import build_model  # noqa: PLC0415
    from psta_jax.models.random_weights import random_model  # noqa: PLC0415
    from psta_jax.runtime import sharding  # noqa: PLC0415
    from psta_jax.training import steps  # noqa: PLC0415

    mesh = sharding.make_mesh()
    model_config = config.model.to_dict()
    model = random_model(lambda: build_model(model_config, NUM_CLASSES, nnx.Rngs(0)))
    graphs, params, model_state = steps.split_model(model)
    preparation = preprocess.clip_preparation(config_base.eval_input(config))
    embed = steps.compile_embed(graphs, mesh, preparation)
    rng = np.random.default_rng(0)
    shape = (config.model.seq_len, *config.model.image_size, 3)
    clips = [
        sharding.shard_batch({"clips": rng.integers(0, 256, (batch, *shape), np.uint8)}, mesh)[
            "clips"
        ]
        for batch in batches
    ]
    return embed, params, model_state, *clips


def build_ours(
    eval_batches: list[int], train: tuple[int, int] | None, dtype: str, train_steps: int = 1
) -> dict:
    """{(kind, clips): (call, GFLOP per call)} for our eval programs (one per batch) and,
    with `train` = (P, K), `train_steps` train steps per call, computing in `dtype`."""
    import jax  # noqa: PLC0415

    from psta_jax import config_base  # noqa: PLC0415

    config = config_base.base_config()  # the model and recipe; no dataset (nor TFDS) needed
    config.model.dtype = dtype
    calls = {}

    embed, params, model_state, *batches = build_embed(config, *eval_batches)
    for batch, clips in zip(eval_batches, batches, strict=True):
        compiled = embed.lower(params, model_state, clips).compile()
        calls[("eval", batch)] = (
            lambda clips=clips, fn=compiled: jax.block_until_ready(fn(params, model_state, clips)),
            compiled.cost_analysis()["flops"] / 1e9,
        )
    if train:
        config.batch.update(identities=train[0], instances=train[1])
        step, state, batch = build_train_step(config, dtype)
        step = step.lower(state, batch).compile()
        flops = step.cost_analysis()["flops"]
        calls[("train", train[0] * train[1])] = (
            steps_call(step, state, batch, train_steps),
            train_steps * flops / 1e9,
        )
    xla_cpu.release_compilation_memory()  # as psta_jax.training.loop does after compiling
    return calls


def timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_rounds(measures: dict, repeats: int) -> dict[str, list[float]]:
    """{name: its `repeats` results}: each of `measures` ({name: call returning seconds})
    once per round, after one warm-up round that is dropped. Each round starts one measure
    later than the last, so none always runs first."""
    names = list(measures)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats + 1):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            seconds = measures[name]()
            if round_index:
                results[name].append(seconds)
    return results


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval_batches", default="1", help="comma-separated clip counts")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument(
        "--train_steps_per_call",
        type=int,
        default=1,
        help="train steps per timed call, waiting for the last only",
    )
    parser.add_argument(
        "--train_identities",
        type=int,
        default=None,
        help="P of the train batch (default 2 on the CPU, 8 on accelerators)",
    )
    parser.add_argument(
        "--train_instances",
        type=int,
        default=None,
        help="K of the train batch (default 2 on the CPU, 4 on accelerators)",
    )
    parser.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"PyTorch baselines to time, comma-separated, of {BASELINES} ('' for none)",
    )
    parser.add_argument(
        "--dtypes",
        default="float32",
        help="our compute dtypes, comma-separated (float32, bfloat16)",
    )
    parser.add_argument(
        "--jaxlib_default_flags",
        action="store_true",
        help="do not apply psta_jax.runtime.xla_cpu's setup (flags, heap kept)",
    )
    parser.add_argument(
        "--baselines_keep_heap",
        action="store_true",
        help="give the PyTorch baselines our glibc heap settings too "
        "(xla_cpu.keep_freed_memory): programs compared, not allocators",
    )
    parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS (experiments)")
    args = parser.parse_args()
    if not args.jaxlib_default_flags:
        xla_cpu.configure_for_cpu_if_needed()  # before JAX starts its backends
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    # On a GPU, JAX would otherwise reserve 75% of its memory and starve the PyTorch rows.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import jax  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0))
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    torch_device = "cpu" if on_cpu else "cuda"
    peak, peak_note = cpu_peak_gflops(cores) if on_cpu else (float("nan"), "not computed")
    print(
        f"jax {jax.__version__} on {device.device_kind} ({device.platform}); {cores} usable "
        f"CPU cores, FP32 peak {peak:.0f} GFLOP/s ({peak_note}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()[0]:.1f}"
    )
    train = (
        None
        if args.skip_train
        else (
            args.train_identities or (2 if on_cpu else 8),
            args.train_instances or (2 if on_cpu else 4),
        )
    )
    measures = [("eval", int(b)) for b in args.eval_batches.split(",") if b]
    steps = {"eval": 1, "train": args.train_steps_per_call}
    if train:
        measures.append(("train", train[0] * train[1]))
    baseline_names = [name for name in args.baselines.split(",") if name]
    unknown = sorted(set(baseline_names) - set(BASELINES))
    if unknown:
        parser.error(f"--baselines: unknown {unknown}; expected some of {BASELINES}")
    instances = train[1] if train else 1
    # Started (built, FLOPs counted) one at a time, before our programs compile.
    baselines = {
        (kind, clips, name): TorchBaseline(
            cores,
            name,
            kind,
            clips,
            instances,
            torch_device,
            steps[kind],
            keep_heap=args.baselines_keep_heap,
        )
        for kind, clips in measures
        for name in baseline_names
    }
    ours_names = [ours_name(dtype) for dtype in args.dtypes.split(",")]
    calls = {}  # (kind, clips, who) -> (call, GFLOP)
    for dtype, who in zip(args.dtypes.split(","), ours_names, strict=True):
        built = build_ours(
            [clips for kind, clips in measures if kind == "eval"],
            train,
            dtype,
            args.train_steps_per_call,
        )
        calls.update({(kind, clips, who): call for (kind, clips), call in built.items()})

    best: dict = {}
    for round_index in range(args.repeats + 1):  # round 0 warms up (compiles) and is dropped
        for kind, clips in measures:
            runs = [
                (
                    who,
                    lambda call=calls[(kind, clips, who)][0]: timed(call),
                    calls[(kind, clips, who)][1],
                )
                for who in ours_names
            ]
            runs += [(name, baselines[(kind, clips, name)].run, None) for name in baseline_names]
            for who, run, gflop in runs:
                result = run()
                wall, cpu = result[:2]
                gflop = gflop if gflop is not None else result[2]
                key = (kind, clips, who)
                if round_index and (key not in best or wall < best[key][0]):
                    best[key] = (wall, cpu, gflop, os.getloadavg()[0])
    memory = peak_memory(steps_only=False)  # a GPU's peak bytes in use, else the peak RSS
    ours_peak = memory.get("device peak", memory.get("host peak RSS"))
    for baseline in baselines.values():
        baseline.close()

    print(
        f"{'measure':18s} {'who':9s} {'clips/s':>8s} {'s/batch':>7s} {'ours/it':>7s} "
        f"{'GFLOP':>6s} {'GFLOP/s':>8s} {'%peak':>6s} {'cpu/wall':>8s} {'load':>5s} "
        f"{'peak GiB':>8s}"
    )
    rates: dict = {}
    for kind, clips in measures:
        for who in (*ours_names, *baseline_names):
            if (kind, clips, who) not in best:
                continue
            wall, cpu, gflop, load = best[(kind, clips, who)]
            if who in ours_names and not on_cpu:
                # XLA's GPU cost analysis leaves out cuDNN's convolutions: count ours as the
                # release (the same network) is counted, or not at all.
                release = best.get((kind, clips, "release"))
                gflop = release[2] if release else float("nan")
            wall, cpu = wall / steps[kind], cpu / steps[kind]  # per step
            gflop /= steps[kind]
            rate = rates[(kind, clips, who)] = clips / wall
            first_ours = rates[(kind, clips, ours_names[0])]
            ratio = f"{first_ours / rate:6.2f}x" if who not in ours_names else ""
            memory = baselines[(kind, clips, who)].peak_gib if who in baseline_names else ours_peak
            print(
                f"{kind + f' ({clips} clips)':18s} {who:9s} {rate:8.3f} {wall:7.3f} "
                f"{ratio:>7s} {gflop:6.0f} {gflop / wall:8.1f} {100 * gflop / wall / peak:5.1f}%"
                f" {cpu / wall:8.2f} {load:5.1f} {memory:8.2f}"
            )
    for who in ours_names:
        for name in baseline_names:
            pairs = [
                f"{kind} ({clips} clips) "
                f"{rates[(kind, clips, who)] / rates[(kind, clips, name)]:.2f}x"
                for kind, clips in measures
                if (kind, clips, name) in rates
            ]
            headline = " (headline: the release's network, ported)" if name == "release" else ""
            print(f"{who} vs {name}{headline}: " + ", ".join(pairs))
    print(
        f"ours/it: {ours_names[0]}'s clips/s over that row's in this run (> 1: ours is "
        "faster); 'release' is the release's PSTA and loss (our PyTorch port), 'backbone' its "
        f"ResNet-50 alone, both float32 on {torch_device}"
        + (", with our glibc heap settings." if args.baselines_keep_heap else ".")
    )
    if not on_cpu:
        print(
            "GFLOP on a GPU: the release's FlopCounterMode count for ours too (XLA's cost "
            "analysis leaves out cuDNN's convolutions); nan where the release did not run."
        )
    if on_cpu:
        print(
            "peak GiB: peak RSS of the process: ours one process for all our programs "
            "(every dtype, compilation included), each PyTorch row its own child process."
        )
    else:
        print(
            "peak GiB: the GPU's peak bytes in use: ours over all our programs (every dtype; "
            "JAX's memory_stats), each PyTorch row its own process (max_memory_allocated)."
        )


if __name__ == "__main__":
    main()

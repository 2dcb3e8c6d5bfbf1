"""The whole training loop against its step alone, on a synthetic dataset of MARS's size.

    python benchmarks/train_loop.py [--model=release|demo|tiny] [--train_ids=625]
        [--test_ids=32] [--frame_size=256,128] [--identities=P --instances=K]
        [--steps=40] [--warmup_steps=-1] [--log_every=10] [--step_alone_steps=10]
        [--evaluations=2] [--cache_decoded_gb=GiB] [--dtype=float32] [--data_dir=data]
        [--release_dir=DIR --release_workers=N --release_warmup=3]

The loop is `psta_jax.main`'s training code: `training.loop.train_and_evaluate` with a
validated config, after the command's CPU and logging setup, in a child process. It reads a
synthetic MARS-layout dataset (`psta_jax.datasets.synthetic`: 625 training identities and
256x128 JPEG frames by default, MARS's), generated and prepared once under --data_dir
(<data_dir>/synthetic_mars_<ids>ids_<test ids>test_<H>x<W>, TFDS under <data_dir>/tfds/). The
run trains --warmup_steps (default: one epoch, every identity once) and then --steps more,
evaluates and checkpoints --evaluations times evenly (default: half-way and at the end), and
writes per log interval the loop's own timings
(`training.loop_timing`: steps/s without evaluations and saves, input wait, host CPU).

Printed, one line per measure (every value positive):
  loop clips/s              steady state: the log intervals after the warm-up (the compile
                            and the first epoch are left out), evaluations and saves excluded
  step alone clips/s        the same compiled step in the same process (JAX's persistent
                            compilation cache gives the loop the same executable), on
                            --step_alone_batches batches already on the device: the mean of
                            a run just before the loop and one just after it
  loop / step alone         the goal is >= 0.95; "per CPU-second": clips per CPU-second of
                            each, which cancels the cores other jobs took from either phase
  host CPU % (loop, step)   this process's CPU time over wall time x usable cores
  input wait                the loop blocked on the next batch: % of its time, ms per step
  input pipeline alone      its batches pulled as fast as it makes them, in the same process
                            after the loop: clips/s, and the CPU cores 100 clips/s take
  evaluation s              the last of --evaluations (the first compiles the embedding)
  checkpoint s              the loop blocked in the last save (Orbax writes asynchronously),
                            and one save written to disk from start to finish
With --release_dir (a clone of github.com/WangYQ9/VideoReID-PSTA; it imports torchvision,
yacs and pandas besides torch), the release's training loop on the same data and batch: its
MARS reader, RandomIdentitySampler, VideoDataset with PIL and its transforms in a DataLoader
with --release_workers worker processes, and the body of its Train.py `train()` (forward,
DeepSupervision losses, backward, Adam, its three `.item()` reads) on its GPU when torch
sees one (as Train.py, with pinned memory), else on the CPU, timed over --steps steps after
--release_warmup; nothing of its code is copied here. Its network is always the release's
ResNet-50 PSTA (frames resized to --model's image size): compare with --model=release.

The model: release (ResNet-50 PSTA at 256x128, T=8; the default on accelerators), demo
(configs/demo.py's: ResNet-18 width 8 at 64x32, T=8; the default on the CPU) or tiny (the
test suite's). The batch defaults to P=8 x K=4 on accelerators and P=8 x K=2 on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue as queue_lib
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from psta_jax.runtime import xla_cpu  # noqa: E402 (after the path; imports no JAX)


def model_fields(name: str) -> dict:
    """config.model's fields for --model (release: the recipe's own)."""
    if name == "demo":
        from configs import demo  # noqa: PLC0415

        return demo.get_config().model.to_dict()
    if name == "tiny":
        from tests.helpers.tiny import TINY  # noqa: PLC0415

        return dict(TINY)
    return {}


def build_config(args: argparse.Namespace):
    """The run's config: the release's recipe on the synthetic dataset, --model's network,
    --evaluations evaluations and checkpoints evenly spaced (the last at the end), no
    pretrained weights."""
    from psta_jax import config_base  # noqa: PLC0415

    height, width = args.frame_size
    raw_dir = os.path.join(
        args.data_dir, f"synthetic_mars_{args.train_ids}ids_{args.test_ids}test_{height}x{width}"
    )
    config = config_base.dataset_config("mars", None, raw_dir=raw_dir, synthetic=True)
    config.data_dir = args.data_dir
    config.dataset.synthetic_sizes = dict(
        num_train_ids=args.train_ids, num_test_ids=args.test_ids, height=height, width=width
    )
    config.model.update(model_fields(args.model))
    config.model.dtype = args.dtype
    config.batch.update(identities=args.identities, instances=args.instances)
    config.input.eval_batch_size = args.eval_batch
    config.pretrained = "none"
    if args.cache_decoded_gb is not None:
        config.input.cache_decoded_gb = args.cache_decoded_gb
    warmup = args.warmup_steps
    if warmup < 0:  # one epoch: every identity once
        warmup = args.train_ids // args.identities
    parts = args.evaluations
    part = -(-(_round_up(warmup, args.log_every) + args.steps) // (parts * args.log_every))
    config.num_train_steps = parts * part * args.log_every
    config.eval_every_steps = config.checkpoint_every_steps = part * args.log_every
    config.log_every_steps = args.log_every
    return config_base.validate(config), _round_up(warmup, args.log_every)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def read_rows(workdir: str) -> list[dict]:
    from psta_jax.training.metric_writers import METRICS_FILE  # noqa: PLC0415

    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def loop_figures(rows: list[dict], warmup: int, log_every: int, batch: int) -> dict:
    """Steady-state figures from the loop's timing rows (intervals after `warmup`)."""
    intervals = [
        r for r in rows if "timing/train_steps_per_sec" in r and r["step"] - log_every >= warmup
    ]
    if not intervals:
        raise SystemExit("no log interval after the warm-up: raise --steps")
    walls = [log_every / r["timing/train_steps_per_sec"] for r in intervals]
    total = sum(walls)

    def mean(key: str) -> float:
        return sum(r[key] * w for r, w in zip(intervals, walls, strict=True)) / total

    evals = [r["timing/eval_s"] for r in rows if "timing/eval_s" in r]
    saves = [r["timing/checkpoint_s"] for r in rows if "timing/checkpoint_s" in r]
    return {
        "loop_clips_per_s": batch * log_every * len(intervals) / total,
        "loop_cpu_percent": mean("timing/host_cpu_percent"),
        "input_wait_percent": 100 * mean("timing/input_wait_fraction"),
        "input_wait_ms": mean("timing/input_wait_ms"),
        "eval_s": evals[-1],
        "checkpoint_blocked_s": saves[-1],
        "steady_steps": log_every * len(intervals),
    }


class StepAlone:
    """The loop's step, built as the loop builds it (the same program: JAX's persistent cache
    returns one compilation to both), timed on batches already on the device; and the loop's
    input pipeline timed alone."""

    def __init__(self, config, num_batches: int):
        import itertools  # noqa: PLC0415

        from flax import nnx  # noqa: PLC0415

        from psta_jax import config_base, datasets  # noqa: PLC0415
        from psta_jax.input import preprocess  # noqa: PLC0415
        from psta_jax.input.pipeline import TrainBatches  # noqa: PLC0415
        from psta_jax.models import build_model  # noqa: PLC0415
        from psta_jax.runtime import sharding  # noqa: PLC0415
        from psta_jax.training import losses, optimizer, steps  # noqa: PLC0415

        mesh = sharding.make_mesh()
        splits = datasets.open_dataset(config_base.dataset_spec(config))
        train_input = config_base.train_input(config)
        self.data = TrainBatches(splits.train, train_input, seed=config.seed)
        self.batch_size = train_input.global_batch_size
        num_classes = self.data.num_identities
        tx, _ = optimizer.create_optimizer(self.data.steps_per_epoch, **config.optimizer.to_dict())
        # Built as the loop builds it (random_model's state differs in ways that change the HLO).
        model = build_model(config.model.to_dict(), num_classes, nnx.Rngs(config.seed))
        graphs, self.state = steps.create_train_state(model, tx, mesh)
        step = steps.compile_train_step(
            graphs,
            tx,
            losses.bound_psta_loss(num_classes, **config.loss.to_dict()),
            mesh,
            preprocess.clip_preparation(train_input),
            log_grad_norm=config.log_grad_norm,
        )
        self.batches = [
            sharding.shard_batch(b, mesh)
            for b in itertools.islice(self.data.iterator(start_step=500), num_batches)
        ]
        start = time.perf_counter()
        self.step = step.lower(self.state, self.batches[0]).compile()
        self.compile_s = time.perf_counter() - start

    def time_steps(self, num_steps: int) -> tuple[float, float]:
        """(clips/s, host CPU %) of `num_steps` steps after two untimed ones."""
        import jax  # noqa: PLC0415

        for batch in self.batches[:2]:
            self.state, metrics = self.step(self.state, batch)
        jax.block_until_ready(metrics)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        for i in range(num_steps):
            self.state, metrics = self.step(self.state, self.batches[i % len(self.batches)])
        jax.block_until_ready((self.state, metrics))
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        return num_steps * self.batch_size / wall, _percent_of_cores(cpu, wall)

    def time_input(self, num_batches: int) -> tuple[float, float]:
        """(clips/s, CPU cores per 100 clips/s) of the input pipeline alone."""
        iterator = self.data.iterator(start_step=1000)
        for _ in range(2):
            next(iterator)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        batches = 0
        # At least half a second: a fast pipeline's CPU time would otherwise read as 0 (ticks).
        while batches < num_batches or time.perf_counter() - wall < 0.5:
            next(iterator)
            batches += 1
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        del iterator
        clips = batches * self.batch_size
        return clips / wall, 100 * cpu / clips

    def time_save(self) -> float:
        """Seconds of one checkpoint save of the state, from the call until it is on disk."""
        from psta_jax.runtime import checkpointing  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as folder:
            checkpoints = checkpointing.Checkpoints(folder)
            start = time.perf_counter()
            opt = {"opt_state": self.state.opt_state, "step": self.state.step}
            checkpoints.save(1, {"model": self.state.model_variables(), "opt": opt})
            checkpoints.wait()
            seconds = time.perf_counter() - start
            checkpoints.close()
        return seconds


def _percent_of_cores(cpu: float, wall: float) -> float:
    return 100 * cpu / (wall * len(os.sched_getaffinity(0)))


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _ours(args: argparse.Namespace, queue) -> None:
    """Child process: the step alone, the loop, the step alone again, the input alone."""
    xla_cpu.configure_for_cpu_if_needed()
    from psta_jax.runtime import cli  # noqa: PLC0415

    cli.quiet_libraries(False)
    cli.keep_tensorflow_on_host(False)
    import jax  # noqa: PLC0415

    # The step alone below compiles the loop's program again: the cache returns it.
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    from psta_jax import config_base, datasets  # noqa: PLC0415
    from psta_jax.training import loop  # noqa: PLC0415

    config, warmup = build_config(args)
    datasets.open_dataset(config_base.dataset_spec(config))  # generated and prepared once
    alone = StepAlone(config, args.step_alone_batches)  # compiles the loop's step (cached)
    before = alone.time_steps(args.step_alone_steps)
    workdir = os.path.join(args.workdir, "run")
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    run_s = time.perf_counter() - start
    after = alone.time_steps(args.step_alone_steps)
    batch = config.batch.identities * config.batch.instances
    result = loop_figures(read_rows(workdir), warmup, args.log_every, batch)
    result.update(run_s=run_s, total_steps=config.num_train_steps, warmup=warmup, batch=batch)
    input_rate, input_cores = alone.time_input(max(args.step_alone_steps, 10))
    result.update(
        step_clips_per_s=(before[0] + after[0]) / 2,
        step_before_after=(before[0], after[0]),
        step_cpu_percent=(before[1] + after[1]) / 2,
        step_compile_s=alone.compile_s,
        input_clips_per_s=input_rate,
        input_cores_per_100=input_cores,
        caches_decoded=alone.data.caches_decoded,
        checkpoint_disk_s=alone.time_save(),
    )
    queue.put(result)


def _release(args: argparse.Namespace, queue) -> None:
    """Child process: the release's DataLoader and Train.py step, on the same data."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its dataset statistics and model notes
            result = release_loop(args)
        queue.put(result)
    except Exception as error:  # reported, not raised: ours still prints
        queue.put({"release_error": f"{type(error).__name__}: {error}"})


def release_loop(args: argparse.Namespace) -> dict:
    """Times the release's training loop from --release_dir (see the module docstring)."""
    import torch  # noqa: PLC0415

    sys.path.insert(0, os.path.abspath(args.release_dir))
    os.chdir(args.release_dir)  # its modules read relative paths
    import data_manager  # noqa: PLC0415
    import models  # noqa: PLC0415
    import transforms as release_transforms  # noqa: PLC0415
    from losses import CrossEntropyLabelSmooth, TripletLoss  # noqa: PLC0415
    from samplers import RandomIdentitySampler  # noqa: PLC0415
    from torch.utils.data import DataLoader  # noqa: PLC0415
    from utils import DeepSupervision  # noqa: PLC0415
    from video_loader import VideoDataset  # noqa: PLC0415

    config, _ = build_config(args)
    warmup = args.release_warmup
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    # Its reader wants <root>/MARS: a folder of links to the synthetic dataset.
    root = tempfile.mkdtemp(prefix="release_root_")
    os.symlink(os.path.abspath(config.dataset.raw_dir), os.path.join(root, "MARS"))
    dataset = data_manager.init_dataset(root=root, name="mars")
    height, width = config.model.image_size
    transform = release_transforms.Compose(
        [
            release_transforms.resize((height, width), interpolation=3),
            release_transforms.random_horizontal_flip(),
            release_transforms.to_tensor(),
            release_transforms.normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            release_transforms.random_erasing(probability=0.5, mean=[0.485, 0.456, 0.406]),
        ]
    )
    batch = config.batch.identities * config.batch.instances
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = DataLoader(
        VideoDataset(
            dataset.train,
            seq_len=config.model.seq_len,
            sample="Random_interval",
            transform=transform,
        ),
        sampler=RandomIdentitySampler(dataset.train, num_instances=config.batch.instances),
        batch_size=batch,
        num_workers=args.release_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=args.release_workers > 0,
    )
    model = models.init_model(
        name="PSTA",
        num_classes=dataset.num_train_pids,
        pretrain_choice="none",
        model_name="resnet50",
        seq_len=config.model.seq_len,
    ).to(device)
    xent = CrossEntropyLabelSmooth(
        num_classes=dataset.num_train_pids, use_gpu=device.type == "cuda"
    )
    tent = TripletLoss(0.3, distance="cosine")
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    model.train()

    def batches():
        while True:
            yield from loader

    iterator = batches()
    total = warmup + args.steps
    waited = 0.0
    wall = cpu = None
    for step in range(total):
        if step == warmup:
            wall, cpu, waited = time.perf_counter(), _cpu_seconds_with_children(), 0.0
        start = time.perf_counter()
        imgs, pids, _, _ = next(iterator)
        waited += time.perf_counter() - start
        # Train.py's train(), one batch.
        optimizer.zero_grad()
        imgs, pids = imgs.to(device), pids.to(device)
        outputs, features = model(imgs)
        xent_loss = DeepSupervision(xent, outputs, pids)
        tent_loss = DeepSupervision(tent, features, pids)
        xent_loss.item(), tent_loss.item()  # its AverageMeters
        loss = xent_loss + tent_loss
        loss.backward()
        optimizer.step()
        loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - wall
    cpu = _cpu_seconds_with_children() - cpu
    return {
        "release_clips_per_s": args.steps * batch / wall,
        "release_cpu_percent": 100 * cpu / (wall * len(os.sched_getaffinity(0))),
        "release_input_wait_percent": 100 * waited / wall,
    }


def _cpu_seconds_with_children() -> float:
    """CPU seconds of this process and its DataLoader workers (their /proc stat)."""
    import psutil  # noqa: PLC0415

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def in_child(target, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(args, queue))
    process.start()
    try:
        while True:
            try:
                return queue.get(timeout=10)
            except queue_lib.Empty:
                if not process.is_alive():
                    raise SystemExit(f"{target.__name__} failed: see its output above") from None
    finally:
        process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", choices=("release", "demo", "tiny"), default=None, help="CPU: demo; else release"
    )
    parser.add_argument("--train_ids", type=int, default=625, help="MARS: 625")
    parser.add_argument("--test_ids", type=int, default=32, help="MARS: 636 (evaluation cost)")
    parser.add_argument("--frame_size", default="256,128", help="stored frames, H,W (MARS's)")
    parser.add_argument("--identities", type=int, default=None, help="P")
    parser.add_argument("--instances", type=int, default=None, help="K")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=40, help="timed steps after the warm-up")
    parser.add_argument(
        "--warmup_steps", type=int, default=-1, help="untimed steps first; -1: one epoch"
    )
    parser.add_argument("--log_every", type=int, default=10, help="steps per timing interval")
    parser.add_argument("--step_alone_steps", type=int, default=10)
    parser.add_argument("--step_alone_batches", type=int, default=4)
    parser.add_argument("--eval_batch", type=int, default=32)
    parser.add_argument(
        "--evaluations",
        type=int,
        default=2,
        help="evaluations and saves, evenly spaced; the last one's cost is reported (with 1, "
        "it includes compiling the embedding)",
    )
    parser.add_argument(
        "--cache_decoded_gb", type=float, default=None, help="default: the config's (2 GiB)"
    )
    parser.add_argument("--release_warmup", type=int, default=3, help="the release's untimed steps")
    parser.add_argument("--data_dir", default=os.path.join(REPO_ROOT, "data"))
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--release_dir", default=None, help="a clone of the authors' release")
    parser.add_argument("--release_workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    args.frame_size = tuple(int(v) for v in args.frame_size.split(","))
    on_cpu = xla_cpu.will_run_on_cpu()
    args.model = args.model or ("demo" if on_cpu else "release")
    args.identities = args.identities or 8
    args.instances = args.instances or (2 if on_cpu else 4)
    args.data_dir = os.path.abspath(args.data_dir)

    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = args.workdir or scratch
        load_before = os.getloadavg()[0]
        ours = in_child(_ours, args)
        release = {}
        if args.release_dir:
            try:
                release = in_child(_release, args)
            except SystemExit as error:  # it died: ours still prints
                release = {"release_error": str(error)}
        load_after = os.getloadavg()[0]

    print(
        f"PSTA training loop, model {args.model} ({args.dtype}), {args.train_ids} training ids, "
        f"frames {args.frame_size[0]}x{args.frame_size[1]} JPEG, P={args.identities} x "
        f"K={args.instances} ({ours['batch']} clips), {ours['total_steps']} steps: warm-up "
        f"{ours['warmup']}, timed {ours['steady_steps']}; {_cpu_name()}, "
        f"{len(os.sched_getaffinity(0))} cores, load {load_before:.1f} before, "
        f"{load_after:.1f} after; decoded frames cached: {ours['caches_decoded']}; loop run "
        f"{ours['run_s']:.0f} s; step alone {ours['step_before_after'][0]:.3g} clips/s before "
        f"the loop, {ours['step_before_after'][1]:.3g} after"
    )
    rows = [
        ("loop clips/s", ours["loop_clips_per_s"]),
        ("step alone clips/s", ours["step_clips_per_s"]),
        ("loop / step alone", ours["loop_clips_per_s"] / ours["step_clips_per_s"]),
        ("same, per CPU-second", per_cpu_second(ours)),
        ("host CPU % (loop)", ours["loop_cpu_percent"]),
        ("host CPU % (step alone)", ours["step_cpu_percent"]),
        ("input wait % of loop time", ours["input_wait_percent"]),
        ("input wait ms per step", ours["input_wait_ms"]),
        ("input pipeline alone clips/s", ours["input_clips_per_s"]),
        ("input CPU cores per 100 clips/s", ours["input_cores_per_100"]),
        ("evaluation s", ours["eval_s"]),
        ("checkpoint s (loop blocked)", ours["checkpoint_blocked_s"]),
        ("checkpoint s (save to disk)", ours["checkpoint_disk_s"]),
    ]
    if "release_error" in release:
        print(f"release loop not timed: {release['release_error']}")
    elif release:
        rows += [
            ("release loop clips/s", release["release_clips_per_s"]),
            ("host CPU % (release loop)", release["release_cpu_percent"]),
            ("release input wait % of loop time", release["release_input_wait_percent"]),
            ("loop / release loop", ours["loop_clips_per_s"] / release["release_clips_per_s"]),
        ]
    print(f"{'measure':36s} value")
    for name, value in rows:
        print(f"{name:36s} {value:.4g}")


def per_cpu_second(ours: dict) -> float:
    """The loop's clips per CPU-second over the step alone's: on a host shared with other
    jobs the cores each phase got differ, and this ratio cancels that (it says how much CPU
    the loop spends beyond the step: input, bookkeeping)."""
    loop = ours["loop_clips_per_s"] / ours["loop_cpu_percent"]
    return loop / (ours["step_clips_per_s"] / ours["step_cpu_percent"])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0].splitlines()
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first)}
        name = " ".join(fields["model name"].split())
        return f"{name} (family {fields['cpu family']} model {fields['model']})"
    except (OSError, KeyError):
        return "unknown CPU"


if __name__ == "__main__":
    main()

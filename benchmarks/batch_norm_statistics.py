"""The bf16 train step with one-pass (the default) and two-pass BatchNorm statistics, timed
interleaved in one run beside the release's network and loss (our PyTorch port,
`psta_jax.interop.torch_model`, checked against the release's outputs).

    python benchmarks/batch_norm_statistics.py [--steps_per_call=5] [--repeats=6]
        [--identities=8 --instances=4] [--baselines=release] [--model=release|demo]

bfloat16 activations take their BatchNorm statistics in one pass over x
(`psta_jax.models.batch_norm.ONE_PASS_BELOW_FLOAT32`); float32 and float64 always take two,
as PyTorch. This builds the bf16 step (`benchmarks/train_step.py`'s, the one psta_jax.main
runs) once with each, checks that the two programs differ, and times them and the
release's float32 step (`model_throughput.py`'s baseline, in its own process) in
rotated interleaved rounds of --steps_per_call steps per wait, after a warm-up round. Printed:
clips/s (best and median over the rounds) and each variant's ratio to the release.
Defaults to P=8 x K=4 on accelerators and P=2 x K=2 on the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from psta_jax.runtime import xla_cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_throughput import TorchBaseline, interleaved_rounds, timed  # noqa: E402 (sibling)
from train_step import benchmark_config, build_train_step, steps_call  # noqa: E402

VARIANTS = {"one-pass": True, "two-pass": False}  # name -> ONE_PASS_BELOW_FLOAT32


def build_variants(config, steps_per_call: int) -> dict:
    """{variant: call running `steps_per_call` bf16 train steps and waiting for the last}."""
    from psta_jax.models import batch_norm  # noqa: PLC0415

    calls, programs = {}, {}
    default = batch_norm.ONE_PASS_BELOW_FLOAT32
    try:
        for name, one_pass in VARIANTS.items():
            batch_norm.ONE_PASS_BELOW_FLOAT32 = one_pass  # read while tracing
            step, state, batch = build_train_step(config, "bfloat16")
            lowered = step.lower(state, batch)
            programs[name] = lowered.as_text()
            calls[name] = steps_call(lowered.compile(), state, batch, steps_per_call)
    finally:
        batch_norm.ONE_PASS_BELOW_FLOAT32 = default
    if len(set(programs.values())) != len(programs):
        raise RuntimeError(
            "the one-pass and two-pass programs are the same: the switch in "
            "psta_jax/models/batch_norm.py was not read while tracing"
        )
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps_per_call", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=6, help="interleaved timed rounds")
    parser.add_argument("--identities", type=int, default=None)
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--baselines", default="release", help="'release' or '' for none")
    parser.add_argument(
        "--model",
        choices=("release", "demo"),
        default="release",
        help="release: ResNet-50 at 256x128; demo: configs/demo.py's network",
    )
    args = parser.parse_args()
    if args.baselines not in ("release", ""):
        parser.error(f"--baselines: expected 'release' or '', got {args.baselines!r}")
    on_cpu = xla_cpu.will_run_on_cpu()
    xla_cpu.configure_for_cpu_if_needed()  # before JAX starts its backends
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # room for PyTorch

    import jax  # noqa: PLC0415

    config = benchmark_config(args.model, args.identities, args.instances, on_cpu)
    clips = config.batch.identities * config.batch.instances
    print(
        f"bf16 train step, {jax.devices()[0].device_kind}, P={config.batch.identities} x "
        f"K={config.batch.instances}, {args.steps_per_call} steps per wait, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    # The release is started (built, FLOPs counted) before our programs compile.
    release = (
        TorchBaseline(
            len(os.sched_getaffinity(0)),
            "release",
            "train",
            clips,
            config.batch.instances,
            "cpu" if on_cpu else "cuda",
            args.steps_per_call,
        )
        if args.baselines
        else None
    )
    steps = args.steps_per_call
    runs = {
        name: lambda call=call: timed(call)[0] / steps
        for name, call in build_variants(config, steps).items()
    }
    if release:
        runs["release"] = lambda: release.run()[0] / steps
    times = interleaved_rounds(runs, args.repeats)
    if release:
        release.close()

    print(
        f"{'variant':9s} {'best clips/s':>12s} {'median':>8s} {'ms/step':>8s} {'vs release':>10s}"
    )
    for name, step_times in times.items():
        best = min(step_times)
        ratio = f"{min(times['release']) / best:9.3f}x" if "release" in times else ""
        print(
            f"{name:9s} {clips / best:12.1f} {clips / statistics.median(step_times):8.1f} "
            f"{1e3 * best:8.2f} {ratio:>10s}"
        )


if __name__ == "__main__":
    main()

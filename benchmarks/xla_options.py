"""One PSTA program compiled with several sets of XLA options, or built with some config
fields changed, timed interleaved in one process.

    python benchmarks/xla_options.py [--program=train|eval] [--dtype=float32]
        [--variant='NAME:OPTION=VALUE[;OPTION=VALUE...]' ...]
        [--config_variant='NAME:FIELD=VALUE[;FIELD=VALUE...]' ...] [--repeats=8]
        [--steps_per_call=1] [--identities=P --instances=K] [--eval_batch=1]
        [--model=release|demo] [--baseline=release] [--hlo_dir=DIR]

    e.g. --variant='default-scheduler:xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT'
         --config_variant='one-stage:model.num_stages=1'

The options are XLA's `DebugOptions` fields, the names XLA_FLAGS takes without their `--`
(values: true/false, numbers, enum values spelt in full, lists comma-separated). Each
variant is the same lowered program compiled with them (`Lowered.compile(compiler_options=
...)`) on top of the process's XLA_FLAGS (psta_jax.runtime.xla_cpu's on the CPU); `base` compiles
with none. A --config_variant is the program built again from the config with those fields
changed (dotted names, as --config.FIELD takes them; e.g. an ablation's model fields) and
compiled as base is: what a change to the model or the recipe costs. Every variant runs in
one process, interleaved round by round, each round in a rotated order. On a shared machine,
whose speed here drifts by 10-30% from one process to the next, only such a comparison
resolves effects of a few percent; the column to read is the median over rounds of each
round's time against base's in the same round.

Programs: `train`, the step psta_jax.main runs (`benchmarks/train_step.py`'s; each variant
steps its own copy of the state, --steps_per_call steps per wait), P=2 x K=2 on the CPU and
P=8 x K=4 on accelerators by default; `eval`, the jitted embedding of --eval_batch uint8
clips (`model_throughput.py`'s). A variant whose options XLA refuses (a misspelt name, an
unknown value) is reported and dropped before anything is timed, so it does not waste a run
on a lent accelerator; with none left the script fails. A variant whose optimised HLO is
base's is timed all the same and marked `same HLO`: its options did nothing, or act below
the HLO (GPU command buffers are built from thunks, code generation), which only the times
tell. Printed beside the times: how far each variant's outputs (train: the first step's
loss; eval: the embeddings) are from base's.

With --baseline=release the release's network in our PyTorch port (float32,
`model_throughput.py`'s baseline, in its own child process, on this machine's GPU when JAX
runs on one) takes its turn in every round on the same clips, and each variant's median
per-round speed over the release's is printed too: the headline ratio, option by option.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from psta_jax.runtime import xla_cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_throughput import (  # noqa: E402 (sibling benchmarks)
    TorchBaseline,
    build_embed,
    cpu_peak_gflops,
    interleaved_rounds,
    timed,
)
from train_step import benchmark_config, build_train_step, steps_call  # noqa: E402

BASE, RELEASE = "base", "release"
Option = bool | int | float | str  # an XLA option's value


def parse_variant(text: str, what: str = "OPTION") -> tuple[str, dict[str, Option]]:
    """'NAME:KEY=VALUE;KEY=VALUE' -> (NAME, {KEY: VALUE}); `what` names the keys in errors."""
    name, sep, options = text.partition(":")
    pairs = [item.partition("=") for item in options.split(";") if item]
    if (
        not sep
        or not name
        or name in (BASE, RELEASE)
        or not pairs
        or any(not key or not eq for key, eq, _ in pairs)
    ):
        raise argparse.ArgumentTypeError(
            f"expected NAME:{what}=VALUE[;{what}=VALUE...] with NAME other than {BASE!r} and "
            f"{RELEASE!r}, got {text!r}"
        )
    return name, {key.strip().removeprefix("--"): option_value(value) for key, _, value in pairs}


def parse_config_variant(text: str) -> tuple[str, dict[str, Option]]:
    return parse_variant(text, "FIELD")


def with_fields(config, fields: dict[str, Option]):
    """A copy of `config` with dotted `fields` set; ValueError naming the field otherwise."""
    config = config.copy_and_resolve_references()
    for field, value in fields.items():
        *parents, leaf = field.split(".")
        node = config
        try:
            for parent in parents:
                node = node[parent]
            if leaf not in node:
                raise KeyError(leaf)
        except (KeyError, TypeError):
            raise ValueError(f"config field {field}: the config has no such field") from None
        try:
            node[leaf] = value
        except (TypeError, ValueError) as error:
            raise ValueError(f"config field {field}={value!r}: {error}") from None
    return config


def option_value(text: str) -> Option:
    """An XLA option's value as `compiler_options` takes it: true/false as bool, numbers as
    numbers, anything else (enum values, lists) as text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def lower_program(program: str, config, eval_batch: int) -> tuple:
    """(lowered program, its arguments): the train step on a P x K batch, or the embedding
    of `eval_batch` clips, computing in config.model.dtype."""
    if program == "train":
        step, state, batch = build_train_step(config, config.model.dtype)
        return step.lower(state, batch), (state, batch)
    embed, params, model_state, clips = build_embed(config, eval_batch)
    return embed.lower(params, model_state, clips), (params, model_state, clips)


def build_calls(
    program: str,
    config,
    variants: dict[str, dict[str, Option]],
    config_variants: dict[str, dict[str, Option]],
    steps_per_call: int,
    eval_batch: int,
    hlo_dir: str | None = None,
) -> tuple[dict, dict, dict, set]:
    """({variant: call}, {variant: output to compare}, {dropped variant: why}, {variants
    whose optimised HLO is base's}): `program` lowered from `config` and compiled with each
    variant's XLA options, base first, then lowered from `config` with each config variant's
    fields and compiled as base is. A variant whose options XLA refuses is dropped rather
    than timed. With `hlo_dir`, each variant's optimised HLO is written there as
    NAME.hlo.txt."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    base_program = lower_program(program, config, eval_batch)
    builds = [(name, options, base_program) for name, options in {BASE: {}, **variants}.items()]
    builds += [
        (name, {}, lower_program(program, with_fields(config, fields), eval_batch))
        for name, fields in config_variants.items()
    ]
    calls, outputs, texts, dropped, same_hlo = {}, {}, {}, {}, set()
    for name, options, (lowered, args) in builds:
        start = time.perf_counter()
        try:
            compiled = lowered.compile(compiler_options=options or None)
        except jax.errors.JaxRuntimeError as error:  # XLA refused an option
            if name == BASE:
                raise
            dropped[name] = f"did not compile: {str(error).splitlines()[0]}"
            continue
        print(f"compiled {name} in {time.perf_counter() - start:.0f} s", flush=True)
        texts[name] = compiled.as_text()
        if hlo_dir:
            os.makedirs(hlo_dir, exist_ok=True)
            with open(os.path.join(hlo_dir, f"{name}.hlo.txt"), "w") as f:
                f.write(texts[name])
        if name != BASE and texts[name] == texts[BASE]:
            same_hlo.add(name)
        if program == "train":
            # Each variant steps its own copy: the step donates its state.
            call = steps_call(compiled, jax.tree.map(jnp.copy, args[0]), args[1], steps_per_call)
            outputs[name] = np.asarray(call()["loss"])
        else:

            def call(compiled=compiled, args=args):
                return jax.block_until_ready(compiled(*args))

            outputs[name] = np.asarray(call())
        calls[name] = call
    return calls, outputs, dropped, same_hlo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", choices=("train", "eval"), default="train")
    parser.add_argument("--dtype", default="float32", help="compute dtype (float32, bfloat16)")
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        help="NAME:OPTION=VALUE[;OPTION=VALUE...] (repeatable)",
    )
    parser.add_argument(
        "--config_variant",
        action="append",
        type=parse_config_variant,
        default=[],
        help="NAME:FIELD=VALUE[;FIELD=VALUE...] (repeatable)",
    )
    parser.add_argument("--repeats", type=int, default=8, help="interleaved timed rounds")
    parser.add_argument("--steps_per_call", type=int, default=1, help="train steps per wait")
    parser.add_argument("--identities", type=int, default=None)
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--eval_batch", type=int, default=1, help="clips per eval call")
    parser.add_argument(
        "--model",
        choices=("release", "demo"),
        default="release",
        help="release: ResNet-50 at 256x128; demo: configs/demo.py's network",
    )
    parser.add_argument(
        "--hlo_dir", default=None, help="write each variant's optimised HLO to DIR/NAME.hlo.txt"
    )
    parser.add_argument(
        "--baseline",
        choices=(RELEASE,),
        default=None,
        help="also time the release's network (our PyTorch port) in every round "
        "(--model=release only)",
    )
    args = parser.parse_args()
    variants, config_variants = dict(args.variant), dict(args.config_variant)
    if not variants and not config_variants:
        parser.error("give at least one --variant or --config_variant to compare with base")
    if len({*variants, *config_variants}) != len(args.variant) + len(args.config_variant):
        parser.error("variant names must differ")
    if args.baseline and args.model != "release":
        parser.error("--baseline=release compares the release's network: use --model=release")
    # On a GPU, JAX would otherwise reserve 75% of its memory and starve the release.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    on_cpu = xla_cpu.will_run_on_cpu()
    xla_cpu.configure_for_cpu_if_needed()  # before JAX starts its backends

    import jax  # noqa: PLC0415

    # A program loaded from JAX's persistent cache prints otherwise than a fresh one, which
    # would hide an option that changed nothing.
    jax.config.update("jax_enable_compilation_cache", False)
    config = benchmark_config(args.model, args.identities, args.instances, on_cpu)
    config.model.dtype = args.dtype
    for name, fields in config_variants.items():
        try:
            with_fields(config, fields)
        except ValueError as error:
            parser.error(f"--config_variant {name}: {error}")
    clips = (
        config.batch.identities * config.batch.instances
        if args.program == "train"
        else args.eval_batch
    )
    steps = args.steps_per_call if args.program == "train" else 1
    device = jax.devices()[0]
    machine = (
        cpu_peak_gflops(len(os.sched_getaffinity(0)))[1]
        if device.platform == "cpu"
        else device.device_kind
    )
    print(
        f"{args.program} ({clips} clips, {args.dtype}) on {machine}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()[0]:.1f}"
    )
    release = None
    if args.baseline:  # started (built, FLOPs counted) before our programs compile
        release = TorchBaseline(
            len(os.sched_getaffinity(0)),
            RELEASE,
            args.program,
            clips,
            config.batch.instances if args.program == "train" else 1,
            "cpu" if on_cpu else "cuda",
            steps,
        )
    calls, outputs, dropped, same_hlo = build_calls(
        args.program,
        config,
        variants,
        config_variants,
        args.steps_per_call,
        args.eval_batch,
        args.hlo_dir,
    )
    for name, why in dropped.items():
        print(f"dropped {name}: {why}")
    if len(calls) == 1:
        sys.exit(f"error: no variant left to compare with base: {', '.join(dropped)} dropped")
    measures = {name: lambda call=call: timed(call)[0] / steps for name, call in calls.items()}
    if release:
        measures[RELEASE] = lambda: release.run()[0] / steps  # timed in its own process
    times = interleaved_rounds(measures, args.repeats)
    if release:
        release.close()

    def median_ratio(numerator: str, denominator: str) -> float:
        return statistics.median(
            n / d for n, d in zip(times[numerator], times[denominator], strict=True)
        )

    print(
        f"{'variant':20s} {'clips/s':>8s} {'best ms':>9s} {'median ms':>9s} "
        f"{'base/it':>8s}{' it/release best/release' if release else ''} "
        f"{'max|out-base|':>13s}  "
        "options or config fields"
    )
    for name, walls in times.items():
        difference = (
            f"{float(abs(outputs[name] - outputs[BASE]).max()):13.3g}"
            if name in outputs
            else f"{'':13s}"
        )
        versus_release = (
            f" {median_ratio(RELEASE, name):9.3f}x {min(times[RELEASE]) / min(walls):11.3f}x"
            if release
            else ""
        )
        options = ";".join(
            f"{k}={v}"
            for k, v in {**variants.get(name, {}), **config_variants.get(name, {})}.items()
        )
        if name in same_hlo:
            options += " (same HLO)"
        if name == RELEASE:
            options = "the authors' PyTorch release, float32"
        print(
            f"{name:20s} {clips / min(walls):8.3f} {1e3 * min(walls):9.1f} "
            f"{1e3 * statistics.median(walls):9.1f} {median_ratio(BASE, name):7.3f}x"
            f"{versus_release} {difference}  {options}"
        )
    print(
        "base/it: the median over rounds of base's time over this variant's in the same "
        "round (> 1: the variant is faster)."
        + (
            " it/release: the same against the release's (> 1: faster than the release);"
            " best/release: the release's best time over this variant's best (the round"
            " medians also carry the host's stalls, which a GPU step of many short kernels"
            " feels more than the release's)."
            if release
            else ""
        )
        + (
            " same HLO: the variant's optimised HLO is base's (its options did nothing, or "
            "act below the HLO)."
            if same_hlo
            else ""
        )
    )


if __name__ == "__main__":
    main()

"""The demo's result over several seeds: one `make demo` run per seed, then the mean and range.

    python benchmarks/demo_seeds.py [--seeds=0,1,2,3,4] [--root=workdirs/demo_seeds]

Each seed trains configs/demo.py into <root>/seed<N> (a finished workdir is evaluated again
instead of retrained) and the table gives R1, mAP and wall time per seed, their mean and
range (max - min), and the CPU. The README's demo row comes from this table; with --figure the
seeds' learning curves (mean and min-max band) go to a PNG (docs/figures/demo_curves.png).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from model_throughput import cpu_peak_gflops  # noqa: E402 (sibling)


def run_seed(seed: int, workdir: pathlib.Path) -> dict:
    start = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "psta_jax.main",
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((workdir / "results.json").read_text())
    return {
        "seed": seed,
        "rank1": 100 * metrics["rank1"],
        "mAP": 100 * metrics["mAP"],
        "seconds": time.monotonic() - start,
        "log_lines": len(result.stderr.splitlines()) + len(result.stdout.splitlines()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--root", default="workdirs/demo_seeds")
    parser.add_argument(
        "--figure", default="", help="also draw the seeds' learning curves to this PNG"
    )
    args = parser.parse_args(argv)
    root = REPO / args.root
    rows = [run_seed(int(s), root / f"seed{s}") for s in args.seeds.split(",")]
    print(cpu_peak_gflops(len(os.sched_getaffinity(0)))[1])
    print("| seed | R1 | mAP | wall time | log lines |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['seed']} | {row['rank1']:.2f} | {row['mAP']:.2f} | "
            f"{row['seconds'] / 60:.1f} min | {row['log_lines']} |"
        )
    for key in ("rank1", "mAP"):
        values = [row[key] for row in rows]
        print(
            f"{key}: mean {sum(values) / len(values):.2f}, range {min(values):.2f}-"
            f"{max(values):.2f} (spread {max(values) - min(values):.2f}) over {len(values)} seeds"
        )
    if args.figure:
        from psta_jax.inspection import curves_figure  # noqa: PLC0415 (matplotlib)

        curves_figure([root / f"seed{row['seed']}" for row in rows], path=args.figure)
        print(f"learning curves: {args.figure}")


if __name__ == "__main__":
    main()

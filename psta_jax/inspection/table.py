"""The paper's Tables 1 and 2 for several runs: structure flags, metrics from results.json,
parameters, XLA FLOPs and speed measured on the compiled eval program.

XLA counts 2 FLOPs per multiply-add; the paper's "GFLOPs" column counts multiply-adds, so it
is about half of ours for the same network."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from psta_jax.inspection.runs import Run, effective_aggregation
from psta_jax.runtime import sharding
from psta_jax.training import steps

TABLE_STEM = "ablation_table"
AGGREGATION_LETTERS = {"pyramid": "P", "adjacent": "A", "global": "G", "none": "-"}


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Measured cost of a run's eval program at `batch_size` clips."""

    params: int
    flops_per_clip: float
    clips_per_second: float
    batch_size: int


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One row of Tables 1/2: structure flags (None: no STAM), metrics in %, cost measured
    with batches of `batch_size` clips."""

    run: str
    ablation: str
    aggregation: str
    sra: bool | None
    tra: bool | None
    conv_block: bool | None
    stages: int
    mAP: float
    rank1: float
    clips_per_second: float
    params: int
    gflops_per_clip: float
    batch_size: int
    checkpoint_step: int


def measure_cost(run: Run, *, batch_size: int | None = None, repeats: int = 3) -> ModelCost:
    """Trainable parameters, XLA FLOPs per clip and eval clips/s (best of `repeats` calls).

    The default batch is the run's evaluation batch, so the program compiled here is the one
    feature extraction uses.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    batch_size = batch_size or sharding.round_up_to_devices(run.trained.eval_batch_size, run.mesh)
    if batch_size % run.mesh.size:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {run.mesh.size} devices"
        )
    clips = random_clips(run.trained.clip_shape, batch_size)
    compiled = run.embed_fn.lower(
        run.params, run.model_state, jax.ShapeDtypeStruct(clips.shape, clips.dtype)
    ).compile()
    flops = xla_flops(compiled.cost_analysis())
    clips = jax.device_put(clips, sharding.data_sharded(run.mesh))
    jax.block_until_ready(compiled(run.params, run.model_state, clips))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(run.params, run.model_state, clips))
        best = min(best, time.perf_counter() - start)
    return ModelCost(
        params=steps.count_trainable(run.params),
        flops_per_clip=flops / batch_size,
        clips_per_second=batch_size / best,
        batch_size=batch_size,
    )


def random_clips(clip_shape: tuple[int, ...], batch_size: int) -> np.ndarray:
    """Random uint8 clips (B, T, H, W, 3), as the eval input's batches are."""
    return np.random.default_rng(0).integers(0, 256, (batch_size, *clip_shape), dtype=np.uint8)


def xla_flops(cost_analysis) -> float:
    """Total 'flops' of a compiled program's cost analysis (a dict, or a list of them)."""
    analyses = cost_analysis if isinstance(cost_analysis, list | tuple) else [cost_analysis]
    flops = sum(float(a.get("flops", 0.0)) for a in analyses if a)
    if not flops > 0:
        raise RuntimeError(f"XLA's cost analysis reports no FLOPs: {cost_analysis!r}")
    return flops


def structure(model_config: Mapping) -> dict:
    """The Table 1/2 structure columns of a model config."""
    aggregation = effective_aggregation(model_config)
    has_stam = aggregation != "none"
    stages = {"pyramid": int(model_config["num_stages"]), "none": 0}.get(aggregation, 1)

    def flag(name: str) -> bool | None:
        return bool(model_config[name]) if has_stam else None

    return dict(
        aggregation=AGGREGATION_LETTERS[aggregation],
        sra=flag("use_sra"),
        tra=flag("use_tra"),
        conv_block=flag("use_conv_block"),
        stages=stages,
    )


def table_row(run: Run, cost: ModelCost) -> TableRow:
    results = run.results or {}
    return TableRow(
        run=run.name,
        ablation=run.trained.ablation,
        **structure(run.trained.model_fields),
        mAP=100.0 * float(results.get("mAP", math.nan)),
        rank1=100.0 * float(results.get("rank1", math.nan)),
        clips_per_second=cost.clips_per_second,
        params=cost.params,
        gflops_per_clip=cost.flops_per_clip / 1e9,
        batch_size=cost.batch_size,
        checkpoint_step=run.step,
    )


def ablation_table(
    runs: Sequence[Run], *, batch_size: int | None = None, repeats: int = 3
) -> list[TableRow]:
    """One TableRow per run, cost measured on this machine."""
    return [
        table_row(run, measure_cost(run, batch_size=batch_size, repeats=repeats)) for run in runs
    ]


MARKDOWN_COLUMNS = (
    "Run",
    "AS",
    "SRA",
    "TRA",
    "Res",
    "Stages",
    "mAP",
    "Rank-1",
    "Speed (clips/s)",
    "Params (M)",
    "GFLOPs",
)


def _mark(flag: bool | None) -> str:
    return "-" if flag is None else ("✓" if flag else "×")


def table_markdown(rows: Sequence[TableRow]) -> str:
    """The paper's layout: AS (P/A/G/-), SRA, TRA, Res (conv block), stages, metrics, cost."""
    lines = [
        "| " + " | ".join(MARKDOWN_COLUMNS) + " |",
        "|" + "|".join(["---"] + [":-:"] * 5 + ["--:"] * 5) + "|",
    ]
    for r in rows:
        cells = (
            r.run,
            r.aggregation,
            _mark(r.sra),
            _mark(r.tra),
            _mark(r.conv_block),
            str(r.stages),
            f"{r.mAP:.1f}",
            f"{r.rank1:.1f}",
            f"{r.clips_per_second:.4g}",
            f"{r.params / 1e6:.4g}",
            f"{r.gflops_per_clip:.4g}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_table_markdown(text: str) -> list[dict[str, str]]:
    """Rows of a table_markdown table as {column: cell} (for checks and notebooks)."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError("expected a markdown table with a header and a separator line")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def write_table(rows: Sequence[TableRow], out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes `ablation_table.md` and `ablation_table.csv` (raw values) into `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / f"{TABLE_STEM}.md"
    markdown.write_text(table_markdown(rows))
    csv_path = out / f"{TABLE_STEM}.csv"
    names = [f.name for f in dataclasses.fields(TableRow)]
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        for row in rows:
            values = dataclasses.asdict(row)
            writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return {"markdown": markdown, "csv": csv_path}

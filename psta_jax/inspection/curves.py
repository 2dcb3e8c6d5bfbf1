"""Learning curves: a workdir's metrics.jsonl against steps (and epochs), seeds as a band.

    read_metrics(workdir)     {'train/loss': Series(steps, values), 'eval/mAP': ..., ...}
    group_runs(workdirs)      workdirs whose config.json differ only in `seed`, as RunGroups
    aggregate_seeds(series)   mean, min and max over seeds on the steps they all logged
    curves_figure(workdirs)   train loss, CE, triplet, learning rate, eval mAP and Rank-1

Only metrics.jsonl and config.json are read (no model, no data, no JAX): curves can be drawn
while a run trains. Steps convert to epochs as the training sampler counts them: an epoch is
`num_classes // batch.identities` steps (`input.batch_plans.steps_per_epoch`; config.json
stores both numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from etils import epath
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from psta_jax.inspection.plotting import finish, new_figure
from psta_jax.runtime import workdir as workdir_lib
from psta_jax.runtime.errors import UserError

# training.metric_writers.METRICS_FILE (not imported: that module starts JAX).
METRICS_FILE = "metrics.jsonl"

# (metrics.jsonl key, panel title, scale of the plotted value, y axis in log scale).
PANELS = (
    ("train/loss", "train loss", 1.0, False),
    ("train/ce", "cross-entropy", 1.0, False),
    ("train/triplet", "triplet", 1.0, False),
    ("train/learning_rate", "learning rate", 1.0, True),
    ("eval/mAP", "eval mAP (%)", 100.0, False),
    ("eval/rank1", "eval Rank-1 (%)", 100.0, False),
)

# A workdir name's seed suffix: 'seed3', 'full_s1', 'run-seed2', 'baseline.4' (not the 50 of
# 'resnet50').
_SEED_SUFFIX = re.compile(r"(?:[-_.](?:seed|s)?|seed)\d+$", re.IGNORECASE)


class MetricsError(UserError, ValueError):
    """A workdir without metrics.jsonl, or a line of it that is not a metrics row."""


class Series(NamedTuple):
    """One metric of one run: steps (N,) int64, ascending and unique; values (N,) float64
    (non-finite values kept as logged)."""

    steps: np.ndarray
    values: np.ndarray


class SeedBand(NamedTuple):
    """One metric over seeds on the S steps every seed logged: steps (S,) int64; mean, low
    (the minimum), high (the maximum): (S,) float64. A non-finite value of any seed makes
    that step's mean non-finite."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclasses.dataclass(frozen=True)
class RunGroup:
    """Workdirs of one config trained with different seeds (or one workdir).

    label: the legend's name; workdirs: in the order given; seeds: each workdir's `seed`
    (None where config.json has none); steps_per_epoch: None where config.json cannot tell.
    """

    label: str
    workdirs: tuple[str, ...]
    seeds: tuple[int | None, ...]
    steps_per_epoch: int | None


def metrics_file(workdir: str | os.PathLike) -> epath.Path:
    """Where a workdir's metrics.jsonl is (it may not exist)."""
    return epath.Path(workdir) / METRICS_FILE


def with_metrics(workdirs: Sequence[str | os.PathLike]) -> list[str]:
    """The `workdirs` that hold a metrics.jsonl (a converted release checkpoint has none)."""
    return [os.fspath(w) for w in workdirs if metrics_file(w).exists()]


def read_metrics(workdir: str | os.PathLike) -> dict[str, Series]:
    """Every scalar of a workdir's metrics.jsonl, by key ('train/loss', 'eval/mAP', ...).

    Each line is a JSON object {"step": int, key: number, ...}. A step logged twice (a
    resumed run) keeps the later line's value. Blank lines are skipped, and so is a last line
    without its newline that does not parse (a row being written, or cut short by a kill).
    Raises `MetricsError` naming the file (and the line) when the file is missing or a line
    is not such an object.
    """
    path = metrics_file(workdir)
    if not path.exists():
        raise MetricsError(
            f"no {METRICS_FILE} in {os.fspath(workdir)}: expected a training workdir, where "
            "psta_jax.main writes every logged scalar to metrics.jsonl as it trains"
        )
    text = path.read_text()
    lines = text.splitlines()
    by_key: dict[str, dict[int, float]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        unfinished = number == len(lines) and not text.endswith("\n")
        row = _parse_row(path, number, line, unfinished=unfinished)
        if row is None:
            continue
        step, scalars = row
        for key, value in scalars.items():
            by_key.setdefault(key, {})[step] = value
    return {
        key: Series(
            np.asarray(sorted(values), np.int64),
            np.asarray([values[s] for s in sorted(values)], np.float64),
        )
        for key, values in sorted(by_key.items())
    }


def _parse_row(
    path: epath.Path, number: int, line: str, *, unfinished: bool
) -> tuple[int, dict[str, float]] | None:
    where = f"{path}, line {number}"
    fix = (
        f"each line of {METRICS_FILE} is one JSON object with an integer 'step' and numbers "
        "(psta_jax.training.metric_writers writes it); repair or delete that line"
    )
    shown = line if len(line) <= 80 else line[:77] + "..."
    try:
        row = json.loads(line)
    except ValueError as error:
        if unfinished:
            return None
        raise MetricsError(f"{where} is not JSON ({error}): {shown!r}; {fix}") from None
    if not isinstance(row, dict):
        raise MetricsError(
            f"{where} is a JSON {type(row).__name__}, not an object: {shown!r}; {fix}"
        )
    step = row.get("step")
    if not _is_int(step) or step < 0:
        raise MetricsError(f"{where} has no non-negative integer 'step' ({step!r}); {fix}")
    scalars = {}
    for key, value in row.items():
        if key == "step":
            continue
        if not _is_number(value):
            raise MetricsError(f"{where}: {key!r} is {value!r}, not a number; {fix}")
        scalars[key] = float(value)
    return step, scalars


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def steps_per_epoch(config: Mapping[str, Any]) -> int | None:
    """Training steps per epoch of a saved config.json payload, or None when it cannot tell.

    The sampler visits every training identity once per epoch, `batch.identities` per step,
    and drops the remainder (`input.batch_plans.steps_per_epoch`); `num_classes` is the
    number of training identities.
    """
    num_classes = config.get("num_classes")
    batch = config.get("batch")
    identities = batch.get("identities") if isinstance(batch, Mapping) else None
    if not (_is_int(num_classes) and _is_int(identities)) or identities < 1:
        return None
    steps = num_classes // identities
    return steps if steps >= 1 else None


def group_runs(workdirs: Sequence[str | os.PathLike]) -> list[RunGroup]:
    """`workdirs` grouped by config: those whose config.json are equal but for `seed` form
    one group (in the order of their first workdir).

    Label: the first workdir's name without its seed suffix ('full' for full_s0, full_s1),
    or its parent folder's when nothing is left ('demo_seeds' for demo_seeds/seed0..4), plus
    '(n seeds)' ('(n runs)' when seeds repeat); a lone workdir keeps its folder name
    ('parent/seed3' for a bare seed name); two groups of one label are numbered. Raises
    `RunConfigError` for a workdir without a readable config.json.
    """
    configs: list[tuple[dict, list[tuple[str, dict]]]] = []
    for workdir in workdirs:
        workdir = os.fspath(workdir)
        saved = workdir_lib.find_run_config(workdir, levels_up=0)
        if saved is None:
            raise workdir_lib.RunConfigError(
                f"no {workdir_lib.CONFIG_FILE} at {workdir}: expected a training workdir "
                "written by psta_jax.main (config.json beside metrics.jsonl)"
            )
        key = {k: v for k, v in saved.payload.items() if k != "seed"}
        for config, members in configs:
            if config == key:
                members.append((workdir, saved.payload))
                break
        else:
            configs.append((key, [(workdir, saved.payload)]))
    groups, uses = [], {}
    for _, members in configs:
        paths = tuple(w for w, _ in members)
        seeds = tuple(p.get("seed") if _is_int(p.get("seed")) else None for _, p in members)
        label = _label(paths, seeds)
        uses[label] = uses.get(label, 0) + 1
        if uses[label] > 1:  # two configs, one name: numbered in order
            label = f"{label} #{uses[label]}"
        groups.append(RunGroup(label, paths, seeds, steps_per_epoch(members[0][1])))
    return groups


def _label(workdirs: Sequence[str], seeds: Sequence[int | None]) -> str:
    first = os.path.abspath(workdirs[0])
    name, parent = os.path.basename(first), os.path.basename(os.path.dirname(first))
    stem = _SEED_SUFFIX.sub("", name)  # '' for 'seed3': its parent names the runs
    if len(workdirs) == 1:
        return name if stem else f"{parent}/{name}"
    distinct = None not in seeds and len(set(seeds)) == len(seeds)
    return f"{stem or parent} ({len(workdirs)} {'seeds' if distinct else 'runs'})"


def aggregate_seeds(series: Sequence[Series]) -> SeedBand:
    """Mean, min and max over `series` (one per seed) on the steps all of them logged.

    series: n >= 1 Series, each with ascending unique steps (N_i,) and values (N_i,).
    Returns a SeedBand of S = |common steps| points (S may be 0).
    """
    if not series:
        raise ValueError("aggregate_seeds needs at least one series")
    for one in series:
        steps = np.asarray(one.steps)
        if steps.shape != np.shape(one.values) or np.any(np.diff(steps) <= 0):
            raise ValueError(
                "each series needs ascending unique steps and one value per step, got steps "
                f"{steps.shape} and values {np.shape(one.values)}"
            )
    common = functools.reduce(np.intersect1d, [np.asarray(s.steps) for s in series])
    common = common.astype(np.int64)
    stacked = np.stack(
        [
            np.asarray(s.values, np.float64)[np.searchsorted(np.asarray(s.steps), common)]
            for s in series
        ]
    )  # (n, S)
    with np.errstate(invalid="ignore"):  # inf - inf: a NaN mean, as the values say
        return SeedBand(common, stacked.mean(axis=0), stacked.min(axis=0), stacked.max(axis=0))


def _colours(count: int) -> list:
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def curves_figure(
    workdirs: Sequence[str | os.PathLike] | str | os.PathLike,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Learning curves of `workdirs`: six panels (train loss, cross-entropy, triplet,
    learning rate, eval mAP and Rank-1 in %) against steps, with epochs on a top axis when
    every run has the same, known steps per epoch.

    Workdirs of one config but for the seed (`group_runs`) draw their mean as a line and
    their min-max as a band on the steps all seeds logged; a lone workdir draws a line. One
    colour per group, named in the first panel's legend. Saves a PNG at `path` if given.
    Raises `MetricsError` (no metrics.jsonl, a malformed line) or `RunConfigError`.
    """
    if isinstance(workdirs, str | os.PathLike):
        workdirs = [workdirs]
    if not workdirs:
        raise ValueError("curves_figure needs at least one workdir")
    groups = group_runs(workdirs)
    metrics = {w: read_metrics(w) for group in groups for w in group.workdirs}
    colours = _colours(len(groups))
    fig = new_figure((14.0, 7.5))
    axes = fig.subplots(2, 3).ravel()
    epoch_steps = {group.steps_per_epoch for group in groups}
    per_epoch = epoch_steps.pop() if len(epoch_steps) == 1 else None
    for ax, (key, title, scale, log_scale) in zip(axes, PANELS, strict=True):
        drawn = False
        for group, colour in zip(groups, colours, strict=True):
            found = [metrics[w][key] for w in group.workdirs if key in metrics[w]]
            if not found:
                continue
            band = aggregate_seeds(found)
            if not len(band.steps):
                continue
            style = dict(color=colour, linewidth=1.6)
            if key.startswith("eval/") or len(band.steps) == 1:
                style.update(marker="o", markersize=4)
            ax.plot(band.steps, band.mean * scale, **style)
            if len(found) > 1 and len(band.steps) == 1:  # one evaluation: min-max as a bar
                ax.vlines(
                    band.steps, band.low * scale, band.high * scale, color=colour, alpha=0.5,
                    linewidth=6,
                )  # fmt: skip
            elif len(found) > 1:
                ax.fill_between(
                    band.steps, band.low * scale, band.high * scale, color=colour, alpha=0.2,
                    linewidth=0,
                )  # fmt: skip
            drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(
                0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center",
                color="grey",
            )  # fmt: skip
        elif log_scale and all(np.all(line.get_ydata() > 0) for line in ax.lines):
            ax.set_yscale("log")
        ax.tick_params(which="both", labelsize=8)
        if per_epoch is not None:
            top = ax.secondary_xaxis(
                "top", functions=(_scaled(1 / per_epoch), _scaled(float(per_epoch)))
            )
            top.xaxis.set_major_locator(MaxNLocator(integer=True))
            top.set_xlabel("epoch", fontsize=8)
            top.tick_params(labelsize=7)
    handles = [
        Line2D([], [], color=colour, linewidth=1.6, label=group.label)
        for group, colour in zip(groups, colours, strict=True)
    ]
    several = any(len(group.workdirs) > 1 for group in groups)
    axes[0].legend(
        handles=handles,
        fontsize=8,
        title="mean, band: min-max over seeds" if several else None,
        title_fontsize=7,
    )
    return finish(fig, path)


def _scaled(factor: float):
    """x -> x * factor on arrays (a secondary axis' conversion)."""

    def convert(x):
        return np.asarray(x, np.float64) * factor

    return convert

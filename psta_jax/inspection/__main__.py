"""Command line for psta_jax.inspection: the ablation table and Figures 4-6 of trained runs.

    python -m psta_jax.inspection --workdirs=WORKDIR[,WORKDIR...] --out=DIR
    (console script: psta-inspect)

writes `DIR/ablation_table.md` and `DIR/ablation_table.csv` (one row per workdir, in the
layout of the paper's Tables 1 and 2: aggregation P/A/G/-, SRA, TRA, conv block, stages,
mAP and Rank-1 from results.json, trainable parameters, XLA GFLOPs per clip, clips/s measured
here) and, per run, `DIR/<run>_attention.png` (Figure 4: SRA/TRA spatial maps of every STAM
stage over a query clip's frames), `DIR/<run>_retrieval.png` (Figure 5: that query's top-k
gallery tracklets, true/false matches marked) and `DIR/<run>_tsne.png` (Figure 6: t-SNE of
the tracklet features of chosen identities). One query and one identity set serve every run,
so the figures compare. `DIR/curves.png` holds the learning curves of the workdirs that have a
metrics.jsonl (seeds of one config as a mean and a min-max band); with `--curves_only` it is
all that is written, from metrics.jsonl and config.json alone (no model, no data, no JAX):

    python -m psta_jax.inspection --workdirs=workdirs/demo_seeds/seed0,... --out=DIR \
        --curves_only

The notebook `notebooks/ablation_inspection.ipynb` calls the same functions.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from absl import flags, logging

from psta_jax import inspection
from psta_jax.runtime import cli, xla_cpu

FIGURES = ("attention", "retrieval", "tsne")
CURVES_FILE = "curves.png"


def draw_curves(
    workdirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, required: bool = True
) -> dict[str, pathlib.Path]:
    """`out_dir/curves.png`: the learning curves of `workdirs`. Returns {'curves': path}.

    `required`: every workdir needs a metrics.jsonl (`inspection.MetricsError` otherwise);
    else those without one (a converted release checkpoint) are left out, and with none left
    nothing is drawn ({}).
    """
    drawn = [os.fspath(w) for w in workdirs]
    if not required:
        kept = inspection.with_metrics(drawn)
        for workdir in sorted(set(drawn) - set(kept)):
            logging.info("%s has no metrics.jsonl: no learning curves for it", workdir)
        drawn = kept
    if not drawn:
        return {}
    path = pathlib.Path(out_dir) / CURVES_FILE
    inspection.curves_figure(drawn, path=path)
    return {"curves": path}


def inspect_runs(
    workdirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    figures: bool = True,
    curves_only: bool = False,
    query: int | None = None,
    top_k: int = 5,
    identities: int = 10,
    batch_size: int | None = None,
    repeats: int = 3,
) -> dict[str, pathlib.Path]:
    """The learning curves, the table of `workdirs` and (with `figures`) each run's three
    figures into `out_dir`; with `curves_only`, the curves alone (nothing else is loaded).

    One query and one identity set serve every run (chosen on the first), so figures compare.
    Returns {'curves', 'markdown', 'csv', '<run>_<figure>': path} ('curves' only when a
    workdir has a metrics.jsonl).
    """
    written = draw_curves(workdirs, out_dir, required=curves_only)  # first: it fails fast
    if curves_only:
        return written
    runs = inspection.load_runs(workdirs, load_data=figures)
    rows = inspection.ablation_table(runs, batch_size=batch_size, repeats=repeats)
    written.update(inspection.write_table(rows, out_dir))
    print(inspection.table_markdown(rows))
    if not figures:
        return written
    out = pathlib.Path(out_dir)
    first = runs[0]
    query = inspection.default_query(first) if query is None else query
    chosen = inspection.default_identities(first, identities)
    for run in runs:
        paths = {kind: out / f"{run.name}_{kind}.png" for kind in FIGURES}
        inspection.attention_figure(run, query=query, path=paths["attention"])
        inspection.retrieval_figure(run, query=query, top_k=top_k, path=paths["retrieval"])
        inspection.tsne_figure(run, identities=chosen, path=paths["tsne"])
        written.update({f"{run.name}_{kind}": path for kind, path in paths.items()})
    return written


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_list(
        "workdirs",
        None,
        "Training workdirs, comma-separated (relative data paths in their configs resolve "
        "from the current directory: the repository root for the demo).",
        flag_values=values,
        required=True,
    )
    flags.DEFINE_string(
        "out",
        None,
        "The output folder for the table and the PNGs.",
        flag_values=values,
        required=True,
    )
    flags.DEFINE_bool(
        "figures",
        True,
        "Draw the figures (--nofigures: the table and the learning curves only).",
        flag_values=values,
    )
    flags.DEFINE_bool(
        "curves_only",
        False,
        f"Write only the learning curves ({CURVES_FILE}), from each workdir's metrics.jsonl "
        "and config.json: no model or data is loaded (the other flags are ignored).",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "query",
        None,
        "Query tracklet position (default: the first with a true match).",
        flag_values=values,
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "top_k", 5, "Ranked tracklets in Figure 5.", flag_values=values, lower_bound=1
    )
    flags.DEFINE_integer(
        "identities", 10, "Identities in Figure 6.", flag_values=values, lower_bound=1
    )
    flags.DEFINE_integer(
        "batch_size",
        None,
        "Clips per call for FLOPs and speed (default: the eval batch).",
        flag_values=values,
        lower_bound=1,
    )
    flags.DEFINE_integer("repeats", 3, "Timed calls per run.", flag_values=values, lower_bound=1)


def _run(values: flags.FlagValues) -> dict[str, pathlib.Path]:
    if not values.curves_only:
        # What runtime.cli does first for a command that computes, skipped by the curves
        # alone: the CPU set up before JAX starts, TensorFlow kept off accelerators.
        xla_cpu.configure_for_cpu_if_needed()
        cli.keep_tensorflow_on_host(cli.verbose())
    written = inspect_runs(
        values.workdirs,
        values.out,
        figures=values.figures,
        curves_only=values.curves_only,
        query=values.query,
        top_k=values.top_k,
        identities=values.identities,
        batch_size=values.batch_size,
        repeats=values.repeats,
    )
    for path in written.values():
        print(path)
    return written


main = cli.Command(
    name="psta-inspect",
    summary="The ablation table (paper Tables 1/2), Figures 4-6 and the learning curves of "
    "trained workdirs.",
    define_flags=_define_flags,
    run=_run,
    uses_jax=False,  # set up in _run: --curves_only starts neither JAX nor TensorFlow
    uses_tensorflow=False,
)

if __name__ == "__main__":
    main.entry()

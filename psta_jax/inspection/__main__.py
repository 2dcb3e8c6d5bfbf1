"""Command line for psta_jax.inspection: the ablation table and Figures 4-6 of trained runs.

    python -m psta_jax.inspection --workdirs WORKDIR [WORKDIR ...] --out DIR

writes `DIR/ablation_table.md` and `DIR/ablation_table.csv` (one row per workdir, in the
layout of the paper's Tables 1 and 2: aggregation P/A/G/-, SRA, TRA, conv block, stages,
mAP and Rank-1 from results.json, trainable parameters, XLA GFLOPs per clip, clips/s measured
here) and, per run, `DIR/<run>_attention.png` (Figure 4: SRA/TRA spatial maps of every STAM
stage over a query clip's frames), `DIR/<run>_retrieval.png` (Figure 5: that query's top-k
gallery tracklets, true/false matches marked) and `DIR/<run>_tsne.png` (Figure 6: t-SNE of
the tracklet features of chosen identities). One query and one identity set serve every run,
so the figures compare. The notebook `notebooks/ablation_inspection.ipynb` calls the same
functions.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

from psta_jax import errors, inspection, xla_cpu

FIGURES = ("attention", "retrieval", "tsne")


def inspect_runs(workdirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 figures: bool = True, query: int | None = None, top_k: int = 5,
                 identities: int = 10, batch_size: int | None = None,
                 repeats: int = 3) -> dict[str, pathlib.Path]:
    """The table of `workdirs` and (with `figures`) each run's three figures into `out_dir`.

    One query and one identity set serve every run (chosen on the first), so figures compare.
    Returns {'markdown', 'csv', '<run>_<figure>': path}.
    """
    runs = inspection.load_runs(workdirs, load_data=figures)
    rows = inspection.ablation_table(runs, batch_size=batch_size, repeats=repeats)
    written = inspection.write_table(rows, out_dir)
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


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m psta_jax.inspection",
        description="Ablation table (paper Tables 1/2) and Figures 4-6 of trained workdirs.")
    parser.add_argument("--workdirs", nargs="+", required=True,
                        help="training workdirs (relative data paths in their configs resolve "
                             "from the current directory: the repository root for the demo)")
    parser.add_argument("--out", required=True, help="output folder for the table and PNGs")
    parser.add_argument("--no_figures", action="store_true", help="write the table only")
    parser.add_argument("--query", type=int, default=None,
                        help="query tracklet position (default: the first with a true match)")
    parser.add_argument("--top_k", type=int, default=5, help="ranked tracklets in Figure 5")
    parser.add_argument("--identities", type=int, default=10, help="identities in Figure 6")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="clips per call for FLOPs and speed (default: the eval batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per run")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an expected error")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, pathlib.Path]:
    args = _parse_args(argv)
    xla_cpu.configure_for_cpu_if_needed()  # before JAX and TensorFlow start their threads
    from psta_jax import input_pipeline  # noqa: PLC0415 (after the CPU setup)

    input_pipeline.disable_tf_accelerators()
    written = inspect_runs(args.workdirs, args.out, figures=not args.no_figures,
                           query=args.query, top_k=args.top_k, identities=args.identities,
                           batch_size=args.batch_size, repeats=args.repeats)
    for path in written.values():
        print(path)
    return written


if __name__ == "__main__":
    errors.run_cli(main, verbose="--verbose" in sys.argv)

"""Inspecting trained runs: the paper's ablation table (Tables 1/2), attention maps (Figure 4),
retrieval (Figure 5) and t-SNE (Figure 6). `python -m psta_jax.inspection` writes them all
(`__main__.py`).

- `runs`: a workdir as a `Run` (config, best-else-latest checkpoint, splits, features).
- `table`: `ablation_table`, `table_markdown`, `write_table` (parameters and XLA FLOPs of the
  compiled model, measured speed).
- `attention`, `retrieval`, `tsne`: one figure each; every figure function returns the
  matplotlib Figure and saves a PNG when given a path.
"""

from psta_jax.inspection.attention import (
    AttentionMaps,
    attention_figure,
    clip_attention,
    maps_per_frame,
    plot_attention,
)
from psta_jax.inspection.plotting import figure_png, save_png
from psta_jax.inspection.retrieval import (
    RetrievalEntry,
    plot_retrieval,
    rank_gallery,
    retrieval_figure,
    retrieve,
)
from psta_jax.inspection.runs import (
    Run,
    default_query,
    display_frames,
    load_run,
    load_runs,
    tracklet_clip,
    tracklet_frames,
)
from psta_jax.inspection.table import (
    ModelCost,
    TableRow,
    ablation_table,
    measure_cost,
    parse_table_markdown,
    structure,
    table_markdown,
    write_table,
    xla_flops,
)
from psta_jax.inspection.tsne import (
    choose_identities,
    default_identities,
    plot_tsne,
    tsne_figure,
    tsne_points,
)

__all__ = [
    "AttentionMaps", "ModelCost", "RetrievalEntry", "Run", "TableRow", "ablation_table",
    "attention_figure", "choose_identities", "clip_attention", "default_identities",
    "default_query", "display_frames", "figure_png", "load_run", "load_runs", "maps_per_frame",
    "measure_cost", "parse_table_markdown", "plot_attention", "plot_retrieval", "plot_tsne",
    "rank_gallery", "retrieval_figure", "retrieve", "save_png", "structure", "table_markdown",
    "tracklet_clip", "tracklet_frames", "tsne_figure", "tsne_points", "write_table", "xla_flops",
]

"""Inspecting trained runs: the paper's ablation table (Tables 1/2), attention maps (Figure 4),
retrieval (Figure 5), t-SNE (Figure 6) and learning curves. `python -m psta_jax.inspection`
writes them all (`__main__.py`; `--curves_only`: the curves alone).

- `runs`: a workdir as a `Run` (config, best-else-latest checkpoint, splits, features).
- `table`: `ablation_table`, `table_markdown`, `write_table` (parameters and XLA FLOPs of the
  compiled model, measured speed).
- `attention`, `retrieval`, `tsne`: one figure each; every figure function returns the
  matplotlib Figure and saves a PNG when given a path.
- `curves`: `curves_figure` from metrics.jsonl and config.json only (no model, no data),
  seeds of one config as a mean and a min-max band.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): `runs` imports JAX and TensorFlow, whose threads must start
# after the command line's CPU setup (psta_jax.runtime.xla_cpu.keep_freed_memory); a notebook sees
# no difference.
_EXPORTS = {
    "attention": (
        "AttentionMaps",
        "attention_figure",
        "clip_attention",
        "maps_per_frame",
        "plot_attention",
    ),
    "curves": (
        "MetricsError",
        "RunGroup",
        "SeedBand",
        "Series",
        "aggregate_seeds",
        "curves_figure",
        "group_runs",
        "read_metrics",
        "steps_per_epoch",
        "with_metrics",
    ),
    "plotting": ("figure_png", "save_png"),
    "retrieval": (
        "RetrievalEntry",
        "plot_retrieval",
        "rank_gallery",
        "retrieval_figure",
        "retrieve",
    ),
    "runs": ("Run", "default_query", "load_run", "load_runs", "tracklet_clip"),
    "table": (
        "ModelCost",
        "TableRow",
        "ablation_table",
        "measure_cost",
        "parse_table_markdown",
        "structure",
        "table_markdown",
        "write_table",
        "xla_flops",
    ),
    "tsne": ("choose_identities", "default_identities", "plot_tsne", "tsne_figure", "tsne_points"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


__all__ = sorted(_MODULE_OF)

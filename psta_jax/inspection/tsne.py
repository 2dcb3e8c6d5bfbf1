"""Figure 6: t-SNE of the tracklet features of chosen identities."""

from __future__ import annotations

import os
from collections.abc import Sequence

import chex
import numpy as np
from matplotlib.figure import Figure

from psta_jax import evaluation
from psta_jax.inspection.plotting import finish, identity_colours, new_figure
from psta_jax.inspection.runs import Run

DISTRACTOR_PID = 0
EXACT_TSNE_POINTS = 1000


def choose_identities(pids: np.ndarray, count: int) -> np.ndarray:
    """The `count` identities with the most tracklets (ties: smaller pid), distractors and
    junk (pid <= 0) excluded; sorted by pid."""
    pids = np.asarray(pids)
    ids, counts = np.unique(pids[pids > DISTRACTOR_PID], return_counts=True)
    if len(ids) == 0:
        raise ValueError("choose_identities: no identity with pid > 0")
    order = np.lexsort((ids, -counts))[:count]
    return np.sort(ids[order])


def default_identities(run: Run, count: int = 10) -> np.ndarray:
    """choose_identities over a run's query and gallery tracklets."""
    feats = run.features
    return choose_identities(
        np.concatenate([feats["query"]["pids"], feats["gallery"]["pids"]]), count
    )


def tsne_points(
    features: np.ndarray, *, seed: int = 0, perplexity: float | None = None
) -> np.ndarray:
    """2-D t-SNE of L2-normalised features (N, D) -> (N, 2).

    Default perplexity: min(30, (N - 1) / 3), which scikit-learn needs below N. Up to
    EXACT_TSNE_POINTS points use exact gradients: at figure sizes they are faster than
    Barnes-Hut (whose threads crawl on a busy CPU) and deterministic.
    """
    from sklearn.manifold import TSNE

    features = evaluation.l2_normalise(evaluation.distance.validate_features("features", features))
    num = features.shape[0]
    if num < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {num}")
    perplexity = perplexity or min(30.0, (num - 1) / 3.0)
    if not 0 < perplexity < num:
        raise ValueError(f"perplexity must be in (0, {num}), got {perplexity}")
    method = "exact" if num <= EXACT_TSNE_POINTS else "barnes_hut"
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        learning_rate="auto",
        method=method,
    )
    return tsne.fit_transform(features).astype(np.float32)


def plot_tsne(
    points: np.ndarray, pids: np.ndarray, *, title: str = "", path: str | os.PathLike | None = None
) -> Figure:
    """Figure 6: one dot per tracklet, one colour per identity."""
    points, pids = np.asarray(points), np.asarray(pids)
    chex.assert_shape(points, (len(pids), 2))
    fig = new_figure((5.5, 4.5))
    ax = fig.subplots()
    identities = np.unique(pids)
    for colour, pid in zip(identity_colours(len(identities)), identities, strict=True):
        chosen = pids == pid
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=28,
            color=colour,
            label=str(pid),
            edgecolors="black",
            linewidths=0.3,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if len(identities) <= 20:
        ax.legend(
            title="pid",
            fontsize=6,
            title_fontsize=7,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )
    if title:
        ax.set_title(title, fontsize=10)
    return finish(fig, path)


def tsne_figure(
    run: Run,
    *,
    identities: Sequence[int] | None = None,
    count: int = 10,
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Figure 6: t-SNE of the query and gallery tracklet features of `identities`
    (default: the `count` identities with the most tracklets)."""
    feats = run.features
    features = np.concatenate([feats["query"]["features"], feats["gallery"]["features"]])
    pids = np.concatenate([feats["query"]["pids"], feats["gallery"]["pids"]])
    if identities is None:
        identities = default_identities(run, count)
    chosen = np.isin(pids, np.asarray(identities))
    if not chosen.any():
        raise ValueError(f"none of the identities {list(identities)} is in run {run.name!r}")
    points = tsne_points(features[chosen], seed=seed)
    return plot_tsne(
        points,
        pids[chosen],
        path=path,
        title=f"{run.name}: {len(np.unique(pids[chosen]))} identities, "
        f"{int(chosen.sum())} tracklets",
    )

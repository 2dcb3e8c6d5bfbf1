"""Figure 5: a query's top-k gallery tracklets with true/false matches marked."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from psta_jax import evaluation
from psta_jax.inspection.plotting import finish, new_figure

if TYPE_CHECKING:
    from psta_jax.inspection.runs import Run


@dataclasses.dataclass(frozen=True)
class RetrievalEntry:
    """A ranked gallery item: its split ('query' when the protocol appends queries)."""

    rank: int
    split: str
    position: int
    pid: int
    camid: int
    distance: float
    match: bool | None  # None: the identity is unknown (drawn grey, without a mark)


def rank_gallery(
    distances: np.ndarray,
    q_pid: int,
    q_camid: int,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The `top_k` nearest gallery indices and whether each is a true match.

    Gallery items of the query's identity seen by the query's camera are not ranked (the
    standard video re-ID rule); ties keep gallery order.
    """
    distances = np.asarray(distances)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    if distances.ndim != 1 or distances.shape != g_pids.shape or g_pids.shape != g_camids.shape:
        raise ValueError(
            f"expected distances, g_pids and g_camids of one shape (G,), got "
            f"{distances.shape}, {g_pids.shape}, {g_camids.shape}"
        )
    order = evaluation.top_k(distances, (g_pids == q_pid) & (g_camids == q_camid), top_k)
    return order, g_pids[order] == q_pid


def retrieve(run: Run, query: int, top_k: int = 5) -> list[RetrievalEntry]:
    """The top-k gallery tracklets of query tracklet `query` under the run's distance."""
    queries, gallery = run.features["query"], run.protocol_gallery()
    if not 0 <= query < len(queries["pids"]):
        raise IndexError(f"query {query} out of range: {len(queries['pids'])} queries")
    settings = run.trained.eval_settings
    metric = settings.distance
    distances = evaluation.distance_matrix(  # what the run's evaluation ranks, re-ranked or not
        queries["features"], gallery.features, metric, rerank=settings.rerank
    )[query]
    order, matches = rank_gallery(
        distances,
        queries["pids"][query],
        queries["camids"][query],
        gallery.pids,
        gallery.camids,
        top_k,
    )
    shown = evaluation.reported_distance(distances, metric)
    return [
        RetrievalEntry(
            rank=rank,
            split=str(gallery.split[i]),
            position=int(gallery.position[i]),
            pid=int(gallery.pids[i]),
            camid=int(gallery.camids[i]),
            distance=float(shown[i]),
            match=bool(match),
        )
        for rank, (i, match) in enumerate(zip(order, matches, strict=True), start=1)
    ]


MATCH_COLOURS = {True: "tab:green", False: "tab:red", None: "tab:gray"}


def plot_retrieval(
    query_frames: Sequence[np.ndarray],
    ranked_frames: Sequence[Sequence[np.ndarray]],
    entries: Sequence[RetrievalEntry],
    *,
    query_label: str = "query",
    title: str = "",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Figure 5: the query tracklet, then one row per ranked tracklet framed green (true
    match, ✓) or red (false, ✗); grey without pid and camera when the identity is unknown."""
    if len(ranked_frames) != len(entries):
        raise ValueError(f"got {len(ranked_frames)} ranked tracklets for {len(entries)} entries")
    rows = [(query_label, list(query_frames), "black")]
    for entry, frames in zip(entries, ranked_frames, strict=True):
        if entry.match is None:
            label = f"#{entry.rank}\nd={entry.distance:.3f}"
        else:
            mark = "✓" if entry.match else "✗"
            label = (
                f"{mark} #{entry.rank} pid {entry.pid}\ncam {entry.camid} d={entry.distance:.3f}"
            )
        rows.append((label, list(frames), MATCH_COLOURS[entry.match]))
    columns = max(len(frames) for _, frames, _ in rows)
    fig = new_figure((1.0 * columns + 1.6, 1.9 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row, (label, frames, colour) in enumerate(rows):
        for column in range(columns):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(frames):
                ax.axis("off")
                continue
            ax.imshow(frames[column])
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
        axes[row, 0].set_ylabel(label, fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=10)
    return finish(fig, path)


def retrieval_figure(
    run: Run,
    *,
    query: int | None = None,
    top_k: int = 5,
    frames_per_tracklet: int = 4,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Figure 5 for query tracklet `query` (default: default_query) of a run."""
    from psta_jax.inspection.runs import default_query  # noqa: PLC0415

    splits = run.require_splits()
    query = default_query(run) if query is None else query
    entries = retrieve(run, query, top_k)
    ranked = [
        getattr(splits, e.split).decoded_frames(e.position, frames_per_tracklet) for e in entries
    ]
    pid, camid = int(splits.query.pids[query]), int(splits.query.camids[query])
    return plot_retrieval(
        splits.query.decoded_frames(query, frames_per_tracklet),
        ranked,
        entries,
        query_label=f"query {query}\npid {pid} cam {camid}",
        title=f"{run.name}: top-{len(entries)} of query {query}",
        path=path,
    )

"""Ranking a gallery of tracklet embeddings for each query: distances (cosine or Euclidean,
optionally k-reciprocal re-ranked), the top-k per query, and CMC/mAP with the evaluator when
identities are known.

The gallery is the protocol's (`evaluation.PROTOCOLS`): gallery items with pid -1 (junk) are
dropped and, for `mars`-style protocols, the queries are put in front of it. A query never
sees gallery items of its own identity seen by its own camera (the evaluator's and Figure 5's
rule); `exclude_same_camera` also hides every gallery item of the query's camera (for
cross-camera search when identities are unknown). CMC/mAP always follow the protocol's rule:
`exclude_same_camera` changes only the listed results. When no query has a true match in the
gallery (its identity under another camera; usual when new video is labelled with new ids)
CMC/mAP are undefined: the rankings stand and `SearchResult.note` says why there are no
metrics.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from psta_jax import evaluation
from psta_jax.inspection.retrieval import RetrievalEntry
from psta_jax.serving.embedding_file import Embeddings
from psta_jax.serving.errors import ServingInputError

# Without a protocol recorded in the files: query vs gallery as given, step AP, queries
# without a true match skipped.
DEFAULT_PROTOCOL = "duke"


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    distance: str = "cosine"
    rerank: bool = False
    exclude_same_camera: bool = False
    top_k: int = 10
    protocol: str | None = None  # None: the files' recorded protocol, else DEFAULT_PROTOCOL
    max_rank: int = 50

    def __post_init__(self):
        if self.distance not in evaluation.METRICS:
            raise ServingInputError(
                f"distance must be one of {evaluation.METRICS}, got {self.distance!r}"
            )
        if self.top_k < 1:
            raise ServingInputError(f"top-k must be at least 1, got {self.top_k}")
        if self.protocol is not None and self.protocol not in evaluation.PROTOCOLS:
            raise ServingInputError(
                f"unknown protocol {self.protocol!r}; expected one of "
                f"{sorted(evaluation.PROTOCOLS)}"
            )


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """distances: (Q, G) float32 against `gallery` (the protocol's; `names` (G,) its items'
    names); ranked: the top-k entries per query and top_indices their rows of `gallery`;
    metrics: the evaluator's result when identities are known, else None; note: why there
    are no metrics although identities are known, else None."""

    protocol: str
    options: SearchOptions
    gallery: evaluation.RankedGallery
    names: np.ndarray
    distances: np.ndarray
    ranked: list[list[RetrievalEntry]]
    top_indices: list[np.ndarray]
    metrics: evaluation.EvalResult | None
    note: str | None = None


def choose_protocol(query: Embeddings, gallery: Embeddings, requested: str | None) -> str:
    if requested is not None:
        return requested
    if query.protocol and query.protocol == gallery.protocol:
        return query.protocol
    return DEFAULT_PROTOCOL


def check_compatible(query: Embeddings, gallery: Embeddings, options: SearchOptions) -> None:
    """Raises a ServingInputError when the two files cannot be compared as `options` asks."""
    if not query.checkpoint.same_model(gallery.checkpoint):
        raise ServingInputError(
            "query and gallery embeddings come from different checkpoints (query: "
            f"{query.checkpoint.describe()}; gallery: {gallery.checkpoint.describe()}); embed "
            "both with the same checkpoint"
        )
    if query.embeddings.shape[1] != gallery.embeddings.shape[1]:
        raise ServingInputError(
            f"query embeddings have dimension {query.embeddings.shape[1]}, "
            f"gallery {gallery.embeddings.shape[1]}"
        )
    if options.distance == "euclidean" and query.normalised != gallery.normalised:
        raise ServingInputError(
            "Euclidean distances need both files L2-normalised or both not (query normalised="
            f"{query.normalised}, gallery normalised={gallery.normalised}); embed both with the "
            "same --normalise setting or use --distance cosine"
        )
    if options.exclude_same_camera and (query.camids is None or gallery.camids is None):
        raise ServingInputError(
            "--exclude_same_camera needs the camera of every query and "
            "gallery tracklet (labels.csv or <pid>_<camera>_... folder names)"
        )
    for name, items in (("query", query), ("gallery", gallery)):
        if items.embeddings.shape[0] == 0:
            raise ServingInputError(f"the {name} embeddings file holds no tracklets")


def gallery_names(
    query: Embeddings, gallery: Embeddings, ranked: evaluation.RankedGallery
) -> np.ndarray:
    """The tracklet name of every item of a protocol's gallery."""
    return np.asarray(
        [
            (query if split == "query" else gallery).names[position]
            for split, position in zip(ranked.split, ranked.position, strict=True)
        ]
    )


def has_true_match(query: Embeddings, ranked: evaluation.RankedGallery) -> bool:
    """Whether some query's identity is in the protocol's gallery under another camera (the
    evaluator's true match; without one CMC/mAP are undefined)."""
    for pid, camid in zip(query.pids, query.camids, strict=True):
        if np.any((ranked.pids == pid) & (ranked.camids != camid)):
            return True
    return False


def search(query: Embeddings, gallery: Embeddings, options: SearchOptions) -> SearchResult:
    """Ranks the gallery for every query; see the module docstring."""
    check_compatible(query, gallery, options)
    protocol = choose_protocol(query, gallery, options.protocol)
    try:
        ranked_gallery = evaluation.protocol_gallery(
            protocol,
            query.embeddings,
            gallery.embeddings,
            query.pids,
            gallery.pids,
            query.camids,
            gallery.camids,
        )
    except ValueError as error:
        raise ServingInputError(f"the gallery file: {error}") from error
    names = gallery_names(query, gallery, ranked_gallery)
    distances = evaluation.distance_matrix(
        query.embeddings, ranked_gallery.features, options.distance, rerank=options.rerank
    )
    labelled = query.has_labels and gallery.has_labels
    ranked, top_indices = [], []
    for row in range(len(query.names)):
        hidden = np.zeros(len(names), bool)
        same_camera = (
            ranked_gallery.camids == query.camids[row]
            if query.camids is not None and gallery.camids is not None
            else hidden
        )
        if labelled:
            hidden |= (ranked_gallery.pids == query.pids[row]) & same_camera
        if options.exclude_same_camera:
            hidden |= same_camera
        top = evaluation.top_k(distances[row], hidden, options.top_k)
        top_indices.append(top)
        ranked.append(
            [
                RetrievalEntry(
                    rank=rank,
                    split=str(ranked_gallery.split[i]),
                    position=int(ranked_gallery.position[i]),
                    pid=int(ranked_gallery.pids[i]),
                    camid=int(ranked_gallery.camids[i]),
                    distance=float(
                        evaluation.reported_distance(distances[row, i], options.distance)
                    ),
                    match=bool(ranked_gallery.pids[i] == query.pids[row]) if labelled else None,
                )
                for rank, i in enumerate(top, start=1)
            ]
        )
    metrics, note = None, None
    if labelled and not has_true_match(query, ranked_gallery):
        note = (
            "no CMC/mAP: no query has a true match in the gallery (the same pid under another "
            "camera), so they are undefined; the rankings above stand. Expected when the "
            "queries are new identities; otherwise check the pids and cameras of both files"
        )
    elif labelled:
        metrics = evaluation.evaluate(
            query.embeddings,
            gallery.embeddings,
            query.pids,
            gallery.pids,
            query.camids,
            gallery.camids,
            protocol=protocol,
            distance=options.distance,
            rerank=options.rerank,
            max_rank=options.max_rank,
        )
    return SearchResult(
        protocol=protocol,
        options=options,
        gallery=ranked_gallery,
        names=names,
        distances=distances,
        ranked=ranked,
        top_indices=top_indices,
        metrics=metrics,
        note=note,
    )


def format_rankings(query: Embeddings, result: SearchResult) -> str:
    """One block per query: its name (and pid/camera) and its ranked gallery, with the
    distance as `evaluation.REPORTED_AS` names it."""
    lines = [f"distance: {evaluation.REPORTED_AS[result.options.distance]}"]
    for row, entries in enumerate(result.ranked):
        known = f" pid {query.pids[row]} cam {query.camids[row]}" if query.has_labels else ""
        lines.append(f"query {row}: {query.names[row]}{known} ({query.num_frames[row]} frames)")
        for entry, index in zip(entries, result.top_indices[row], strict=True):
            name = result.names[index]
            mark = {True: "  match", False: "", None: ""}[entry.match]
            ids = (
                f"  pid {entry.pid:>5d} cam {entry.camid:>3d}"
                if entry.pid >= 0 or entry.camid >= 0
                else ""
            )
            lines.append(f"  {entry.rank:>4d}  {entry.distance:>9.4f}  {name}{ids}{mark}")
    return "\n".join(lines)

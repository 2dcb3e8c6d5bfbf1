"""Dataset evaluation protocols, `evaluate` (features -> metrics) and the 10-split summary.

Presets (see docs/design.md, "Evaluation protocols"):
- `mars` (default): the 1,980 queries appended in front of the 9,330 gallery (11,310 items), as
  PSTA, AP3D and TKP evaluate MARS; step AP; invalid queries skipped (none on real MARS).
- `mars_torchreid`: the 9,330 gallery only, as torchreid; step AP; invalid queries skipped (140
  on real MARS).
- `mars_matlab`: the gallery of `mars` (the official 12,180 tracklets minus the never-counted
  junk); trapezoidal AP (compute_AP.m); invalid queries count as 0, since MATLAB divides by all
  queries (none is invalid on real MARS).
- `duke`: query folder vs the `gallery/` folder, which already holds copies of the queries (the
  same-identity-and-camera rule removes them); step AP; invalid queries skipped.
- `ilids_vid`, `prid2011`: one split at a time, cam1 / cam_a queries vs cam2 / cam_b gallery;
  evaluate each of the 10 splits and combine them with `average_over_splits`; step AP.

Every preset ignores gallery entries with the query's identity and camera, breaks distance ties
by gallery order, and drops MARS junk (pid -1) from the gallery, which is what both the loaders
(dropping it) and the MATLAB code (skipping it) amount to.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from psta_jax.evaluation.distance import METRICS, Metric, pairwise_distance, validate_features
from psta_jax.evaluation.metrics import TIE_RULE, APKind, InvalidQueries, rank_metrics
from psta_jax.evaluation.rerank import RerankParams, k_reciprocal_rerank

JUNK_PID = -1


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    append_query_to_gallery: bool
    ap: APKind
    invalid_queries: InvalidQueries
    description: str
    splits: int = 1


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("mars", True, "step", "skip", "MARS as the PSTA release: query + gallery"),
        Protocol("mars_torchreid", False, "step", "skip", "MARS as torchreid: 9,330 gallery"),
        Protocol("mars_matlab", True, "trapezoid", "zero", "MARS official MATLAB: trapezoidal AP"),
        Protocol("duke", False, "step", "skip", "DukeMTMC-VideoReID: query vs gallery folder"),
        Protocol("ilids_vid", False, "step", "skip", "iLIDS-VID: cam1 vs cam2, 10 splits", 10),
        Protocol("prid2011", False, "step", "skip", "PRID-2011: cam_a vs cam_b, 10 splits", 10),
    )
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a run is evaluated: the protocol, the distance, re-ranking and the CMC length
    (the keyword arguments of `evaluate`)."""

    protocol: str = "mars"
    distance: str = "cosine"
    rerank: bool = False
    max_rank: int = 50

    def __post_init__(self):
        get_protocol(self.protocol)
        if self.distance not in METRICS:
            raise ValueError(f"distance must be one of {METRICS}, got {self.distance!r}")
        if self.max_rank < 1:
            raise ValueError(f"max_rank must be at least 1, got {self.max_rank}")


@dataclasses.dataclass(frozen=True)
class RankedGallery:
    """The gallery a protocol ranks each query against, item by item.

    features (G, D); pids, camids (G,) int64 (-1 where unknown); split (G,) 'query' or
    'gallery': the set an item comes from (a protocol may put the queries in front);
    position (G,) int64: its row in that set.
    """

    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    split: np.ndarray
    position: np.ndarray


def protocol_gallery(
    protocol: str,
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    q_pids: np.ndarray | None = None,
    g_pids: np.ndarray | None = None,
    q_camids: np.ndarray | None = None,
    g_camids: np.ndarray | None = None,
) -> RankedGallery:
    """The gallery as `protocol` ranks it: junk (pid -1) dropped when gallery identities are
    known, and the queries put in front for the `mars`-style protocols.

    Unknown ids (None) become -1 and, for the gallery, keep every item.
    """
    preset = get_protocol(protocol)
    parts = [("gallery", gallery_features, g_pids, g_camids)]
    if preset.append_query_to_gallery:
        parts.insert(0, ("query", query_features, q_pids, q_camids))
    features, pids, camids, split, position = [], [], [], [], []
    for name, part_features, part_pids, part_camids in parts:
        count = len(part_features)
        unknown = np.full(count, -1, np.int64)
        part_pids = unknown if part_pids is None else np.asarray(part_pids, np.int64)
        part_camids = unknown if part_camids is None else np.asarray(part_camids, np.int64)
        keep = np.ones(count, bool)
        if name == "gallery" and g_pids is not None:
            keep = part_pids != JUNK_PID
        features.append(np.asarray(part_features)[keep])
        pids.append(part_pids[keep])
        camids.append(part_camids[keep])
        split.append(np.full(int(keep.sum()), name))
        position.append(np.flatnonzero(keep))
    gallery = RankedGallery(
        features=np.concatenate(features),
        pids=np.concatenate(pids),
        camids=np.concatenate(camids),
        split=np.concatenate(split),
        position=np.concatenate(position).astype(np.int64),
    )
    if not (gallery.split == "gallery").any():
        raise ValueError("gallery_features: no gallery item left after dropping junk (pid -1)")
    return gallery


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Metrics of one query set against one gallery, with the options that produced them.

    cmc: (max_rank,) CMC(k) at index k - 1 (cut at the gallery size if smaller).
    """

    cmc: np.ndarray
    mAP: float
    num_queries: int
    num_gallery: int
    num_valid_queries: int
    num_skipped_queries: int
    protocol: str
    distance: str
    ap: str
    invalid_queries: str
    rerank: bool
    tie_rule: str
    append_query_to_gallery: bool


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """Mean and spread (population std, min, max) of per-split results; cmc_* are (max_rank,)."""

    cmc_mean: np.ndarray
    cmc_std: np.ndarray
    cmc_min: np.ndarray
    cmc_max: np.ndarray
    mAP_mean: float
    mAP_std: float
    mAP_min: float
    mAP_max: float
    num_splits: int
    splits: tuple[EvalResult, ...]


def _ids(name: str, ids: np.ndarray, length: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != length:
        raise ValueError(
            f"{name}: expected shape ({length},) to match the features, got {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected integer ids, got dtype {ids.dtype}")
    return ids


def top_k(distances: np.ndarray, hidden: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest `distances` (G,) not `hidden` (G,) bool; ties keep gallery
    order (the stable sort every protocol ranks with)."""
    order = np.argsort(np.asarray(distances), kind="stable")
    return order[~np.asarray(hidden)[order]][:k]


def distance_matrix(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    distance: Metric = "cosine",
    *,
    rerank: bool = False,
    rerank_params: RerankParams | None = None,
) -> np.ndarray:
    """(num_query, num_gallery) distances that `evaluate` ranks: `pairwise_distance`, or with
    `rerank` the k-reciprocal re-ranked distances of the (non-negative) pairwise ones."""
    if not rerank:
        return pairwise_distance(query_features, gallery_features, distance)
    # Re-ranking weighs neighbours by exp(-d): shift cosine (-cos) to 1 - cos, clamped at 0
    # against float32 rounding.
    shift = 1.0 if distance == "cosine" else 0.0

    def nonnegative(a, b):
        return np.maximum(pairwise_distance(a, b, distance) + shift, 0.0)

    return k_reciprocal_rerank(
        nonnegative(query_features, gallery_features),
        nonnegative(query_features, query_features),
        nonnegative(gallery_features, gallery_features),
        rerank_params or RerankParams(),
    )


def evaluate(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    *,
    protocol: str = "mars",
    distance: Metric = "cosine",
    rerank: bool = False,
    rerank_params: RerankParams | None = None,
    max_rank: int = 50,
) -> EvalResult:
    """Distances, optional k-reciprocal re-ranking and CMC/mAP under a named protocol.

    Args:
      query_features: (num_query, D) embeddings.
      gallery_features: (num_gallery, D) embeddings (without the queries: `mars` appends them).
      q_pids, q_camids: (num_query,) integer identities and cameras.
      g_pids, g_camids: (num_gallery,) integer identities and cameras.
      protocol: a name in PROTOCOLS (see the module docstring).
      distance: 'cosine' (the release) or 'euclidean' (squared; same ranking as Euclidean).
      rerank: apply k-reciprocal re-ranking with `rerank_params` (default k1 20, k2 6,
        lambda 0.3) before ranking.
      max_rank: CMC length.
    Raises:
      ValueError: unknown protocol or distance, bad shapes, NaN features, an empty query set or
        gallery, or no query with a true match.
    """
    preset = get_protocol(protocol)
    if distance not in METRICS:
        raise ValueError(f"distance must be one of {METRICS}, got {distance!r}")
    query = validate_features("query_features", query_features)
    gallery = validate_features("gallery_features", gallery_features)
    q_pids = _ids("q_pids", q_pids, query.shape[0])
    q_camids = _ids("q_camids", q_camids, query.shape[0])
    g_pids = _ids("g_pids", g_pids, gallery.shape[0])
    g_camids = _ids("g_camids", g_camids, gallery.shape[0])

    ranked = protocol_gallery(protocol, query, gallery, q_pids, g_pids, q_camids, g_camids)
    gallery, g_pids, g_camids = ranked.features, ranked.pids, ranked.camids

    distmat = distance_matrix(query, gallery, distance, rerank=rerank, rerank_params=rerank_params)
    metrics = rank_metrics(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank,
        ap=preset.ap,
        invalid_queries=preset.invalid_queries,
    )
    return EvalResult(
        cmc=metrics.cmc,
        mAP=metrics.mAP,
        num_queries=query.shape[0],
        num_gallery=gallery.shape[0],
        num_valid_queries=metrics.num_valid_queries,
        num_skipped_queries=metrics.num_skipped_queries,
        protocol=preset.name,
        distance=distance,
        ap=preset.ap,
        invalid_queries=preset.invalid_queries,
        rerank=rerank,
        tie_rule=TIE_RULE,
        append_query_to_gallery=preset.append_query_to_gallery,
    )


def average_over_splits(results: list[EvalResult] | tuple[EvalResult, ...]) -> SplitSummary:
    """CMC and mAP averaged over splits (iLIDS-VID, PRID-2011: the 10 standard splits).

    All results must share the protocol options and CMC length.
    """
    results = tuple(results)
    if not results:
        raise ValueError("average_over_splits: got no results")
    options = {(r.protocol, r.distance, r.ap, r.rerank, r.cmc.shape) for r in results}
    if len(options) > 1:
        raise ValueError(
            "average_over_splits: results come from different options "
            f"(protocol, distance, ap, rerank, cmc shape): {sorted(map(str, options))}"
        )
    cmc = np.stack([r.cmc for r in results])
    maps = np.array([r.mAP for r in results])
    return SplitSummary(
        cmc_mean=cmc.mean(axis=0),
        cmc_std=cmc.std(axis=0),
        cmc_min=cmc.min(axis=0),
        cmc_max=cmc.max(axis=0),
        mAP_mean=float(maps.mean()),
        mAP_std=float(maps.std()),
        mAP_min=float(maps.min()),
        mAP_max=float(maps.max()),
        num_splits=len(results),
        splits=results,
    )

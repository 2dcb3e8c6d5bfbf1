"""CMC and mAP from a query x gallery distance matrix, vectorised and chunked over queries.

Per query (the release's `eval_metrics.evaluate`, torchreid's `eval_market1501`):
1. rank the gallery by ascending distance, ties broken by gallery order (a stable sort);
2. ignore every gallery entry with the query's identity AND camera;
3. a query with no remaining true match (same identity) is invalid: skipped (the release,
   torchreid) or counted as AP 0 / CMC 0 (the MARS MATLAB code divides by all queries);
4. CMC(k) = 1 if a true match is within the first k kept entries; AP over the whole kept
   ranking (never cut at max_rank).

No ranking is materialised. The 0-based rank of a true match p is the number of kept
entries ordered before it: those with a smaller distance plus, on equal distance, those with
a smaller gallery index. Rows are sorted by value only (float32, SIMD-fast) and each true
match's rank is read with a binary search; a true match whose float32 value is shared with
another kept entry (a tie, or two float64 distances that round to one float32) is recounted
exactly in the input dtype. CMC needs only the rank of the first true match.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

APKind = Literal["step", "trapezoid"]
InvalidQueries = Literal["skip", "zero"]
AP_KINDS: tuple[str, ...] = ("step", "trapezoid")
INVALID_QUERY_RULES: tuple[str, ...] = ("skip", "zero")
TIE_RULE = "stable: equal distances ranked by gallery order"

# Elements of one query chunk (rows x gallery): bounds the temporaries to ~40 MB.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class RankMetrics:
    """CMC/mAP of one query set against one gallery.

    Attributes:
      cmc: (max_rank,) float64, CMC(k) at index k - 1.
      mAP: mean average precision over the counted queries.
      num_valid_queries: queries with at least one true match after filtering.
      num_skipped_queries: queries without one (skipped or counted as 0, see invalid_queries).
      average_precision: (num_queries,) float64 per-query AP, NaN for invalid queries.
      first_match_rank: (num_queries,) int64 0-based rank of the first true match, -1 if none.
    """

    cmc: np.ndarray
    mAP: float
    num_valid_queries: int
    num_skipped_queries: int
    average_precision: np.ndarray
    first_match_rank: np.ndarray


def _as_ids(name: str, ids: np.ndarray, length: int, axis_name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != length:
        raise ValueError(
            f"{name}: expected shape ({length},) (the {axis_name} axis of the distance "
            f"matrix), got {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected integer ids, got dtype {ids.dtype}")
    return ids


def validate_inputs(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Checks shapes, dtypes and finiteness; returns the arrays as NumPy."""
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected shape (num_query, num_gallery), got {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0:
        raise ValueError("distmat: the query set is empty (0 rows)")
    if num_g == 0:
        raise ValueError("distmat: the gallery is empty (0 columns)")
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    if not np.all(np.isfinite(distmat)):
        bad = np.argwhere(~np.isfinite(distmat))[0]
        raise ValueError(
            f"distmat: contains NaN or infinite distances (first at query {bad[0]}, "
            f"gallery {bad[1]}); check the features"
        )
    q_pids = _as_ids("q_pids", q_pids, num_q, "query")
    q_camids = _as_ids("q_camids", q_camids, num_q, "query")
    g_pids = _as_ids("g_pids", g_pids, num_g, "gallery")
    g_camids = _as_ids("g_camids", g_camids, num_g, "gallery")
    return distmat, q_pids, g_pids, q_camids, g_camids


def _true_match_ranks(
    dist: np.ndarray, removed: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks, among kept entries, of every true match of a chunk of queries.

    Args:
      dist: (C, G) distances in the input dtype.
      removed: (C, G) bool, entries ignored for that query.
      positive: (C, G) bool, true matches (never removed).
    Returns:
      rows (P,) and ranks (P,), one entry per true match, rows ascending.
    """
    rows, cols = np.nonzero(positive)
    if rows.size == 0:
        return rows, rows.astype(np.int64)
    dist32 = dist.astype(np.float32, copy=False)
    ordered = np.where(removed, np.float32(np.inf), dist32)
    ordered.sort(axis=1)
    values = dist32[rows, cols]
    bounds = np.searchsorted(rows, np.arange(dist.shape[0] + 1))
    below = np.empty(rows.size, np.int64)
    equal = np.empty(rows.size, np.int64)
    for row in np.unique(rows):
        start, stop = bounds[row], bounds[row + 1]
        left = np.searchsorted(ordered[row], values[start:stop], side="left")
        below[start:stop] = left
        equal[start:stop] = np.searchsorted(ordered[row], values[start:stop], "right") - left
    ranks = below
    tied = np.flatnonzero(equal > 1)
    if tied.size:
        ranks[tied] = _exact_ranks(dist, removed, rows[tied], cols[tied])
    return rows, ranks


def _exact_ranks(
    dist: np.ndarray, removed: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Stable ranks of entries (rows, cols) by direct counting in the input dtype."""
    ranks = np.empty(rows.size, np.int64)
    gallery_index = np.arange(dist.shape[1])
    step = max(1, _CHUNK_ELEMENTS // dist.shape[1])
    for start in range(0, rows.size, step):
        r, c = rows[start : start + step], cols[start : start + step]
        row_dist = dist[r]
        value = row_dist[np.arange(r.size), c][:, None]
        before = (row_dist < value) | ((row_dist == value) & (gallery_index < c[:, None]))
        ranks[start : start + step] = np.count_nonzero(before & ~removed[r], axis=1)
    return ranks


def _average_precision(
    rows: np.ndarray, ranks: np.ndarray, num_queries: int, ap: APKind
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP and first-match rank from the ranks of all true matches.

    Returns:
      (num_queries,) AP (NaN where a query has no true match) and (num_queries,) 0-based rank of
      the first true match (-1 where none).
    """
    order = np.lexsort((ranks, rows))
    rows, ranks = rows[order], ranks[order]
    starts = np.searchsorted(rows, np.arange(num_queries), side="left")
    counts = np.bincount(rows, minlength=num_queries)
    # 1-based position of each true match among its query's true matches.
    hit = np.arange(rows.size) - np.repeat(starts, counts) + 1
    position = ranks + 1  # 1-based position in the kept ranking
    precision = hit / position
    if ap == "step":
        terms = precision
    else:
        # MARS MATLAB compute_AP.m: recall steps by 1/R at each true match and the area is a
        # trapezoid between the precision one position earlier (1 before the first position)
        # and the precision here.
        previous = np.where(position > 1, (hit - 1) / np.maximum(position - 1, 1), 1.0)
        terms = (previous + precision) / 2.0
    sums = np.bincount(rows, weights=terms, minlength=num_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = np.where(counts > 0, sums / counts, np.nan)
    first = np.full(num_queries, -1, np.int64)
    has_match = counts > 0
    first[has_match] = ranks[starts[has_match]]
    return average_precision, first


def rank_metrics(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    *,
    ap: APKind = "step",
    invalid_queries: InvalidQueries = "skip",
) -> RankMetrics:
    """CMC, mAP and query counts; see the module docstring for the rules.

    Ties in distance are broken by gallery order (a stable sort): the release's
    `np.argsort` (quicksort) orders ties arbitrarily, so it can differ from this on ties only.
    If the gallery has fewer than max_rank entries, the CMC is cut at the gallery size, as the
    release does. CMC(k) beyond the end of a query's kept ranking is 1 (the release would fail
    to stack ragged rows there).

    Args:
      distmat: (num_query, num_gallery) distances, smaller = more similar; finite.
      q_pids, q_camids: (num_query,) integer identities and cameras.
      g_pids, g_camids: (num_gallery,) integer identities and cameras.
      max_rank: length of the CMC curve.
      ap: 'step' (the release, torchreid) or 'trapezoid' (MARS MATLAB compute_AP.m).
      invalid_queries: 'skip' (the release: average over valid queries) or 'zero' (MATLAB:
        average over all queries, an invalid query scoring 0).
    Raises:
      ValueError: on bad shapes/dtypes, NaN or infinite distances, empty query set or gallery,
        or when no query has a true match.
    """
    if ap not in AP_KINDS:
        raise ValueError(f"ap must be one of {AP_KINDS}, got {ap!r}")
    if invalid_queries not in INVALID_QUERY_RULES:
        raise ValueError(f"invalid_queries must be one of {INVALID_QUERY_RULES}, got {invalid_queries!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    distmat, q_pids, g_pids, q_camids, g_camids = validate_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)

    all_rows, all_ranks = [], []
    step = max(1, _CHUNK_ELEMENTS // num_g)
    for start in range(0, num_q, step):
        stop = min(start + step, num_q)
        same_pid = q_pids[start:stop, None] == g_pids[None, :]
        removed = same_pid & (q_camids[start:stop, None] == g_camids[None, :])
        rows, ranks = _true_match_ranks(distmat[start:stop], removed, same_pid & ~removed)
        all_rows.append(rows + start)
        all_ranks.append(ranks)
    average_precision, first = _average_precision(
        np.concatenate(all_rows), np.concatenate(all_ranks), num_q, ap
    )

    valid = first >= 0
    num_valid = int(np.count_nonzero(valid))
    if num_valid == 0:
        raise ValueError(
            "no query has a true match in the gallery (same identity under another camera): "
            "CMC and mAP are undefined; check the identities, cameras and the protocol"
        )
    denominator = num_valid if invalid_queries == "skip" else num_q
    first_hits = np.bincount(first[valid], minlength=num_g)[:max_rank]
    cmc = np.cumsum(first_hits) / denominator
    mean_ap = float(np.sum(average_precision[valid]) / denominator)
    return RankMetrics(
        cmc=cmc,
        mAP=mean_ap,
        num_valid_queries=num_valid,
        num_skipped_queries=num_q - num_valid,
        average_precision=average_precision,
        first_match_rank=first,
    )


def cmc_map(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    *,
    ap: APKind = "step",
) -> tuple[np.ndarray, float]:
    """(cmc (max_rank,), mAP) exactly as the release's evaluate with a stable sort.

    Invalid queries are skipped; ties are broken by gallery order. See `rank_metrics` for the
    details and for the query counts.
    """
    metrics = rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap=ap)
    return metrics.cmc, metrics.mAP

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
exactly in the input dtype. CMC needs only the rank of the first true match. Query chunks of
~4M entries bound the memory and run on a small thread pool (NumPy's sort releases the GIL).
(Speed against the release's per-query loop: docs/benchmarks.md.)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Literal

import numpy as np

APKind = Literal["step", "trapezoid"]
InvalidQueries = Literal["skip", "zero"]
AP_KINDS: tuple[str, ...] = ("step", "trapezoid")
INVALID_QUERY_RULES: tuple[str, ...] = ("skip", "zero")
TIE_RULE = "stable: equal distances ranked by gallery order"

# Elements of one query chunk (rows x gallery): ~40 MB of temporaries per worker thread.
_CHUNK_ELEMENTS = 1 << 22
_NUM_THREADS = min(4, os.cpu_count() or 1)


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
    # min/max propagate NaN, so two reductions check finiteness without a full bool temporary.
    if not (np.isfinite(distmat.min()) and np.isfinite(distmat.max())):
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


def _same_identity_pairs(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, gallery) pair sharing an identity, rows ascending, then gallery order.

    O(num_gallery log num_gallery + pairs): the pairs are read from the gallery grouped by pid,
    never from a dense query x gallery comparison.
    """
    by_pid = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[by_pid]
    first = np.searchsorted(sorted_pids, q_pids, side="left")
    counts = np.searchsorted(sorted_pids, q_pids, side="right") - first
    rows = np.repeat(np.arange(q_pids.size), counts)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = by_pid[np.repeat(first, counts) + offsets]
    return rows, cols


def _true_match_ranks(
    dist: np.ndarray,
    removed: tuple[np.ndarray, np.ndarray],
    positive: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """0-based ranks, among kept entries, of the true matches of a chunk of queries.

    Args:
      dist: (C, G) distances in the input dtype.
      removed: (rows, cols) of the entries ignored for their query (same pid and camera).
      positive: (rows, cols) of the true matches, rows ascending.
    Returns:
      (P,) ranks, aligned with `positive`.
    """
    rows, cols = positive
    ordered = dist.astype(np.float32)
    ordered[removed] = np.inf
    values = ordered[rows, cols]
    ordered.sort(axis=1)
    bounds = np.searchsorted(rows, np.arange(dist.shape[0] + 1))
    ranks = np.empty(rows.size, np.int64)
    equal = np.empty(rows.size, np.int64)
    for row in np.flatnonzero(np.diff(bounds)):
        start, stop = bounds[row], bounds[row + 1]
        left = np.searchsorted(ordered[row], values[start:stop], side="left")
        ranks[start:stop] = left
        equal[start:stop] = np.searchsorted(ordered[row], values[start:stop], "right") - left
    tied = np.flatnonzero(equal > 1)
    if tied.size:
        ranks[tied] = _exact_ranks(dist, removed, rows[tied], cols[tied])
    return ranks


def _exact_ranks(
    dist: np.ndarray,
    removed: tuple[np.ndarray, np.ndarray],
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """Stable ranks of entries (rows, cols) among kept entries, counted in the input dtype."""
    tied_rows, row_of = np.unique(rows, return_inverse=True)
    masked = dist[tied_rows]  # a copy of the few rows involved
    in_tied = np.isin(removed[0], tied_rows)
    removed_at = np.searchsorted(tied_rows, removed[0][in_tied])
    masked[removed_at, removed[1][in_tied]] = np.inf  # finite inputs: inf is never "before"
    ranks = np.empty(rows.size, np.int64)
    gallery_index = np.arange(dist.shape[1])
    step = max(1, _CHUNK_ELEMENTS // dist.shape[1])
    for start in range(0, rows.size, step):
        r, c = row_of[start : start + step], cols[start : start + step]
        row_dist = masked[r]
        value = row_dist[np.arange(r.size), c][:, None]
        before = (row_dist < value) | ((row_dist == value) & (gallery_index < c[:, None]))
        ranks[start : start + step] = np.count_nonzero(before, axis=1)
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
        raise ValueError(
            f"invalid_queries must be one of {INVALID_QUERY_RULES}, got {invalid_queries!r}"
        )
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    distmat, q_pids, g_pids, q_camids, g_camids = validate_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)

    rows, cols = _same_identity_pairs(q_pids, g_pids)
    same_cam = q_camids[rows] == g_camids[cols]
    removed_rows, removed_cols = rows[same_cam], cols[same_cam]
    rows, cols = rows[~same_cam], cols[~same_cam]
    ranks = np.empty(rows.size, np.int64)

    def rank_chunk(start: int) -> None:
        stop = min(start + step, num_q)
        pos = slice(*np.searchsorted(rows, [start, stop]))
        rem = slice(*np.searchsorted(removed_rows, [start, stop]))
        ranks[pos] = _true_match_ranks(
            distmat[start:stop],
            (removed_rows[rem] - start, removed_cols[rem]),
            (rows[pos] - start, cols[pos]),
        )

    # Chunks write disjoint slices of `ranks`; NumPy's sort releases the GIL, so threads help.
    step = max(1, _CHUNK_ELEMENTS // num_g)
    starts = range(0, num_q, step)
    if len(starts) > 1 and _NUM_THREADS > 1:
        with concurrent.futures.ThreadPoolExecutor(_NUM_THREADS) as pool:
            list(pool.map(rank_chunk, starts))
    else:
        for start in starts:
            rank_chunk(start)
    average_precision, first = _average_precision(rows, ranks, num_q, ap)

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

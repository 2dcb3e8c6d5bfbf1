"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), computed as the authors' published code computes it.

Every re-ranked number in the literature (the PSTA release's included) comes from Zhong et
al.'s code (torchreid ships it as `re_ranking`), which differs from the paper's equations in
four places; this module follows the code:
- distances are *squared*, then each column is divided by its maximum and the matrix is
  transposed: d[i, j] = D[j, i]^2 / max_k D[k, i]^2 (for symmetric D, row i over its max);
- a candidate q in R(p, k1) expands R*(p, k1) only if |R(p, k1) ∩ R(q, h)| > 2/3 |R(q, h)|,
  strictly, with h = round(k1 / 2) (half to even);
- the Jaccard distance is 1 - o / (2 - o), o = sum_j min(V_p[j], V_g[j]) (rows of V sum to 1);
- the final distance mixes in those squared, normalised distances:
  d* = (1 - lambda) d_J + lambda d.
The rest is as in the paper, over all N = Q + G items (queries first): N(p, k) are the k + 1
nearest items of p in d (p itself included; ties by index, i.e. a stable sort),
R(p, k) = {g in N(p, k) : p in N(g, k)}, V_p[g] = exp(-d[p, g]) on R*(p, k1) normalised to sum
1, and with k2 > 1 V_p is replaced by the mean of V_g over the k2 nearest g of p.

Cost: the N x N distances are held once as float32 (N^2 x 4 bytes) and everything else
is sparse (N x ~k1 entries) or processed in row blocks; docs/benchmarks.md gives the
measured time and peak memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

_ROW_CHUNK = 1024
# 1 - cos can round to a tiny negative number; anything below this is not a distance.
_NEGATIVE_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class RerankParams:
    """k1: size of the k-reciprocal neighbourhood; k2: query expansion size; lambda_value:
    weight of the original distance in the final distance."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self):
        if self.k1 < 1 or self.k2 < 1:
            raise ValueError(f"k1 and k2 must be at least 1, got k1={self.k1}, k2={self.k2}")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise ValueError(f"lambda_value must be in [0, 1], got {self.lambda_value}")


def smallest_k(dist: np.ndarray, k: int) -> np.ndarray:
    """(N, k) column indices of each row's k smallest entries, ordered by (value, index)."""
    num_rows, num_cols = dist.shape
    k = min(k, num_cols)
    out = np.empty((num_rows, k), np.int64)
    for start in range(0, num_rows, _ROW_CHUNK):
        block = np.ascontiguousarray(dist[start : start + _ROW_CHUNK])
        kth = np.partition(block, k - 1, axis=1)[:, k - 1 : k]
        chosen = block < kth
        # Among entries equal to the k-th value, keep the earliest columns (stable ties);
        # only rows with more such entries than places need the running count.
        at = block == kth
        needed = k - np.count_nonzero(chosen, axis=1)
        tied = np.nonzero(np.count_nonzero(at, axis=1) > needed)[0]
        at[tied] &= np.cumsum(at[tied], axis=1) <= needed[tied, None]
        chosen |= at
        cols = np.nonzero(chosen)[1].reshape(block.shape[0], k)  # ascending per row
        values = np.take_along_axis(block, cols, axis=1)
        out[start : start + block.shape[0]] = np.take_along_axis(
            cols, np.argsort(values, axis=1, kind="stable"), axis=1
        )
    return out


def _reciprocal_mask(nearest: np.ndarray, k: int) -> np.ndarray:
    """(N, k + 1) bool: is nearest[p, a] (a <= k) in R(p, k), i.e. is p in N(nearest[p, a], k)."""
    top = nearest[:, : k + 1]
    items = np.arange(top.shape[0])[:, None, None]
    return np.any(top[top] == items, axis=-1)


def _expanded_sets(nearest: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the members of R*(p, k1) for every p (with duplicates)."""
    half = int(np.round(k1 / 2))
    top, recip = nearest[:, : k1 + 1], _reciprocal_mask(nearest, k1)
    top_half, recip_half = nearest[:, : half + 1], _reciprocal_mask(nearest, half)
    rows, cols = [np.nonzero(recip)[0]], [top[recip]]
    for start in range(0, top.shape[0], _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, top.shape[0])
        candidates = top[start:stop]  # (C, k1 + 1): q
        cand_sets = top_half[candidates]  # (C, k1 + 1, half + 1): R(q, half) slots
        cand_mask = recip_half[candidates]
        in_r = (cand_sets[..., None] == candidates[:, None, None, :]) & recip[start:stop][
            :, None, None, :
        ]
        overlap = np.count_nonzero(np.any(in_r, axis=-1) & cand_mask, axis=-1)
        size = np.count_nonzero(cand_mask, axis=-1)
        accepted = recip[start:stop] & (3 * overlap > 2 * size)  # (C, k1 + 1), strict
        members = cand_mask & accepted[..., None]
        rows.append(start + np.nonzero(members)[0])
        cols.append(cand_sets[members])
    return np.concatenate(rows), np.concatenate(cols)


def normalised_squared_distances(
    q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray
) -> np.ndarray:
    """(N, N) float32 d[i, j] = D[j, i]^2 / max_k D[k, i]^2 over all items, queries first.

    Built directly in this (transposed) layout, one N x N array with contiguous rows.
    """
    num_q = q_g_dist.shape[0]
    num = num_q + q_g_dist.shape[1]
    dist = np.empty((num, num), np.float32)
    dist[:num_q, :num_q] = q_q_dist.T
    dist[:num_q, num_q:] = q_g_dist
    dist[num_q:, :num_q] = q_g_dist.T
    dist[num_q:, num_q:] = g_g_dist.T
    np.square(dist, out=dist)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return dist


def _check_inputs(q_g_dist, q_q_dist, g_g_dist) -> None:
    num_q, num_g = q_g_dist.shape if q_g_dist.ndim == 2 else (-1, -1)
    if q_g_dist.ndim != 2 or q_q_dist.shape != (num_q, num_q) or g_g_dist.shape != (num_g, num_g):
        raise ValueError(
            "expected q_g_dist (Q, G), q_q_dist (Q, Q) and g_g_dist (G, G), got "
            f"{q_g_dist.shape}, {q_q_dist.shape} and {g_g_dist.shape}"
        )
    for name, block in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist)):
        if not np.all(np.isfinite(block)):
            raise ValueError(f"re-ranking: {name} contains NaN or infinite values")
        if block.size and block.min() < -_NEGATIVE_TOLERANCE:
            raise ValueError(
                f"re-ranking needs non-negative distances ({name} min: {block.min()}); shift "
                "cosine distances to 1 - cos first"
            )


def k_reciprocal_rerank(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    params: RerankParams = RerankParams(),
) -> np.ndarray:
    """Re-ranked (num_query, num_gallery) float32 distances; see the module docstring.

    Args:
      q_g_dist: (Q, G) non-negative query-gallery distances (e.g. 1 - cos).
      q_q_dist: (Q, Q) query-query distances.
      g_g_dist: (G, G) gallery-gallery distances.
    """
    q_g_dist, q_q_dist, g_g_dist = (
        np.asarray(x, np.float32) for x in (q_g_dist, q_q_dist, g_g_dist)
    )
    _check_inputs(q_g_dist, q_q_dist, g_g_dist)
    num_q = q_g_dist.shape[0]
    dist = normalised_squared_distances(q_g_dist, q_q_dist, g_g_dist)
    num = dist.shape[0]
    nearest = smallest_k(dist, max(params.k1 + 1, params.k2))

    rows, cols = _expanded_sets(nearest, params.k1)
    membership = scipy.sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(num, num))
    weights = membership.tocsr()
    weights.sum_duplicates()
    weight_rows = np.repeat(np.arange(num), np.diff(weights.indptr))
    weights.data = np.exp(-dist[weight_rows, weights.indices].astype(np.float64))
    row_sums = np.maximum(np.asarray(weights.sum(axis=1)).ravel(), np.finfo(np.float64).tiny)
    weights = scipy.sparse.diags(1.0 / row_sums) @ weights

    if params.k2 > 1:
        expansion_cols = nearest[:, : params.k2].ravel()
        expansion = scipy.sparse.csr_matrix(
            (
                np.full(expansion_cols.size, 1.0 / params.k2),
                (np.repeat(np.arange(num), params.k2), expansion_cols),
            ),
            shape=(num, num),
        )
        weights = (expansion @ weights).tocsr()

    overlap = _min_overlap(weights.tocsr(), num_q)
    jaccard = 1.0 - overlap / (2.0 - overlap)
    original = dist[:num_q, num_q:].astype(np.float64)
    return ((1.0 - params.lambda_value) * jaccard + params.lambda_value * original).astype(
        np.float32
    )


def _min_overlap(weights: scipy.sparse.csr_matrix, num_q: int) -> np.ndarray:
    """(Q, G) sum_j min(V_q[j], V_g[j]) between query rows and gallery rows of `weights`."""
    num = weights.shape[0]
    num_g = num - num_q
    gallery = weights[num_q:].tocsc()
    overlap = np.zeros((num_q, num_g))
    chunk = max(1, (1 << 22) // max(num_g, 1))
    for start in range(0, num_q, chunk):
        query = weights[start : min(start + chunk, num_q)].tocoo()
        # Column t of `shared` is gallery column query.col[t]; pair it with query entry t.
        shared = gallery[:, query.col].tocoo()
        contribution = np.minimum(shared.data, query.data[shared.col])
        flat = query.row[shared.col] * num_g + shared.row
        overlap[start : start + query.shape[0]] += np.bincount(
            flat, weights=contribution, minlength=query.shape[0] * num_g
        ).reshape(query.shape[0], num_g)
    return overlap

"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written from the paper's definitions.

Over all N = num_query + num_gallery items, with d the distance divided by its row maximum and
N(p, k) the k + 1 nearest items of p (p itself included; ties by index):
- k-reciprocal set R(p, k) = {g in N(p, k) : p in N(g, k)};
- expanded set R*(p, k1) = R(p, k1) united with every R(q, round(k1 / 2)), q in R(p, k1), that
  satisfies |R(p, k1) ∩ R(q, round(k1 / 2))| >= 2/3 |R(q, round(k1 / 2))| (eq. 7);
- V_p[g] = exp(-d(p, g)) on R*(p, k1), 0 elsewhere, normalised to sum 1 (eq. 8, normalised as
  the authors' code does, so that the Jaccard and original distances share a scale);
- local query expansion: V_p <- mean of V_g over the k2 nearest items g of p (p included);
- Jaccard distance d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j]);
- final distance d* = (1 - lambda) d_J + lambda d.
Memory is O(N^2) for the dense all-pairs distances (as in the paper's setting); V is sparse.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

_ROW_CHUNK = 1024


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
        block = dist[start : start + _ROW_CHUNK]
        kth = np.partition(block, k - 1, axis=1)[:, k - 1 : k]
        below = block < kth
        # Among entries equal to the k-th value, keep the earliest columns (stable ties).
        at = block == kth
        needed = k - np.count_nonzero(below, axis=1, keepdims=True)
        chosen = below | (at & (np.cumsum(at, axis=1) <= needed))
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
        accepted = recip[start:stop] & (3 * overlap >= 2 * size)  # (C, k1 + 1)
        members = cand_mask & accepted[..., None]
        rows.append(start + np.nonzero(members)[0])
        cols.append(cand_sets[members])
    return np.concatenate(rows), np.concatenate(cols)


def k_reciprocal_rerank(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    params: RerankParams = RerankParams(),
) -> np.ndarray:
    """Re-ranked (num_query, num_gallery) distances; see the module docstring.

    Args:
      q_g_dist: (Q, G) non-negative query-gallery distances.
      q_q_dist: (Q, Q) query-query distances.
      g_g_dist: (G, G) gallery-gallery distances.
    """
    q_g_dist, q_q_dist, g_g_dist = (
        np.asarray(x, np.float32) for x in (q_g_dist, q_q_dist, g_g_dist)
    )
    num_q, num_g = q_g_dist.shape if q_g_dist.ndim == 2 else (-1, -1)
    if q_g_dist.ndim != 2 or q_q_dist.shape != (num_q, num_q) or g_g_dist.shape != (num_g, num_g):
        raise ValueError(
            "expected q_g_dist (Q, G), q_q_dist (Q, Q) and g_g_dist (G, G), got "
            f"{q_g_dist.shape}, {q_q_dist.shape} and {g_g_dist.shape}"
        )
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    if not np.all(np.isfinite(dist)):
        raise ValueError("re-ranking: the distances contain NaN or infinite values")
    if dist.min() < 0:
        raise ValueError(
            "re-ranking needs non-negative distances (exp(-d) weights); shift cosine distances "
            f"to 1 - cos first (min found: {dist.min()})"
        )
    dist /= np.maximum(dist.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    num = dist.shape[0]
    nearest = smallest_k(dist, max(params.k1, params.k2) + 1)

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

    jaccard = _jaccard_distance(weights.tocsr(), num_q)
    return (1.0 - params.lambda_value) * jaccard + params.lambda_value * dist[:num_q, num_q:]


def _jaccard_distance(weights: scipy.sparse.csr_matrix, num_q: int) -> np.ndarray:
    """(Q, G) 1 - sum min / sum max between query rows and gallery rows of `weights`."""
    num = weights.shape[0]
    num_g = num - num_q
    gallery = weights[num_q:].tocsc()
    row_sums = np.asarray(weights.sum(axis=1)).ravel()
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
    union = row_sums[:num_q, None] + row_sums[None, num_q:] - overlap
    return (1.0 - overlap / np.maximum(union, np.finfo(np.float64).tiny)).astype(np.float32)

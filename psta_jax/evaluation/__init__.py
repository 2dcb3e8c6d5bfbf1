"""Video re-ID evaluation: distances, CMC/mAP, dataset protocols, re-ranking, report.

- `cmc_map` / `rank_metrics` (metrics.py): CMC and mAP from a distance matrix, identical to the
  release's evaluate with a stable sort, vectorised and chunked.
- `pairwise_distance` (distance.py): cosine (release) or squared Euclidean distances.
- `evaluate`, `PROTOCOLS`, `average_over_splits` (protocols.py): features -> metrics under a
  named dataset protocol (mars, mars_torchreid, mars_matlab, duke, ilids_vid, prid2011).
- `k_reciprocal_rerank` (rerank.py): optional re-ranking (Zhong et al., CVPR 2017).
- `format_report`, `to_json` (report.py).
"""

from psta_jax.evaluation.distance import METRICS, l2_normalise, pairwise_distance
from psta_jax.evaluation.metrics import AP_KINDS, TIE_RULE, RankMetrics, cmc_map, rank_metrics
from psta_jax.evaluation.protocols import (
    PROTOCOLS,
    EvalResult,
    Protocol,
    SplitSummary,
    average_over_splits,
    evaluate,
    get_protocol,
)
from psta_jax.evaluation.report import format_report, to_json
from psta_jax.evaluation.rerank import RerankParams, k_reciprocal_rerank

__all__ = [
    "AP_KINDS",
    "METRICS",
    "PROTOCOLS",
    "TIE_RULE",
    "EvalResult",
    "Protocol",
    "RankMetrics",
    "RerankParams",
    "SplitSummary",
    "average_over_splits",
    "cmc_map",
    "evaluate",
    "format_report",
    "get_protocol",
    "k_reciprocal_rerank",
    "l2_normalise",
    "pairwise_distance",
    "rank_metrics",
    "to_json",
]

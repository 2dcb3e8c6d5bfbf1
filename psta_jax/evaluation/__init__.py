"""Video re-ID evaluation: distances, CMC/mAP, dataset protocols, re-ranking, report.

- `cmc_map` / `rank_metrics` (metrics.py): CMC and mAP from a distance matrix, identical to the
  release's evaluate with a stable sort, vectorised and chunked.
- `pairwise_distance` (distance.py): cosine (release) or squared Euclidean distances.
- `evaluate`, `distance_matrix`, `PROTOCOLS`, `average_over_splits` (protocols.py): features
  -> metrics under a named dataset protocol (mars, mars_torchreid, mars_matlab, duke,
  ilids_vid, prid2011); the distances `evaluate` ranks.
- `k_reciprocal_rerank` (rerank.py): optional re-ranking (Zhong et al., CVPR 2017).
- `format_report`, `to_json` (report.py).

Evaluating a model (these import JAX and TensorFlow, so they are not imported here):
- `features.py`: `tracklet_features` (a compiled embedding + eval batches -> one feature per
  tracklet, gathered from every process), `split_features` (a split under a run's config).
- `model_eval.py`: `evaluate_splits` (query and gallery features -> metrics, the train loop's
  evaluation), `restore_model`, `evaluate_checkpoint` (evaluate mode of psta_jax.main).
"""

from psta_jax.evaluation.distance import METRICS, l2_normalise, pairwise_distance
from psta_jax.evaluation.metrics import AP_KINDS, TIE_RULE, RankMetrics, cmc_map, rank_metrics
from psta_jax.evaluation.protocols import (
    PROTOCOLS,
    EvalResult,
    Protocol,
    SplitSummary,
    average_over_splits,
    distance_matrix,
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
    "distance_matrix",
    "evaluate",
    "format_report",
    "get_protocol",
    "k_reciprocal_rerank",
    "l2_normalise",
    "pairwise_distance",
    "rank_metrics",
    "to_json",
]

"""Video re-ID evaluation in NumPy: distances, CMC/mAP, dataset protocols, re-ranking, reports.

A leaf of the package: it imports neither JAX nor TensorFlow, so it can score features from
anywhere.

- `cmc_map` / `rank_metrics` (metrics.py): CMC and mAP from a distance matrix, identical to
  the release's evaluation with a stable sort, vectorised and chunked.
- `pairwise_distance`, `l2_normalise` (distance.py): cosine (the release's) or squared
  Euclidean distances.
- `evaluate`, `EvalSettings`, `PROTOCOLS`, `protocol_gallery`, `distance_matrix`,
  `average_over_splits` (protocols.py): features -> metrics under a named dataset protocol
  (mars, mars_torchreid, mars_matlab, duke, ilids_vid, prid2011).
- `k_reciprocal_rerank` (rerank.py): optional re-ranking (Zhong et al., CVPR 2017).
- `average_clip_features` (tracklet_features.py): clip features -> one per tracklet.
- `format_report`, `to_json`, `expected_range_note` (report.py).

Computing a model's features is `psta_jax.training.evaluator`.
"""

from psta_jax.evaluation.distance import (
    METRICS,
    REPORTED_AS,
    l2_normalise,
    pairwise_distance,
    reported_distance,
)
from psta_jax.evaluation.metrics import AP_KINDS, TIE_RULE, RankMetrics, cmc_map, rank_metrics
from psta_jax.evaluation.protocols import (
    JUNK_PID,
    PROTOCOLS,
    EvalResult,
    EvalSettings,
    Protocol,
    RankedGallery,
    SplitSummary,
    average_over_splits,
    distance_matrix,
    evaluate,
    get_protocol,
    protocol_gallery,
    top_k,
)
from psta_jax.evaluation.report import expected_range_note, format_report, to_json
from psta_jax.evaluation.rerank import RerankParams, k_reciprocal_rerank
from psta_jax.evaluation.tracklet_features import average_clip_features

__all__ = [
    "AP_KINDS",
    "JUNK_PID",
    "METRICS",
    "PROTOCOLS",
    "REPORTED_AS",
    "TIE_RULE",
    "EvalResult",
    "EvalSettings",
    "Protocol",
    "RankMetrics",
    "RankedGallery",
    "RerankParams",
    "SplitSummary",
    "average_clip_features",
    "average_over_splits",
    "cmc_map",
    "distance_matrix",
    "evaluate",
    "expected_range_note",
    "format_report",
    "get_protocol",
    "k_reciprocal_rerank",
    "l2_normalise",
    "pairwise_distance",
    "protocol_gallery",
    "rank_metrics",
    "reported_distance",
    "to_json",
    "top_k",
]

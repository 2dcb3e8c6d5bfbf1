"""Results as a small terminal table and as a JSON-ready dict."""

from __future__ import annotations

from psta_jax.evaluation.protocols import EvalResult, SplitSummary

REPORTED_RANKS: tuple[int, ...] = (1, 5, 10, 20)


def _ranks(num: int) -> tuple[int, ...]:
    return tuple(k for k in REPORTED_RANKS if k <= num)


def _options(result: EvalResult) -> dict:
    return {
        "protocol": result.protocol,
        "distance": result.distance,
        "ap": result.ap,
        "invalid_queries": result.invalid_queries,
        "rerank": result.rerank,
        "tie_rule": result.tie_rule,
        "append_query_to_gallery": result.append_query_to_gallery,
        "max_rank": int(result.cmc.shape[0]),
    }


def to_json(result: EvalResult | SplitSummary) -> dict:
    """A JSON-serialisable dict: metrics (fractions in [0, 1]), query counts and options."""
    if isinstance(result, SplitSummary):
        first = result.splits[0]
        return {
            **{f"rank{k}": float(result.cmc_mean[k - 1]) for k in _ranks(result.cmc_mean.size)},
            **{f"rank{k}_std": float(result.cmc_std[k - 1]) for k in _ranks(result.cmc_std.size)},
            "mAP": result.mAP_mean,
            "mAP_std": result.mAP_std,
            "mAP_min": result.mAP_min,
            "mAP_max": result.mAP_max,
            "rank1_min": float(result.cmc_min[0]),
            "rank1_max": float(result.cmc_max[0]),
            "cmc": [float(x) for x in result.cmc_mean],
            "num_splits": result.num_splits,
            "splits": [to_json(r) for r in result.splits],
            **_options(first),
        }
    return {
        **{f"rank{k}": float(result.cmc[k - 1]) for k in _ranks(result.cmc.size)},
        "mAP": float(result.mAP),
        "cmc": [float(x) for x in result.cmc],
        "num_queries": result.num_queries,
        "num_gallery": result.num_gallery,
        "num_valid_queries": result.num_valid_queries,
        "num_skipped_queries": result.num_skipped_queries,
        **_options(result),
    }


def format_report(result: EvalResult | SplitSummary) -> str:
    """Rank-1/5/10/20 and mAP in percent, with the counts and protocol options underneath."""
    if isinstance(result, SplitSummary):
        first = result.splits[0]
        ranks = _ranks(result.cmc_mean.size)
        header = [f"R{k}" for k in ranks] + ["mAP"]
        mean = [100 * result.cmc_mean[k - 1] for k in ranks] + [100 * result.mAP_mean]
        std = [100 * result.cmc_std[k - 1] for k in ranks] + [100 * result.mAP_std]
        low = [100 * result.cmc_min[k - 1] for k in ranks] + [100 * result.mAP_min]
        high = [100 * result.cmc_max[k - 1] for k in ranks] + [100 * result.mAP_max]
        lines = [
            "split   " + "".join(f"{h:>8s}" for h in header),
            "mean    " + "".join(f"{x:8.2f}" for x in mean),
            "std     " + "".join(f"{x:8.2f}" for x in std),
            "min     " + "".join(f"{x:8.2f}" for x in low),
            "max     " + "".join(f"{x:8.2f}" for x in high),
            f"splits: {result.num_splits}; valid queries per split: "
            + ", ".join(str(r.num_valid_queries) for r in result.splits),
        ]
    else:
        first = result
        ranks = _ranks(result.cmc.size)
        header = [f"R{k}" for k in ranks] + ["mAP"]
        values = [100 * result.cmc[k - 1] for k in ranks] + [100 * result.mAP]
        lines = [
            "".join(f"{h:>8s}" for h in header),
            "".join(f"{x:8.2f}" for x in values),
            f"queries: {result.num_valid_queries} valid of {result.num_queries} "
            f"({result.num_skipped_queries} without a true match); gallery: {result.num_gallery}",
        ]
    options = _options(first)
    lines.append(
        f"protocol {options['protocol']}, distance {options['distance']}, AP {options['ap']}, "
        f"invalid queries {options['invalid_queries']}, rerank {options['rerank']}, "
        f"ties {options['tie_rule']}"
    )
    return "\n".join(lines)


def expected_range_note(
    metrics: dict, expected: dict[str, tuple[float, float]], source: str = ""
) -> str:
    """One line saying whether each metric of `expected` ({'mAP': (low, high), ...}, in
    percent) falls in its range: e.g. "mAP 47.31 inside the expected 44.9-49.6; ...".

    `metrics` holds fractions in [0, 1] (`to_json`); `source` says where the ranges come from.
    """
    parts, outside = [], False
    for name, (low, high) in expected.items():
        value = 100 * float(metrics[name])
        inside = low <= value <= high
        outside |= not inside
        where = "inside" if inside else "OUTSIDE"
        parts.append(f"{name} {value:.2f} {where} the expected {low:.2f}-{high:.2f}")
    verdict = "outside the expected range" if outside else "as expected"
    return f"{verdict}: {'; '.join(parts)}{f' ({source})' if source else ''}"

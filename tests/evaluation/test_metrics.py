"""cmc_map / rank_metrics: release parity, a plain per-query reference loop, hand-made cases."""

import numpy as np
import pytest

from psta_jax.evaluation import cmc_map, metrics, rank_metrics
from tests import reference_data


def reference_loop(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="step", invalid="skip"
):
    """Per query: stable sort, drop same pid+camera, CMC and AP written out step by step.

    Trapezoidal AP follows the MATLAB compute_AP.m loop (running previous precision).
    """
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, num_valid = [], [], 0
    for q in range(num_q):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        good = (g_pids[order] == q_pids[q])[keep]
        if not good.any():
            if invalid == "zero":
                all_cmc.append(np.zeros(max_rank))
                all_ap.append(0.0)
            continue
        num_valid += 1
        cmc = np.ones(max_rank)
        first = int(np.argmax(good))
        cmc[:first] = 0
        all_cmc.append(cmc)
        hits, total, old_recall, old_precision = 0, 0.0, 0.0, 1.0
        for n, is_good in enumerate(good, start=1):
            hits += int(is_good)
            precision, recall = hits / n, hits / good.sum()
            if ap == "step":
                total += precision * is_good
            else:
                total += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
        all_ap.append(total / good.sum() if ap == "step" else total)
    return np.mean(all_cmc, axis=0), float(np.mean(all_ap)), num_valid


def _random_case(seed, num_q=23, num_g=61, decimals=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 8, num_q)
    g_pids = rng.integers(0, 8, num_g)  # pid 0: distractors
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    distmat = np.round(rng.random((num_q, num_g)), decimals).astype(dtype)  # many ties
    return distmat, q_pids, g_pids, q_camids, g_camids


def test_equals_release_with_stable_sort():
    ref = reference_data.load("eval_dev_seed7")
    args = [ref[k] for k in ("distmat", "q_pids", "g_pids", "q_camids", "g_camids")]
    result = rank_metrics(*args)
    np.testing.assert_array_equal(result.cmc.astype(np.float32), ref["cmc_stable"])
    np.testing.assert_allclose(result.mAP, ref["mAP_stable"], rtol=0, atol=1e-12)
    assert result.num_valid_queries == ref["num_valid_queries"] == 293
    assert result.num_skipped_queries == 300 - 293
    # The release's quicksort orders ties differently: its numbers are not ours.
    assert not np.array_equal(ref["cmc_release"], ref["cmc_stable"])
    assert abs(result.mAP - float(ref["mAP_release"])) > 1e-6
    cmc, mean_ap = cmc_map(*args)
    np.testing.assert_array_equal(cmc, result.cmc)
    assert mean_ap == result.mAP


@pytest.mark.parametrize("ap", ["step", "trapezoid"])
@pytest.mark.parametrize("invalid", ["skip", "zero"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_loop_with_ties(ap, invalid, dtype):
    for seed in range(4):
        case = _random_case(seed, dtype=dtype)
        result = rank_metrics(*case, max_rank=20, ap=ap, invalid_queries=invalid)
        cmc, mean_ap, num_valid = reference_loop(*case, max_rank=20, ap=ap, invalid=invalid)
        np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result.mAP, mean_ap, rtol=0, atol=1e-12)
        assert result.num_valid_queries == num_valid


def test_chunked_and_threaded_path_matches_reference(monkeypatch):
    # Chunks of 2 queries: many chunks, run on the thread pool.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 2 * 61)
    monkeypatch.setattr(metrics, "_NUM_THREADS", 2)
    case = _random_case(11, decimals=2)
    result = rank_metrics(*case)
    cmc, mean_ap, num_valid = reference_loop(*case)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    np.testing.assert_allclose(result.mAP, mean_ap, atol=1e-12)
    assert result.num_valid_queries == num_valid


def _one_query(distances, g_pids, g_camids, q_pid=1, q_cam=0, **kwargs):
    return rank_metrics(
        np.asarray([distances], np.float64),
        np.array([q_pid]),
        np.asarray(g_pids),
        np.array([q_cam]),
        np.asarray(g_camids),
        **kwargs,
    )


def test_ties_broken_by_gallery_order():
    # The true match ties with a distractor: gallery order decides.
    after = _one_query([0.5, 0.5, 0.9], [0, 1, 3], [1, 1, 1])
    before = _one_query([0.5, 0.5, 0.9], [1, 0, 3], [1, 1, 1])
    assert after.first_match_rank[0] == 1 and after.mAP == 0.5 and after.cmc[0] == 0.0
    assert before.first_match_rank[0] == 0 and before.mAP == 1.0 and before.cmc[0] == 1.0


def test_float64_order_kept_when_float32_would_tie():
    # 0.1 + 1e-12 and 0.1 are one float32 value; in float64 the distractor is strictly closer.
    result = _one_query([0.1 + 1e-12, 0.1], [1, 0], [1, 1])
    assert result.first_match_rank[0] == 1 and result.mAP == 0.5


def test_same_camera_same_identity_removed():
    # Gallery: own copy (removed), a distractor, a true match under another camera, the same
    # identity under the same camera again (removed).
    result = _one_query([0.0, 0.2, 0.3, 0.25], [1, 0, 1, 1], [0, 2, 1, 0], max_rank=3)
    assert result.first_match_rank[0] == 1  # only the distractor is before it
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0])
    assert result.mAP == 0.5
    # Another identity under the query's camera is kept (a negative).
    kept = _one_query([0.1, 0.3], [5, 1], [0, 1])
    assert kept.first_match_rank[0] == 1


def test_skipped_query_counted_and_excluded():
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([1, 2, 0]), np.array([1, 0, 1])  # query 1's match: same camera
    result = rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids)
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 1)
    assert result.mAP == 1.0 and result.cmc[0] == 1.0
    assert np.isnan(result.average_precision[1]) and result.first_match_rank[1] == -1
    matlab = rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, invalid_queries="zero")
    assert matlab.mAP == 0.5 and matlab.cmc[0] == 0.5


def test_step_vs_trapezoid():
    step = _one_query([0.1, 0.2], [0, 1], [1, 1], ap="step")
    trapezoid = _one_query([0.1, 0.2], [0, 1], [1, 1], ap="trapezoid")
    assert step.mAP == 0.5 and trapezoid.mAP == 0.25
    # True matches at ranks 1 and 3: step (1 + 2/3) / 2; trapezoid 1/2 + (1/2 + 2/3) / 4.
    distances, pids, cams = [0.1, 0.2, 0.3], [1, 0, 1], [1, 1, 1]
    np.testing.assert_allclose(_one_query(distances, pids, cams).mAP, 5 / 6)
    np.testing.assert_allclose(
        _one_query(distances, pids, cams, ap="trapezoid").mAP, 0.5 + (0.5 + 2 / 3) / 4
    )
    # Equal when the true matches fill the top ranks.
    assert _one_query([0.1, 0.2, 0.3], [1, 1, 0], cams, ap="trapezoid").mAP == 1.0


def test_cmc_length_when_gallery_is_small():
    result = _one_query([0.3, 0.1, 0.2], [0, 0, 1], [1, 1, 1], max_rank=50)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0])  # cut at the gallery size
    # 4 gallery entries, 2 removed: CMC beyond the 2 kept entries stays 1.
    result = _one_query([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 1], [0, 0, 1, 1], max_rank=4)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "g_pids": a["g_pids"][:-1]}, "g_pids: expected shape"),
        (lambda a: {**a, "q_camids": a["q_camids"][:-1]}, "q_camids: expected shape"),
        (lambda a: {**a, "q_pids": a["q_pids"].astype(float)}, "expected integer ids"),
        (lambda a: {**a, "distmat": a["distmat"][0]}, "distmat: expected shape"),
        (lambda a: {**a, "distmat": np.where(a["distmat"] > 0.5, np.nan, 0.1)}, "NaN"),
        (lambda a: {**a, "distmat": np.full_like(a["distmat"], np.inf)}, "NaN or infinite"),
        (
            lambda a: {
                **a,
                "distmat": a["distmat"][:0],
                "q_pids": a["q_pids"][:0],
                "q_camids": a["q_camids"][:0],
            },
            "query set is empty",
        ),
        (
            lambda a: {
                **a,
                "distmat": a["distmat"][:, :0],
                "g_pids": a["g_pids"][:0],
                "g_camids": a["g_camids"][:0],
            },
            "gallery is empty",
        ),
        (
            lambda a: {
                **a,
                "g_camids": np.zeros_like(a["g_camids"]),
                "q_camids": np.zeros_like(a["q_camids"]),
            },
            "no query has a true match",
        ),
        (lambda a: {**a, "ap": "interpolated"}, "ap must be one of"),
        (lambda a: {**a, "invalid_queries": "drop"}, "invalid_queries must be one of"),
        (lambda a: {**a, "max_rank": 0}, "max_rank must be at least 1"),
    ],
)
def test_bad_input_raises(change, message):
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(3, num_q=4, num_g=9)
    args = dict(distmat=distmat, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids)
    with pytest.raises(ValueError, match=message):
        rank_metrics(**change(args))

"""Distances, `evaluate` under the named protocols, 10-split averaging and the report."""

import json

import numpy as np
import pytest
import scipy.spatial.distance

from psta_jax import evaluation
from psta_jax.evaluation import distance as distance_module
from tests.helpers.tolerances import assert_close_to_scale


def _features(seed, num, dim=6):
    return np.random.default_rng(seed).normal(size=(num, dim)).astype(np.float32)


@pytest.mark.parametrize(
    "metric, scipy_metric", [("cosine", "cosine"), ("euclidean", "sqeuclidean")]
)
def test_pairwise_distance_matches_scipy_in_chunks(monkeypatch, metric, scipy_metric):
    monkeypatch.setattr(distance_module, "_CHUNK_ROWS", 3)  # several chunks
    query, gallery = _features(0, 7), _features(1, 11)
    got = evaluation.pairwise_distance(query, gallery, metric)
    expected = scipy.spatial.distance.cdist(query, gallery, scipy_metric)
    if metric == "cosine":
        expected = expected - 1.0  # scipy: 1 - cos; the release: -cos
    assert got.dtype == np.float32 and got.shape == (7, 11)
    assert_close_to_scale(got, expected)  # float32 against scipy's float64
    same = evaluation.pairwise_distance(query, query, "euclidean")
    assert np.all(same >= 0) and np.allclose(np.diag(same), 0, atol=1e-5)


def test_pairwise_distance_bad_input():
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluation.pairwise_distance(_features(0, 2), _features(1, 2), "cityblock")
    with pytest.raises(ValueError, match="different feature dims"):
        evaluation.pairwise_distance(_features(0, 2, 4), _features(1, 2, 5))
    bad = _features(0, 3)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="query_features: contains NaN.*item 1"):
        evaluation.pairwise_distance(bad, _features(1, 2))
    with pytest.raises(ValueError, match="gallery_features: is empty"):
        evaluation.pairwise_distance(_features(0, 2), np.zeros((0, 6), np.float32))


def _mars_like_toy():
    """3 queries; identity 2's only other-camera tracklet is another query."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 8)) * 3
    q_pids, q_camids = np.array([1, 2, 2]), np.array([0, 0, 1])
    g_pids, g_camids = np.array([1, 1, 3, 0, 0, 2]), np.array([1, 0, 1, 2, 3, 0])
    noise = lambda n: rng.normal(size=(n, 8)) * 0.5  # noqa: E731
    query = (centres[q_pids] + noise(3)).astype(np.float32)
    gallery = (centres[g_pids] + noise(6)).astype(np.float32)
    return query, gallery, q_pids, g_pids, q_camids, g_camids


def test_mars_appends_queries_and_torchreid_skips():
    data = _mars_like_toy()
    mars = evaluation.evaluate(*data, protocol="mars")
    torchreid = evaluation.evaluate(*data, protocol="mars_torchreid")
    assert mars.num_gallery == 9 and torchreid.num_gallery == 6
    # With the queries in the gallery, query 1 (pid 2, cam 0) finds query 2 (pid 2, cam 1).
    assert (mars.num_valid_queries, mars.num_skipped_queries) == (3, 0)
    # Without them, both pid-2 queries only have a same-camera gallery tracklet (or none).
    assert (torchreid.num_valid_queries, torchreid.num_skipped_queries) == (2, 1)
    assert mars.append_query_to_gallery and not torchreid.append_query_to_gallery
    # The same numbers from cmc_map on the concatenated gallery by hand.
    query, gallery, q_pids, g_pids, q_camids, g_camids = data
    full = np.concatenate([query, gallery])
    distmat = evaluation.pairwise_distance(query, full)
    cmc, mean_ap = evaluation.cmc_map(
        distmat,
        q_pids,
        np.concatenate([q_pids, g_pids]),
        q_camids,
        np.concatenate([q_camids, g_camids]),
    )
    np.testing.assert_array_equal(mars.cmc, cmc)
    assert mars.mAP == mean_ap


def test_mars_matlab_uses_trapezoid_over_all_queries():
    data = _mars_like_toy()
    matlab = evaluation.evaluate(*data, protocol="mars_matlab", distance="euclidean")
    assert matlab.ap == "trapezoid" and matlab.invalid_queries == "zero"
    query, gallery, q_pids, g_pids, q_camids, g_camids = data
    distmat = evaluation.pairwise_distance(query, np.concatenate([query, gallery]), "euclidean")
    expected = evaluation.rank_metrics(
        distmat,
        q_pids,
        np.concatenate([q_pids, g_pids]),
        q_camids,
        np.concatenate([q_camids, g_camids]),
        ap="trapezoid",
        invalid_queries="zero",
    )
    assert matlab.mAP == expected.mAP
    step = evaluation.evaluate(*data, protocol="mars", distance="euclidean")
    assert matlab.mAP <= step.mAP


def test_duke_query_copies_in_gallery_are_removed_and_junk_dropped():
    query, gallery, q_pids, g_pids, q_camids, g_camids = _mars_like_toy()
    plain = evaluation.evaluate(query, gallery, q_pids, g_pids, q_camids, g_camids, protocol="duke")
    # Gallery that also holds exact copies of the queries (Duke's gallery folder) and a junk
    # tracklet (pid -1) identical to query 0: neither may change anything.
    with_copies = evaluation.evaluate(
        query,
        np.concatenate([gallery, query, query[:1]]),
        q_pids,
        np.concatenate([g_pids, q_pids, [-1]]),
        q_camids,
        np.concatenate([g_camids, q_camids, [1]]),
        protocol="duke",
    )
    assert with_copies.num_gallery == 9
    # Queries 1 and 2 now find each other's copies; query 0 is unchanged.
    assert with_copies.num_valid_queries == 3 and plain.num_valid_queries == 2
    np.testing.assert_array_equal(
        with_copies.cmc,
        evaluation.evaluate(
            query, gallery, q_pids, g_pids, q_camids, g_camids, protocol="mars"
        ).cmc,
    )


def test_evaluate_bad_input():
    data = list(_mars_like_toy())
    with pytest.raises(ValueError, match="unknown protocol 'market'"):
        evaluation.evaluate(*data, protocol="market")
    with pytest.raises(ValueError, match="distance must be one of"):
        evaluation.evaluate(*data, distance="hamming")
    with pytest.raises(ValueError, match="g_pids: expected shape \\(6,\\)"):
        evaluation.evaluate(*data[:3], data[3][:5], *data[4:])
    nan_query = data[0].copy()
    nan_query[0, 0] = np.nan
    with pytest.raises(ValueError, match="query_features: contains NaN"):
        evaluation.evaluate(nan_query, *data[1:])
    with pytest.raises(ValueError, match="no gallery item left"):
        evaluation.evaluate(
            data[0], data[1][:1], data[2], np.array([-1]), data[4], np.array([0]), protocol="duke"
        )
    with pytest.raises(ValueError, match="query_features: is empty"):
        evaluation.evaluate(data[0][:0], data[1], data[2][:0], data[3], data[4][:0], data[5])
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluation.evaluate(data[0], data[1], np.array([7, 8, 9]), *data[3:], protocol="duke")


def _split_result(seed):
    rng = np.random.default_rng(seed)
    ids = np.arange(12)
    query = rng.normal(size=(12, 5)).astype(np.float32)
    gallery = (query + rng.normal(size=(12, 5)) * 0.8).astype(np.float32)
    return evaluation.evaluate(
        query,
        gallery,
        ids,
        ids,
        np.zeros(12, int),
        np.ones(12, int),
        protocol="ilids_vid",
        max_rank=20,
    )


def test_average_over_ten_splits():
    results = [_split_result(seed) for seed in range(10)]
    summary = evaluation.average_over_splits(results)
    cmc = np.stack([r.cmc for r in results])
    assert summary.num_splits == 10 and summary.cmc_mean.shape == (12,)  # cut at gallery size
    np.testing.assert_allclose(summary.cmc_mean, cmc.mean(0))
    np.testing.assert_allclose(summary.cmc_std, cmc.std(0))
    np.testing.assert_array_equal(summary.cmc_min, cmc.min(0))
    assert summary.cmc_min[0] < summary.cmc_max[0]  # the splits differ
    assert summary.mAP_mean == pytest.approx(np.mean([r.mAP for r in results]))
    # Single-shot gallery: step AP is the reciprocal rank of the only match.
    assert all(r.num_valid_queries == 12 for r in results)
    with pytest.raises(ValueError, match="got no results"):
        evaluation.average_over_splits([])
    other = evaluation.evaluate(*_mars_like_toy(), protocol="mars")
    with pytest.raises(ValueError, match="different options"):
        evaluation.average_over_splits([results[0], other])


def test_report_and_json():
    result = evaluation.evaluate(*_mars_like_toy(), protocol="mars")
    text = evaluation.format_report(result)
    assert "R1" in text and "R5" in text and "mAP" in text
    assert f"{100 * result.mAP:8.2f}" in text
    assert "3 valid of 3" in text and "protocol mars" in text and "distance cosine" in text
    assert "AP step" in text and "rerank False" in text and "stable" in text
    as_json = json.loads(json.dumps(evaluation.to_json(result)))
    assert as_json["rank1"] == result.cmc[0] and as_json["mAP"] == result.mAP
    assert "rank20" not in as_json  # gallery of 9: CMC has 9 ranks
    assert as_json["num_valid_queries"] == 3 and as_json["protocol"] == "mars"
    assert as_json["tie_rule"].startswith("stable") and as_json["rerank"] is False

    summary = evaluation.average_over_splits([_split_result(s) for s in range(3)])
    text = evaluation.format_report(summary)
    assert "splits: 3" in text and "std" in text and "protocol ilids_vid" in text
    as_json = json.loads(json.dumps(evaluation.to_json(summary)))
    assert as_json["num_splits"] == 3 and len(as_json["splits"]) == 3
    assert as_json["rank1"] == pytest.approx(summary.cmc_mean[0])


def test_protocol_gallery_is_what_evaluate_ranks():
    rng = np.random.default_rng(3)
    query, gallery = rng.normal(size=(2, 4)), rng.normal(size=(4, 4))
    q_pids, g_pids = np.array([1, 2]), np.array([1, -1, 2, 0])
    q_cams, g_cams = np.array([0, 1]), np.array([1, 0, 0, 1])
    mars = evaluation.protocol_gallery("mars", query, gallery, q_pids, g_pids, q_cams, g_cams)
    assert mars.split.tolist() == ["query", "query", "gallery", "gallery", "gallery"]
    assert mars.position.tolist() == [0, 1, 0, 2, 3]  # the junk item (pid -1) is dropped
    np.testing.assert_array_equal(mars.pids, [1, 2, 1, 2, 0])
    np.testing.assert_array_equal(mars.features, np.concatenate([query, gallery[[0, 2, 3]]]))
    duke = evaluation.protocol_gallery("duke", query, gallery, q_pids, g_pids, q_cams, g_cams)
    assert duke.split.tolist() == ["gallery"] * 3
    unknown = evaluation.protocol_gallery("duke", query, gallery)  # no identities: keep all
    assert unknown.position.tolist() == [0, 1, 2, 3] and (unknown.pids == -1).all()
    with pytest.raises(ValueError, match="no gallery item left"):
        evaluation.protocol_gallery("duke", query, gallery[:1], g_pids=np.array([-1]))


def test_reported_distance_reads_as_a_distance():
    cos = evaluation.pairwise_distance(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
    shown = evaluation.reported_distance(cos, "cosine")
    np.testing.assert_allclose(shown, [[0.0, 1.0], [1.0, 0.0]], atol=1e-6)  # 1 - cos
    assert evaluation.REPORTED_AS["cosine"] == "1 - cosine similarity"
    assert evaluation.reported_distance(2.5, "euclidean") == 2.5


def test_eval_settings_check_their_fields():
    assert evaluation.EvalSettings().protocol == "mars"
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluation.EvalSettings(protocol="market")
    with pytest.raises(ValueError, match="distance must be one of"):
        evaluation.EvalSettings(distance="manhattan")


def test_expected_range_note_says_inside_or_outside():
    metrics = {"mAP": 0.4731, "rank1": 0.52}
    note = evaluation.expected_range_note(
        metrics, {"mAP": (44.9, 49.6), "rank1": (45.0, 51.0)}, "README"
    )
    assert note.startswith("outside the expected range:")
    assert "mAP 47.31 inside the expected 44.90-49.60" in note
    assert "rank1 52.00 OUTSIDE the expected 45.00-51.00" in note and note.endswith("(README)")
    note = evaluation.expected_range_note(metrics, {"mAP": (47.3, 47.4)})
    assert note == "as expected: mAP 47.31 inside the expected 47.30-47.40"

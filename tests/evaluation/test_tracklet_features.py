"""Clip features averaged per tracklet (the release's tracklet feature)."""

import numpy as np
import pytest

from psta_jax import evaluation


def test_average_clip_features():
    features = np.arange(14, dtype=np.float32).reshape(7, 2)
    ids = np.array([2, 0, 0, 5, 2, 2, -1])
    mask = np.array([True] * 6 + [False])
    got_ids, got = evaluation.average_clip_features(features, ids, mask)
    np.testing.assert_array_equal(got_ids, [0, 2, 5])
    np.testing.assert_allclose(
        got, [features[1:3].mean(0), features[[0, 4, 5]].mean(0), features[3]]
    )
    unmasked_ids, unmasked = evaluation.average_clip_features(features, ids)  # id -1 dropped
    np.testing.assert_array_equal(unmasked_ids, got_ids)
    np.testing.assert_allclose(unmasked, got)
    with pytest.raises(ValueError, match="expected features"):
        evaluation.average_clip_features(features, ids[:3])

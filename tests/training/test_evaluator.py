"""Tracklet features from eval batches: masking, per-tracklet averaging, ids and order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psta_jax.runtime import sharding
from psta_jax.training import evaluator


def _embed(params, model_state, clips):
    """A stand-in model: the mean colour of each clip, scaled by a 'parameter'."""
    return params["scale"] * jnp.mean(clips, axis=(1, 2, 3))


def _batches(clip_values, tracklet_ids, pids, camids, batch_size):
    """Eval batches in the pipeline's layout, the last padded with mask False and ids -1."""
    count = len(clip_values)
    padded = -(-count // batch_size) * batch_size
    mask = np.arange(padded) < count

    def pad(values, fill):
        return np.concatenate([values, np.full(padded - count, fill, values.dtype)])

    values = pad(np.asarray(clip_values, np.float32), 0.0)
    ids, p, c = (pad(np.asarray(v, np.int64), -1) for v in (tracklet_ids, pids, camids))
    for start in range(0, padded, batch_size):
        rows = slice(start, start + batch_size)
        clips = np.broadcast_to(values[rows, None, None, None, None], (batch_size, 2, 4, 2, 3))
        yield {
            "clips": clips.copy(),
            "tracklet_ids": ids[rows],
            "pids": p[rows],
            "camids": c[rows].astype(np.int32),
            "mask": mask[rows],
        }


def test_tracklet_features_average_clips_and_drop_padding():
    mesh = sharding.make_mesh(jax.devices()[:1])
    embed_fn = jax.jit(_embed)
    # Tracklet 0 has clips 1 and 3, tracklet 1 one clip of 5, tracklet 2 clips 2, 4 and 6.
    batches = _batches(
        [1, 3, 5, 2, 4, 6],
        tracklet_ids=[0, 0, 1, 2, 2, 2],
        pids=[7, 7, 9, 7, 7, 7],
        camids=[0, 0, 1, 1, 1, 1],
        batch_size=4,
    )
    out = evaluator.tracklet_features(embed_fn, {"scale": jnp.float32(2.0)}, {}, batches, mesh)

    np.testing.assert_array_equal(out["tracklet_ids"], [0, 1, 2])
    np.testing.assert_array_equal(out["pids"], [7, 9, 7])
    np.testing.assert_array_equal(out["camids"], [0, 1, 1])
    assert out["features"].shape == (3, 3) and out["features"].dtype == np.float32
    np.testing.assert_allclose(out["features"][:, 0], [2 * 2.0, 2 * 5.0, 2 * 4.0])


def test_clip_features_keep_arrival_order_without_padding():
    mesh = sharding.make_mesh(jax.devices()[:1])
    batches = _batches(
        [3, 1, 2], tracklet_ids=[2, 0, 1], pids=[5, 6, 7], camids=[0, 1, 0], batch_size=2
    )
    out = evaluator.clip_features(jax.jit(_embed), {"scale": jnp.float32(1.0)}, {}, batches, mesh)
    np.testing.assert_array_equal(out["tracklet_ids"], [2, 0, 1])
    np.testing.assert_allclose(out["features"][:, 1], [3, 1, 2])
    with pytest.raises(ValueError, match="at least one evaluation batch"):
        evaluator.tracklet_features(jax.jit(_embed), {"scale": jnp.float32(1.0)}, {}, [], mesh)

"""STAM building blocks: relation views, grouped BatchNorm, pair batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psta_jax.models import stam as stam_lib
from tests.helpers.tiny import fill_random
from tests.helpers.tolerances import assert_close_to_scale


def test_relation_views_match_explicit_in_and_out_views():
    rng = np.random.default_rng(0)
    h, w, c = 3, 2, 4
    q, k, rq, rk = (rng.standard_normal((1, h * w, c)).astype(np.float32) for _ in range(4))
    views = np.asarray(stam_lib.relation_views(q, k, rq, rk, (h, w)))[0]
    r = q[0] @ k[0].T  # R[p, q]
    r_ref = rq[0] @ rk[0].T  # R'[p, q]
    for p in range(h * w):
        assert_close_to_scale(views[p // w, p % w, : h * w], r[p, :])
        assert_close_to_scale(views[p // w, p % w, h * w :], r_ref[:, p])


def test_grouped_batch_norm_normalises_each_group_on_its_own():
    bn = stam_lib.BatchNorm(3)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 5, 3)) * [1, 2, 3] + 7)
    y = np.asarray(bn(x, group_axes=(0,)))
    for g in range(2):
        # A mean of normalised values is zero up to rounding at their scale (~1).
        np.testing.assert_allclose(y[g].reshape(-1, 3).mean(0), 0.0, atol=1e-5 * np.abs(y).max())
        np.testing.assert_allclose(y[g].reshape(-1, 3).std(0), 1.0, rtol=1e-3)
    pooled = np.asarray(stam_lib.BatchNorm(3)(x))
    assert np.abs(pooled - y).max() > 1e-3  # groups differ from the pooled statistics
    # Two calls in the release (group 0, then group 1): the running mean moved twice.
    group_means = np.asarray(x).reshape(2, -1, 3).mean(1)
    assert_close_to_scale(bn.mean[...], 0.09 * group_means[0] + 0.1 * group_means[1])


def test_eval_mode_stam_treats_pairs_independently():
    """Pairs folded into the batch give what each pair gives alone (running statistics)."""
    stam = nnx.eval_shape(lambda: stam_lib.STAM(16, (2, 2), rngs=nnx.Rngs(0)))
    fill_random(stam)
    stam.eval()
    rng = np.random.default_rng(2)
    first, second = (
        jnp.asarray(rng.standard_normal((2, 3, 2, 2, 16)), jnp.float32) for _ in range(2)
    )
    graphdef, state = nnx.split(stam)
    run = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))
    together = np.asarray(run(state, first, second))
    for pair in range(3):
        alone = np.asarray(run(state, first[:, pair : pair + 1], second[:, pair : pair + 1]))
        assert_close_to_scale(together[:, pair : pair + 1], alone)
    # Each frame is weighted against its partner and the two are summed, so a STAM is
    # symmetric in its pair; a mix-up of partners across pairs would break this.
    swapped = np.asarray(run(state, second, first))
    assert_close_to_scale(swapped, together)
    shuffled = np.asarray(run(state, first, second[:, ::-1]))
    assert np.abs(shuffled - together).max() > 1e-3

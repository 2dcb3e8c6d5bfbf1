"""Training batch plans: the release's identity sampler, erasing rectangles, the P check."""

import numpy as np
import pytest

from psta_jax.input import batch_plans
from psta_jax.runtime.errors import ConfigError
from tests.input.helpers import train_config


def test_identity_sampler_statistics():
    pids = np.array([30, 30, 20, 20, 20, 20, 20, 50, 10, 10, 40, 40, 60, 60, 60])
    index = batch_plans.build_identity_index(pids)
    np.testing.assert_array_equal(index.label_pids, [10, 20, 30, 40, 50, 60])  # sorted relabel
    np.testing.assert_array_equal(index.labels, [2, 2, 1, 1, 1, 1, 1, 4, 0, 0, 3, 3, 5, 5, 5])
    config = train_config(identities_per_batch=3, instances_per_identity=4)
    num_frames = np.full(len(pids), 10)
    steps = index.num_identities // 3
    seen_small = set()
    for epoch in range(6):
        plans = [
            batch_plans.train_batch_plan(index, num_frames, config, 5, epoch * steps + s)
            for s in range(steps)
        ]
        labels = np.concatenate([p["labels"] for p in plans])
        tracklets = np.concatenate([p["tracklets"] for p in plans])
        # every identity exactly once per epoch, K consecutive clips each
        np.testing.assert_array_equal(np.sort(labels[::4]), np.arange(6))
        np.testing.assert_array_equal(labels.reshape(-1, 4), np.repeat(labels[::4, None], 4, 1))
        np.testing.assert_array_equal(index.labels[tracklets], labels)
        for group in tracklets.reshape(-1, 4):
            pool = index.tracklets_by_label[index.labels[group[0]]]
            if len(pool) >= 4:  # without replacement
                assert len(set(group.tolist())) == 4
            else:  # with replacement: only the pool, so repeats are forced
                assert set(group.tolist()) <= set(pool.tolist())
                seen_small |= set(group.tolist())
    assert seen_small == {0, 1, 7, 8, 9, 10, 11, 12, 13, 14}  # every small-pool tracklet drawn


def test_a_batch_needs_p_identities():
    assert batch_plans.steps_per_epoch(625, 8) == 78  # MARS: the remainder is dropped
    with pytest.raises(ConfigError, match="3 identities, fewer than the 4 of one batch"):
        batch_plans.steps_per_epoch(3, 4)
    index = batch_plans.build_identity_index(np.array([1, 2, 3]))
    with pytest.raises(ConfigError, match=r"config\.batch\.identities"):
        batch_plans.train_batch_plan(
            index, np.full(3, 8), train_config(identities_per_batch=4), 0, 0
        )


def test_switching_an_augmentation_off_keeps_the_other_draws():
    index = batch_plans.build_identity_index(np.repeat(np.arange(4), 3))
    num_frames = np.full(12, 20)
    both = batch_plans.train_batch_plan(index, num_frames, train_config(), 7, 3)
    no_flip = batch_plans.train_batch_plan(index, num_frames, train_config(flip=False), 7, 3)
    assert not no_flip["flip"].any()
    for key in ("tracklets", "frames", "labels", "erase"):
        np.testing.assert_array_equal(no_flip[key], both[key])


def test_erasing_box_statistics():
    config = train_config()
    boxes = batch_plans.draw_erasing_boxes(np.random.default_rng(0), 4000, 64, 32, config)
    top, left, h, w = boxes.T
    applied = h > 0
    assert 0.46 < applied.mean() < 0.54
    assert (h[applied] < 64).all() and (w[applied] < 32).all()
    assert (top + h <= 64).all() and (left + w <= 32).all() and (top >= 0).all()
    area = h[applied] * w[applied] / (64 * 32)
    assert area.min() > 0.01 and area.max() < 0.45
    assert 0.2 < np.median(area) < 0.3  # uniform area in [0.02, 0.4] minus rejected tall boxes
    always = batch_plans.draw_erasing_boxes(
        np.random.default_rng(0), 100, 64, 32, train_config(erasing_prob=1.0)
    )
    assert (always[:, 2] > 0).all()

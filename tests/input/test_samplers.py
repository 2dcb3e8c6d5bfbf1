"""Frame samplers against the worked examples of the protocol notes (sections 3.1-3.4, 3.6)."""

import numpy as np
import pytest

from psta_jax.input import samplers

T = 8


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# Section 3.6 table: (L, rrs test, begin_interval, dense clips).
WORKED_EXAMPLES = [
    (1, [0] * 8, [0] * 8, [[0] * 8]),
    (3, [0, 1, 2, 2, 2, 2, 2, 2], [0, 1, 2, 0, 1, 2, 0, 1], [[0, 1, 2, 0, 1, 2, 0, 1]]),
    (7, [0, 1, 2, 3, 4, 5, 6, 6], [0, 1, 2, 3, 4, 5, 6, 0], [[0, 1, 2, 3, 4, 5, 6, 0]]),
    (9, [0, 2, 4, 6, 8, 8, 8, 8], list(range(8)), [list(range(8))]),
    (15, list(range(0, 16, 2)), list(range(0, 16, 2)), [list(range(8))]),
    (29, list(range(0, 29, 4)), list(range(0, 29, 4)), [list(range(k, 24, 3)) for k in range(3)]),
    (65, list(range(0, 64, 9)), list(range(0, 57, 8)), [list(range(k, 64, 8)) for k in range(8)]),
]


@pytest.mark.parametrize("length,rrs,begin,dense", WORKED_EXAMPLES)
def test_worked_examples_table(length, rrs, begin, dense):
    np.testing.assert_array_equal(samplers.rrs_test(length, T), rrs)
    np.testing.assert_array_equal(samplers.begin_interval(length, T), begin)
    np.testing.assert_array_equal(samplers.dense(length, T), dense)


@pytest.mark.parametrize(
    "length,expected",
    [
        (3, [0, 1, 2, 2, 2, 2, 2, 2]),
        (9, [0, 2, 4, 6, 8, 8, 8, 8]),
        (13, [0, 2, 4, 6, 8, 10, 12, 12]),
        (16, [0, 2, 4, 6, 8, 10, 12, 14]),
        (17, [0, 3, 6, 9, 12, 15, 16, 16]),
        (100, [0, 13, 26, 39, 52, 65, 78, 91]),
    ],
)
def test_rrs_test_examples(length, expected):
    np.testing.assert_array_equal(samplers.rrs_test(length, T), expected)


def test_rrs_chunks_are_padded_with_the_last_frame():
    np.testing.assert_array_equal(
        samplers.rrs_chunks(9, T), [[0, 1], [2, 3], [4, 5], [6, 7], [8, 8], [8, 8], [8, 8], [8, 8]]
    )
    np.testing.assert_array_equal(
        samplers.rrs_chunks(17, T)[5:], [[15, 16, 16], [16, 16, 16], [16, 16, 16]]
    )
    np.testing.assert_array_equal(samplers.rrs_chunks(3, T)[:, 0], [0, 1, 2, 2, 2, 2, 2, 2])


@pytest.mark.parametrize("length", [3, 9, 17, 100])
def test_rrs_train_draws_one_slot_per_chunk(length):
    chunks = samplers.rrs_chunks(length, T)
    rng = _rng(1)
    seen = [set() for _ in range(T)]
    for _ in range(300):
        clip = samplers.rrs_train(length, T, rng)
        assert clip.shape == (T,)
        for s in range(T):
            assert clip[s] in chunks[s]
            seen[s].add(int(clip[s]))
    for s in range(T):  # every slot value of every chunk is reachable
        assert seen[s] == set(chunks[s].tolist())


@pytest.mark.parametrize(
    "length,stride,max_index",
    [
        (9, 1, 7),
        (15, 1, 13),
        (16, 2, 15),
        (31, 2, 29),
        (32, 4, 31),
        (63, 4, 61),
        (64, 8, 63),
        (100, 8, 98),
    ],
)
def test_random_interval_bounds_by_simulation(length, stride, max_index):
    rng = _rng(2)
    clips = np.stack([samplers.random_interval(length, T, rng) for _ in range(4000)])
    assert clips.min() == 0
    assert clips.max() == max_index  # the off-by-one: L-1 only when L == 8 s
    # clip[k] = b + k s + o_k with o_k in [0, s): one frame per block of the window.
    relative = clips - np.arange(T) * stride
    assert (relative.max(axis=1) - relative.min(axis=1) < stride).all()


def test_random_interval_nine_frames_always_uses_first_eight():
    rng = _rng(3)
    for _ in range(200):
        np.testing.assert_array_equal(samplers.random_interval(9, T, rng), np.arange(8))


def test_random_interval_short_tracklet_with_replacement_sorted():
    rng = _rng(4)
    clips = np.stack([samplers.random_interval(5, T, rng) for _ in range(500)])
    assert (np.diff(clips, axis=1) >= 0).all()
    assert clips.min() == 0 and clips.max() == 4
    assert (np.diff(clips, axis=1) == 0).any(axis=1).all()  # 8 draws from 5 frames must repeat


def test_random_interval_generalises_to_other_seq_len():
    rng = _rng(5)
    clips = np.stack([samplers.random_interval(16, 4, rng) for _ in range(2000)])
    # T=4, L=16 >= 4*4 -> stride 4, window start in {0..max(0, 16-16-1)} = {0}.
    assert clips.max() == 15
    np.testing.assert_array_equal(clips // 4, np.broadcast_to(np.arange(4), clips.shape))


def test_dense_clip_counts_and_coverage():
    for length in [8, 9, 15, 16, 17, 100, 1607]:
        clips = samplers.dense(length, T)
        expected = max(1, length // T)
        assert clips.shape == (expected, T)
        if length > T:  # every frame of [0, 8 I) exactly once
            np.testing.assert_array_equal(np.sort(clips.ravel()), np.arange(expected * T))
    np.testing.assert_array_equal(samplers.dense(16, T), [range(0, 16, 2), range(1, 16, 2)])


def test_dense_cap_keeps_a_seeded_contiguous_run():
    length = 9000  # 1125 clips
    with pytest.raises(ValueError, match="max_clips"):
        samplers.dense(length, T)
    clips = samplers.dense(length, T, _rng(7))
    assert clips.shape == (200, T)
    starts = clips[:, 0]
    np.testing.assert_array_equal(np.diff(starts), np.ones(199))
    np.testing.assert_array_equal(clips[:, 1] - clips[:, 0], np.full(200, 1125))
    np.testing.assert_array_equal(clips, samplers.dense(length, T, _rng(7)))
    firsts = {int(samplers.dense(length, T, _rng(s))[0, 0]) for s in range(20)}
    assert len(firsts) > 1 and max(firsts) <= 1125 - 200 - 1
    # The release's range {0..I - 200 - 1}: 201 clips always keep clips 0..199, 202 clips
    # start at 0 or 1, never 2.
    for seed in range(20):
        capped = samplers.dense(1608, T, _rng(seed))
        assert capped.shape == (200, T) and capped[0, 0] == 0
    starts = {int(samplers.dense(1616, T, _rng(s))[0, 0]) for s in range(40)}
    assert starts == {0, 1}
    assert samplers.dense(length, T, max_clips=None).shape == (1125, T)


def test_dispatch_and_errors():
    np.testing.assert_array_equal(samplers.eval_clips("rrs", 9, T), [[0, 2, 4, 6, 8, 8, 8, 8]])
    assert samplers.eval_clips("dense", 32, T).shape == (4, T)
    assert samplers.train_sampler("rrs") is samplers.rrs_train
    with pytest.raises(ValueError, match="unknown training frame sampler"):
        samplers.train_sampler("evenly")
    with pytest.raises(ValueError, match="unknown evaluation frame sampler"):
        samplers.eval_clips("all", 9, T)
    with pytest.raises(ValueError, match="at least one frame"):
        samplers.rrs_test(0, T)

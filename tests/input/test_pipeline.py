"""The tf.data pipeline on tiny in-memory splits: planned frames, resume, process slices,
decoding and resizing, every evaluation tracklet once."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from psta_jax import datasets
from psta_jax.input import pipeline, samplers
from psta_jax.input import preprocess as pp
from tests.input import helpers
from tests.input.helpers import LAYOUT, SIZE, T, train_config


@pytest.fixture(scope="module")
def index_store() -> datasets.TrackletStore:
    return helpers.index_store()


def test_load_tracklets(index_store):
    assert index_store.num_tracklets == len(LAYOUT)
    np.testing.assert_array_equal(index_store.num_frames, [n for _, _, n in LAYOUT])
    np.testing.assert_array_equal(index_store.pids, [p for p, _, _ in LAYOUT])
    assert index_store.frames.shape == (sum(n for _, _, n in LAYOUT),)
    single = index_store.tracklet(2)
    assert single.num_tracklets == 1 and int(single.num_frames[0]) == 17
    frames = index_store.decoded_frames(2, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [0, 64, 128]  # frames 0, 8, 16 of 17
    with pytest.raises(IndexError, match="out of range"):
        index_store.tracklet(len(LAYOUT))


def test_load_rejects_decoded_frames():
    decoded = tf.data.Dataset.from_tensors(
        dict(
            frames=tf.zeros([2, *SIZE, 3], tf.uint8),
            pid=tf.constant(1, tf.int64),
            camid=tf.constant(0, tf.int64),
            tracklet_id=tf.constant(0, tf.int64),
        )
    )
    with pytest.raises(ValueError, match="leaves them encoded"):
        datasets.load_tracklets(decoded)
    with pytest.raises(ValueError, match="features"):
        datasets.load_tracklets(tf.data.Dataset.range(3))


def test_epochs_differ_and_steps_per_epoch_drops_the_remainder(index_store):
    data = pipeline.TrainBatches(index_store, train_config(identities_per_batch=2), seed=0)
    assert data.num_identities == 5 and data.steps_per_epoch == 2  # 5 // 2: one id dropped
    orders = {
        tuple(np.concatenate([data.plan(e * 2 + s)["labels"][::2] for s in range(2)]))
        for e in range(8)
    }
    assert len(orders) > 1


def test_train_batches_hold_the_planned_frames(index_store):
    config = train_config(sampler="random_interval")
    data = pipeline.TrainBatches(index_store, config, seed=3)
    batches = data.iterator()
    for step in range(3):
        batch, plan = next(batches), data.plan(step)
        clips = batch["clips"]
        assert clips.shape == (4, T, *SIZE, 3) and clips.dtype == np.uint8
        np.testing.assert_array_equal(clips[:, :, 0, 0, 0], 8 * plan["frames"])
        np.testing.assert_array_equal(clips[:, 0, 0, 0, 1], 8 * plan["tracklets"])
        for key in ("labels", "flip", "erase"):
            np.testing.assert_array_equal(batch[key], plan[key])
        assert batch["labels"].dtype == np.int32 and batch["camids"].dtype == np.int32
        np.testing.assert_array_equal(batch["camids"], index_store.camids[plan["tracklets"]])


def test_resume_and_determinism(index_store):
    config = train_config()
    data = pipeline.TrainBatches(index_store, config, seed=11)
    first = data.iterator()
    batches = [next(first) for _ in range(5)]
    resumed = data.iterator(start_step=3)
    for step in (3, 4):
        got = next(resumed)
        for key in batches[step]:
            np.testing.assert_array_equal(got[key], batches[step][key])
    other = next(pipeline.TrainBatches(index_store, config, seed=12).iterator())
    assert not np.array_equal(other["clips"], batches[0]["clips"])
    with pytest.raises(ValueError, match="non-negative"):
        pipeline.TrainBatches(index_store, config, seed=-1)


@pytest.mark.parametrize("cache_decoded_gb", [0.0, 1.0])  # decoded per step / once
def test_process_slices_concatenate_to_the_global_batch(index_store, cache_decoded_gb):
    # global batch 6 -> 3 processes x 2
    config = train_config(instances_per_identity=3, cache_decoded_gb=cache_decoded_gb)
    single = pipeline.TrainBatches(index_store, config, seed=2).iterator(start_step=4)
    hosts = [
        pipeline.TrainBatches(
            index_store, config, seed=2, process_index=i, process_count=3
        ).iterator(start_step=4)
        for i in range(3)
    ]
    for _ in range(2):
        whole = next(single)
        parts = [next(h) for h in hosts]
        assert parts[0]["clips"].shape[0] == 2
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    with pytest.raises(ValueError, match="split evenly"):
        pipeline.TrainBatches(index_store, config, seed=2, process_count=4)


def _decode_resize(encoded: tf.Tensor, size: tuple[int, int], method: str) -> np.ndarray:
    """One frame through the pipeline's decode and resize (a clip of one frame)."""
    return pipeline.decode_resize_clip(encoded[None], 1, size, method, True).numpy()[0]


@pytest.mark.parametrize("method,pil", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
@pytest.mark.parametrize("size", [(64, 32), (24, 12)])  # upscale 2x, downscale (antialiased)
def test_resize_tracks_pil(method, pil, size):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    source = np.asarray(Image.fromarray(small).resize((16, 32), Image.BILINEAR))  # smooth
    ours = _decode_resize(tf.io.encode_png(source), size, method)
    ref = np.asarray(Image.fromarray(source).resize(size[::-1], pil)).astype(np.float32)
    assert np.abs(ours - ref).mean() < 0.5 and np.abs(ours - ref).max() <= 2
    same = _decode_resize(tf.io.encode_png(source), (32, 16), method)
    np.testing.assert_array_equal(same, source)


def test_clip_of_mixed_frame_sizes_resizes_each_frame_alone():
    """A clip whose frames differ in size takes the resizing branch; each frame comes out as
    it would alone (frames already at the target size untouched)."""
    rng = np.random.default_rng(2)
    frames = [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in ((32, 16, 3), (40, 20, 3), (16, 8, 3))
    ]
    encoded = tf.stack([tf.io.encode_png(f) for f in frames])
    clip = pipeline.decode_resize_clip(encoded, 3, (32, 16), "bicubic", True).numpy()
    assert clip.shape == (3, 32, 16, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[0], frames[0])
    for t in (1, 2):
        alone = _decode_resize(encoded[t], (32, 16), "bicubic")
        np.testing.assert_array_equal(clip[t], alone)
        assert not np.array_equal(alone, np.zeros_like(alone))


@pytest.mark.parametrize("sampler", ["rrs", "begin_interval", "dense"])
def test_eval_sees_every_tracklet_once(index_store, sampler):
    config = pp.EvalPipelineConfig(sampler=sampler, seq_len=T, image_size=SIZE)
    evaluation = pipeline.EvalBatches(index_store, config, batch_size=6)
    for _ in range(2):  # every pass is complete
        batches = list(evaluation)
        assert len(batches) == evaluation.num_batches
        mask = np.concatenate([b["mask"] for b in batches])
        ids = np.concatenate([b["tracklet_ids"] for b in batches])
        clips = np.concatenate([b["clips"] for b in batches]).astype(np.int64)
        assert mask.sum() == evaluation.num_clips and len(mask) % 6 == 0
        assert (ids[~mask] == -1).all() and mask[: evaluation.num_clips].all()
        expected = [samplers.eval_clips(sampler, n, T) for _, _, n in LAYOUT]
        np.testing.assert_array_equal(
            ids[mask], np.repeat(np.arange(len(LAYOUT)), [len(e) for e in expected])
        )
        np.testing.assert_array_equal(clips[mask][:, :, 0, 0, 0], 8 * np.concatenate(expected))
        np.testing.assert_array_equal(clips[mask][:, 0, 0, 0, 1], 8 * ids[mask])
        pids = np.concatenate([b["pids"] for b in batches])
        np.testing.assert_array_equal(pids[mask], index_store.pids[ids[mask]])
    if sampler == "dense":
        assert evaluation.num_clips == sum(max(1, n // T) for _, _, n in LAYOUT)


def test_eval_process_slices_and_dense_cap(index_store):
    config = pp.EvalPipelineConfig(sampler="dense", seq_len=T, image_size=SIZE, dense_max_clips=3)
    single = list(pipeline.EvalBatches(index_store, config, batch_size=4))
    hosts = [
        list(
            pipeline.EvalBatches(
                index_store, config, batch_size=4, process_index=i, process_count=2
            )
        )
        for i in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == len(single)
    for whole, part0, part1 in zip(single, *hosts, strict=True):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([part0[key], part1[key]]), whole[key])
    ids = np.concatenate([b["tracklet_ids"] for b in single])
    counts = np.bincount(ids[ids >= 0], minlength=len(LAYOUT))
    np.testing.assert_array_equal(counts, [min(3, max(1, n // T)) for _, _, n in LAYOUT])


@pytest.mark.parametrize("image_size", [SIZE, (SIZE[0] // 2 + 1, SIZE[1] // 2)])
def test_decoded_frame_cache_gives_the_same_batches(image_size):
    """Frames decoded and resized once (cache_decoded_gb) make the very batches that decoding
    the sampled frames at each step makes, resized or not."""
    rng = np.random.default_rng(0)
    noise = [(pid, cam, rng.integers(0, 256, (n, *SIZE, 3), np.uint8)) for pid, cam, n in LAYOUT]
    store = helpers.store(noise, fmt="jpeg")
    plain = pipeline.TrainBatches(store, train_config(image_size=image_size), seed=5)
    cached = pipeline.TrainBatches(
        store, train_config(image_size=image_size, cache_decoded_gb=1.0), seed=5
    )
    assert cached.caches_decoded and not plain.caches_decoded
    wanted, got = plain.iterator(start_step=2), cached.iterator(start_step=2)
    for _ in range(3):
        want, have = next(wanted), next(got)
        assert sorted(have) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(have[key], want[key])
    tight = train_config(image_size=image_size, cache_decoded_gb=cached.decoded_gb / 2)
    assert not pipeline.TrainBatches(store, tight, seed=5).caches_decoded  # over the budget
    # No AUTOTUNE knob in the cached pipeline, so no autotune thread: deleting the iterator at
    # the end of a run waited up to 60 s for that thread's sleep to end.
    assert cached.dataset().options().autotune.enabled is False

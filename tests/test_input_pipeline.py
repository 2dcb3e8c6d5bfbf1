"""The tf.data pipeline on tiny in-memory datasets with the dataset contract's features."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from psta_jax import augment, sampling
from psta_jax import clip_preparation as cp
from psta_jax import input_pipeline as ip

T = 4
SIZE = (8, 4)  # (H, W) of the stored frames and of the clips: nothing is resized
SIGNATURE = dict(frames=tf.TensorSpec([None], tf.string), pid=tf.TensorSpec([], tf.int64),
                 camid=tf.TensorSpec([], tf.int64), tracklet_id=tf.TensorSpec([], tf.int64),
                 num_frames=tf.TensorSpec([], tf.int64))


def _encode(image: np.ndarray, fmt: str) -> bytes:
    image = tf.constant(image, tf.uint8)
    return (tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image)).numpy()


def _dataset(tracklets, fmt: str = "png") -> tf.data.Dataset:
    """tracklets: list of (pid, camid, frames (L, H, W, 3) uint8)."""
    examples = [
        dict(frames=np.array([_encode(f, fmt) for f in frames], dtype=object), pid=np.int64(pid),
             camid=np.int64(camid), tracklet_id=np.int64(i), num_frames=np.int64(len(frames)))
        for i, (pid, camid, frames) in enumerate(tracklets)
    ]
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=SIGNATURE)


def _index_frames(length: int, tracklet: int) -> np.ndarray:
    """Solid frames whose red channel is 8 * frame index and green 8 * tracklet position."""
    frames = np.zeros((length, *SIZE, 3), np.uint8)
    frames[..., 0] = 8 * np.arange(length)[:, None, None]
    frames[..., 1] = 8 * tracklet
    return frames


# pid, camid, length; pid 50 has 1 tracklet (< K), pid 20 has 5, identities unsorted.
LAYOUT = [(30, 0, 9), (30, 1, 3), (20, 0, 17), (20, 1, 12), (20, 0, 5), (20, 1, 8), (20, 0, 30),
          (50, 1, 1), (10, 0, 7), (10, 1, 25), (40, 0, 4), (40, 1, 6)]


@pytest.fixture(scope="module")
def index_store() -> ip.TrackletStore:
    return ip.load_tracklets(_dataset(
        [(pid, cam, _index_frames(n, i)) for i, (pid, cam, n) in enumerate(LAYOUT)]))


def _config(**overrides) -> cp.TrainPipelineConfig:
    values = dict(identities_per_batch=2, instances_per_identity=2, seq_len=T, image_size=SIZE,
                  num_parallel_calls=2)
    values.update(overrides)
    return cp.TrainPipelineConfig(**values)


def _raw(clips: np.ndarray) -> np.ndarray:
    """Un-normalised clips (config normalize=False) back to 0..255 integers."""
    return np.round(clips * 255).astype(np.int64)


def test_load_tracklets(index_store):
    assert index_store.num_tracklets == len(LAYOUT)
    np.testing.assert_array_equal(index_store.num_frames, [n for _, _, n in LAYOUT])
    np.testing.assert_array_equal(index_store.pids, [p for p, _, _ in LAYOUT])
    assert index_store.frames.shape == (sum(n for _, _, n in LAYOUT),)


def test_load_rejects_decoded_frames():
    decoded = tf.data.Dataset.from_tensors(dict(
        frames=tf.zeros([2, *SIZE, 3], tf.uint8), pid=tf.constant(1, tf.int64),
        camid=tf.constant(0, tf.int64), tracklet_id=tf.constant(0, tf.int64)))
    with pytest.raises(ValueError, match="SkipDecoding"):
        ip.load_tracklets(decoded)
    with pytest.raises(ValueError, match="features"):
        ip.load_tracklets(tf.data.Dataset.range(3))


def test_identity_sampler_statistics():
    pids = np.array([30, 30, 20, 20, 20, 20, 20, 50, 10, 10, 40, 40, 60, 60, 60])
    index = ip.build_identity_index(pids)
    np.testing.assert_array_equal(index.label_pids, [10, 20, 30, 40, 50, 60])  # sorted relabel
    np.testing.assert_array_equal(index.labels, [2, 2, 1, 1, 1, 1, 1, 4, 0, 0, 3, 3, 5, 5, 5])
    config = _config(identities_per_batch=3, instances_per_identity=4)
    num_frames = np.full(len(pids), 10)
    steps = index.num_identities // 3
    seen_small = set()
    for epoch in range(6):
        plans = [ip.train_batch_plan(index, num_frames, config, 5, epoch * steps + s)
                 for s in range(steps)]
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


def test_epochs_differ_and_steps_per_epoch_drops_the_remainder(index_store):
    it = ip.create_train_iterator(index_store, _config(identities_per_batch=2), seed=0)
    assert it.num_identities == 5 and it.steps_per_epoch == 2  # 5 // 2: one id dropped
    orders = {tuple(np.concatenate([it.plan(e * 2 + s)["labels"][::2] for s in range(2)]))
              for e in range(8)}
    assert len(orders) > 1


def test_train_batches_hold_the_planned_frames(index_store):
    config = _config(flip=False, erasing=False, normalize=False, sampler="random_interval")
    it = ip.create_train_iterator(index_store, config, seed=3)
    for step in range(3):
        batch, plan = next(it), it.plan(step)
        assert batch["clips"].shape == (4, T, *SIZE, 3) and batch["clips"].dtype == np.float32
        raw = _raw(batch["clips"])
        np.testing.assert_array_equal(raw[:, :, 0, 0, 0], 8 * plan["frames"])
        np.testing.assert_array_equal(raw[:, 0, 0, 0, 1], 8 * plan["tracklets"])
        np.testing.assert_array_equal(batch["labels"], plan["labels"])
        assert batch["labels"].dtype == np.int32 and batch["camids"].dtype == np.int32
        np.testing.assert_array_equal(batch["camids"], index_store.camids[plan["tracklets"]])


def test_resume_and_determinism(index_store):
    config = _config()
    first = ip.create_train_iterator(index_store, config, seed=11)
    batches = [next(first) for _ in range(5)]
    resumed = ip.create_train_iterator(index_store, config, seed=11, start_step=3)
    for step in (3, 4):
        got = next(resumed)
        for key in batches[step]:
            np.testing.assert_array_equal(got[key], batches[step][key])
    assert resumed.step == 5
    other = next(ip.create_train_iterator(index_store, config, seed=12))
    assert not np.array_equal(other["clips"], batches[0]["clips"])


def test_process_slices_concatenate_to_the_global_batch(index_store):
    config = _config(instances_per_identity=3)  # global batch 6 -> 3 processes x 2
    single = ip.create_train_iterator(index_store, config, seed=2, start_step=4)
    hosts = [ip.create_train_iterator(index_store, config, seed=2, start_step=4,
                                      process_index=i, process_count=3) for i in range(3)]
    for _ in range(2):
        whole = next(single)
        parts = [next(h) for h in hosts]
        assert parts[0]["clips"].shape[0] == 2
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    with pytest.raises(ValueError, match="split evenly"):
        ip.create_train_iterator(index_store, config, seed=2, process_count=4)


def test_flip_and_erasing_are_the_same_for_every_frame_of_a_clip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)  # one random frame repeated
    store = ip.load_tracklets(_dataset(
        [(pid, 0, np.repeat(image[None], 5, 0)) for pid in range(4) for _ in range(2)], "jpeg"))
    base = dict(image_size=(16, 8), identities_per_batch=4, erasing_prob=1.0, flip_prob=1.0)
    batch = next(ip.create_train_iterator(store, _config(**base), seed=0))
    clips = batch["clips"]
    np.testing.assert_array_equal(clips, np.broadcast_to(clips[:, :1], clips.shape))
    erased = np.all(clips == np.float32(cp.IMAGENET_MEAN), axis=-1)  # (B, T, H, W)
    assert erased[:, 0].any(axis=(1, 2)).all()
    plan = ip.create_train_iterator(store, _config(**base), seed=0).plan(0)
    for clip, (top, left, h, w) in zip(erased[:, 0], plan["erase"], strict=True):
        expected = np.zeros_like(clip)
        expected[top:top + h, left:left + w] = True
        np.testing.assert_array_equal(clip, expected)
    # Flip: same seed, erasing off -> the flipped clips mirror the unflipped ones.
    flipped = next(ip.create_train_iterator(store, _config(**base, erasing=False), seed=0))
    plain = next(ip.create_train_iterator(store, _config(**base, erasing=False, flip=False),
                                          seed=0))
    np.testing.assert_array_equal(flipped["clips"], plain["clips"][:, :, :, ::-1])
    assert not np.array_equal(flipped["clips"], plain["clips"])


def test_normalisation_values():
    colour = np.array([255, 0, 128], np.uint8)
    store = ip.load_tracklets(_dataset(
        [(p, 0, np.broadcast_to(colour, (2, *SIZE, 3))) for p in range(2)]))
    config = _config(flip=False, erasing=False, instances_per_identity=1)
    clips = next(ip.create_train_iterator(store, config, seed=0))["clips"]
    expected = (colour / 255.0 - np.array(cp.IMAGENET_MEAN)) / np.array(cp.IMAGENET_STD)
    np.testing.assert_allclose(clips, np.broadcast_to(expected, clips.shape), rtol=1e-6)
    raw = next(ip.create_train_iterator(store, _config(
        flip=False, erasing=False, normalize=False, instances_per_identity=1), seed=0))["clips"]
    np.testing.assert_allclose(raw, np.broadcast_to(colour / 255.0, raw.shape), rtol=1e-6)
    half = next(ip.create_train_iterator(store, _config(dtype="bfloat16", instances_per_identity=1),
                                         seed=0))["clips"]
    assert half.dtype.name == "bfloat16" and half.shape == clips.shape


def test_erasing_box_statistics():
    config = _config()
    boxes = augment.draw_erasing_boxes(np.random.default_rng(0), 4000, 64, 32, config)
    top, left, h, w = boxes.T
    applied = h > 0
    assert 0.46 < applied.mean() < 0.54
    assert (h[applied] < 64).all() and (w[applied] < 32).all()
    assert (top + h <= 64).all() and (left + w <= 32).all() and (top >= 0).all()
    area = h[applied] * w[applied] / (64 * 32)
    assert area.min() > 0.01 and area.max() < 0.45
    assert 0.2 < np.median(area) < 0.3  # uniform area in [0.02, 0.4] minus rejected tall boxes
    always = augment.draw_erasing_boxes(np.random.default_rng(0), 100, 64, 32,
                                   _config(erasing_prob=1.0))
    assert (always[:, 2] > 0).all()


def _decode_resize(encoded: tf.Tensor, size: tuple[int, int], method: str) -> np.ndarray:
    """One frame through the pipeline's decode and resize (a clip of one frame)."""
    return augment.decode_resize_clip(encoded[None], 1, size, method, True).numpy()[0]


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
    frames = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in ((32, 16, 3), (40, 20, 3), (16, 8, 3))]
    encoded = tf.stack([tf.io.encode_png(f) for f in frames])
    clip = augment.decode_resize_clip(encoded, 3, (32, 16), "bicubic", True).numpy()
    assert clip.shape == (3, 32, 16, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[0], frames[0])
    for t in (1, 2):
        alone = _decode_resize(encoded[t], (32, 16), "bicubic")
        np.testing.assert_array_equal(clip[t], alone)
        assert not np.array_equal(alone, np.zeros_like(alone))


@pytest.mark.parametrize("sampler", ["rrs", "begin_interval", "dense"])
def test_eval_sees_every_tracklet_once(index_store, sampler):
    config = cp.EvalPipelineConfig(sampler=sampler, seq_len=T, image_size=SIZE, normalize=False)
    evaluation = ip.create_eval_iterator(index_store, config, batch_size=6)
    for _ in range(2):  # every pass is complete
        batches = list(evaluation)
        assert len(batches) == evaluation.num_batches
        mask = np.concatenate([b["mask"] for b in batches])
        ids = np.concatenate([b["tracklet_ids"] for b in batches])
        clips = _raw(np.concatenate([b["clips"] for b in batches]))
        assert mask.sum() == evaluation.num_clips and len(mask) % 6 == 0
        assert (ids[~mask] == -1).all() and mask[: evaluation.num_clips].all()
        expected = [sampling.eval_clips(sampler, n, T) for _, _, n in LAYOUT]
        np.testing.assert_array_equal(ids[mask], np.repeat(np.arange(len(LAYOUT)),
                                                           [len(e) for e in expected]))
        np.testing.assert_array_equal(clips[mask][:, :, 0, 0, 0], 8 * np.concatenate(expected))
        np.testing.assert_array_equal(clips[mask][:, 0, 0, 0, 1], 8 * ids[mask])
        pids = np.concatenate([b["pids"] for b in batches])
        np.testing.assert_array_equal(pids[mask], index_store.pids[ids[mask]])
    if sampler == "dense":
        assert evaluation.num_clips == sum(max(1, n // T) for _, _, n in LAYOUT)


def test_eval_process_slices_and_dense_cap(index_store):
    config = cp.EvalPipelineConfig(sampler="dense", seq_len=T, image_size=SIZE, dense_max_clips=3)
    single = list(ip.create_eval_iterator(index_store, config, batch_size=4))
    hosts = [list(ip.create_eval_iterator(index_store, config, batch_size=4, process_index=i,
                                          process_count=2)) for i in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == len(single)
    for whole, part0, part1 in zip(single, *hosts, strict=True):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([part0[key], part1[key]]), whole[key])
    ids = np.concatenate([b["tracklet_ids"] for b in single])
    counts = np.bincount(ids[ids >= 0], minlength=len(LAYOUT))
    np.testing.assert_array_equal(counts, [min(3, max(1, n // T)) for _, _, n in LAYOUT])


def test_average_clip_features():
    features = np.arange(14, dtype=np.float32).reshape(7, 2)
    ids = np.array([2, 0, 0, 5, 2, 2, -1])
    mask = np.array([True] * 6 + [False])
    got_ids, got = ip.average_clip_features(features, ids, mask)
    np.testing.assert_array_equal(got_ids, [0, 2, 5])
    np.testing.assert_allclose(got, [features[1:3].mean(0), features[[0, 4, 5]].mean(0),
                                     features[3]])
    unmasked_ids, unmasked = ip.average_clip_features(features, ids)  # padding id -1 dropped
    np.testing.assert_array_equal(unmasked_ids, got_ids)
    np.testing.assert_allclose(unmasked, got)
    with pytest.raises(ValueError, match="expected features"):
        ip.average_clip_features(features, ids[:3])


def test_config_from_mapping_rejects_unknown_fields():
    config = cp.TrainPipelineConfig.from_mapping({"image_size": [32, 16], "sampler": "rrs"})
    assert config.image_size == (32, 16) and config.global_batch_size == 32
    with pytest.raises(ValueError, match="unknown fields"):
        cp.TrainPipelineConfig.from_mapping({"identities": 8})
    with pytest.raises(ValueError, match="unknown training frame sampler"):
        cp.TrainPipelineConfig(sampler="dense")
    with pytest.raises(ValueError, match="sampler must be one of"):
        cp.EvalPipelineConfig(sampler="random_interval")
    with pytest.raises(TypeError, match="not a dtype: 'float33'"):
        cp.EvalPipelineConfig(dtype="float33")
    # clip_preparation names tf.data's AUTOTUNE without importing TensorFlow.
    assert cp.ImageConfig().num_parallel_calls == tf.data.AUTOTUNE


def test_uint8_clips_finished_on_device_match_the_host_path(index_store):
    base = dict(erasing_prob=1.0, flip_prob=0.5, image_size=(16, 8))  # upscaled: resize runs
    host = next(ip.create_train_iterator(index_store, _config(**base), seed=4))
    config = _config(**base, uint8_clips=True)
    deferred = next(ip.create_train_iterator(index_store, config, seed=4))
    assert deferred["clips"].dtype == np.uint8 and deferred["erase"].shape == (4, 4)
    assert 0 < deferred["flip"].sum() < 4, "the seed should flip some clips and not others"
    finished = np.asarray(cp.finish_clips(deferred["clips"], deferred["erase"],
                                               deferred["flip"], config=config))
    np.testing.assert_allclose(finished, host["clips"], atol=1e-6)
    np.testing.assert_array_equal(deferred["labels"], host["labels"])
    eval_config = cp.EvalPipelineConfig(seq_len=T, image_size=(16, 8))
    host_eval = next(iter(ip.create_eval_iterator(index_store, eval_config, batch_size=4)))
    deferred_config = cp.EvalPipelineConfig(seq_len=T, image_size=(16, 8), uint8_clips=True)
    deferred_eval = next(iter(ip.create_eval_iterator(index_store, deferred_config,
                                                      batch_size=4)))
    np.testing.assert_allclose(np.asarray(cp.finish_clips(deferred_eval["clips"],
                                                          config=deferred_config)),
                               host_eval["clips"], atol=1e-6)


def test_device_side_modules_import_no_tensorflow():
    """The jitted steps and what they take from the pipeline (clip_preparation) import no
    TensorFlow, so accelerator hosts can compile and benchmark steps without tf.data."""
    code = ("import sys\n"
            "from psta_jax import clip_preparation, config_base, optimizer, sharding, steps, "
            "testing\n"
            "from psta_jax.models import build_model\n"
            "config_base.base_config()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', "
            "'tensorflow_datasets'}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

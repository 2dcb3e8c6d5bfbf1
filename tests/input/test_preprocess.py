"""The pipeline configs and the device-side finishing of uint8 clips (flip, normalise, erase)."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from psta_jax.input import pipeline
from psta_jax.input import preprocess as pp
from psta_jax.runtime.errors import ConfigError
from tests.input import helpers
from tests.input.helpers import SIZE, T, train_config


def test_normalisation_values():
    colour = np.array([255, 0, 128], np.uint8)
    clips = np.broadcast_to(colour, (2, T, *SIZE, 3))
    out = np.asarray(pp.finish_clips(clips, config=train_config()))
    expected = (colour / 255.0 - np.array(pp.IMAGENET_MEAN)) / np.array(pp.IMAGENET_STD)
    # One float32 multiply-add per value: a few ulp of values up to ~2.6.
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6, atol=1e-6)
    raw = np.asarray(pp.finish_clips(clips, config=train_config(normalize=False)))
    np.testing.assert_allclose(raw, np.broadcast_to(colour / 255.0, raw.shape), rtol=1e-6)
    half = pp.finish_clips(clips, config=train_config(dtype="bfloat16"))
    assert half.dtype.name == "bfloat16" and half.shape == out.shape


def test_flip_and_erasing_are_the_same_for_every_frame_of_a_clip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)  # one random frame repeated
    store = helpers.store(
        [(pid, 0, np.repeat(image[None], 5, 0)) for pid in range(4) for _ in range(2)], "jpeg"
    )
    config = train_config(
        image_size=(16, 8), identities_per_batch=4, erasing_prob=1.0, flip_prob=1.0
    )
    data = pipeline.TrainBatches(store, config, seed=0)
    batch = next(data.iterator())
    clips = helpers.finished(batch, config)
    np.testing.assert_array_equal(clips, np.broadcast_to(clips[:, :1], clips.shape))
    erased = np.all(clips == np.float32(pp.IMAGENET_MEAN), axis=-1)  # (B, T, H, W)
    assert erased[:, 0].any(axis=(1, 2)).all()
    for clip, (top, left, h, w) in zip(erased[:, 0], data.plan(0)["erase"], strict=True):
        expected = np.zeros_like(clip)
        expected[top : top + h, left : left + w] = True
        np.testing.assert_array_equal(clip, expected)
    assert batch["flip"].all()
    plain = dict(batch, flip=np.zeros_like(batch["flip"]), erase=np.zeros_like(batch["erase"]))
    flipped = dict(plain, flip=batch["flip"])
    np.testing.assert_array_equal(
        helpers.finished(flipped, config), helpers.finished(plain, config)[:, :, :, ::-1]
    )
    assert not np.array_equal(helpers.finished(flipped, config), helpers.finished(plain, config))


def test_config_checks_name_the_config_field():
    assert train_config(image_size=(32, 16)).global_batch_size == 4
    with pytest.raises(ConfigError, match=r"unknown training frame sampler 'dense'.*train_sampler"):
        pp.TrainPipelineConfig(sampler="dense")
    with pytest.raises(ConfigError, match=r"unknown evaluation frame sampler.*test_sampler"):
        pp.EvalPipelineConfig(sampler="random_interval")
    with pytest.raises(ConfigError, match=r"not a dtype: 'float33' \(config\.model\.dtype"):
        pp.EvalPipelineConfig(dtype="float33")
    with pytest.raises(ConfigError, match=r"config\.batch\.identities \(P\)"):
        pp.TrainPipelineConfig(identities_per_batch=0)
    with pytest.raises(ConfigError, match="erasing_prob"):
        pp.TrainPipelineConfig(erasing_prob=1.5)
    # preprocess names tf.data's AUTOTUNE without importing TensorFlow.
    assert pp.ImageConfig().num_parallel_calls == tf.data.AUTOTUNE


def test_device_side_modules_import_no_tensorflow():
    """The jitted steps and what they take from the input (preprocess) import no TensorFlow,
    so accelerator hosts can compile and benchmark steps without tf.data."""
    code = (
        "import sys\n"
        "from psta_jax import config_base\n"
        "from psta_jax.input import preprocess\n"
        "from psta_jax.models import build_model, random_weights\n"
        "from psta_jax.runtime import sharding\n"
        "from psta_jax.training import losses, optimizer, steps\n"
        "config = config_base.base_config()\n"
        "config_base.train_input(config), config_base.eval_input(config)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', "
        "'tensorflow_datasets'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

"""Eval-mode parity with the authors' PyTorch release on its reference vectors (full size).

The full 256x128 ResNet-50 PSTA is built once (module fixture) with the stand-in release
weights (tests/reference_data.py, seed 1234) and compared with `parity_dev_seed1234.npz`
(tests/reference/README.md). Errors are relative to the largest absolute value of each
reference tensor. Eval mode (running statistics) is well conditioned and must agree to
EVAL_RTOL. Training (train-mode outputs, losses, gradients, BatchNorm statistics, the
optimiser step) is checked on person-like clips in test_train_parity.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psta_jax.interop import load_official_psta
from tests import reference_data

EVAL_RTOL = 1e-4

# The full-size model tests share one xdist worker, so at most one runs at a time.
pytestmark = [pytest.mark.xdist_group("full_model"), pytest.mark.full_model]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def reference():
    return reference_data.load("parity_dev_seed1234")


@pytest.fixture(scope="module")
def model(reference):
    return load_official_psta(reference_data.release_state_dict(int(reference["seed"])))


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, -3)


@pytest.fixture(scope="module")
def eval_outputs(model, reference):
    clips = reference_data.noise_clips(int(reference["eval_inputs_seed"]), 2)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, clips):
        m = nnx.merge(graphdef, state)
        batch, seq_len = clips.shape[:2]
        base = m.base(clips.reshape(batch * seq_len, *clips.shape[2:]))
        maps = m.down_channel(base).reshape(batch, seq_len, *base.shape[1:3], -1)
        stages = m.stage_maps(maps)
        stage_features = [jnp.mean(s, axis=(1, 2, 3)) for s in stages]
        cumulative = [sum(stage_features[: k + 1]) / (k + 1) for k in range(len(stages))]
        bn = [neck(x) for neck, x in zip(m.bottleneck, cumulative, strict=True)]
        logits = [head(f) for head, f in zip(m.classifier, bn, strict=True)]
        return dict(
            base=base[0],
            maps=maps[0, 0],
            stages=stages,
            stage=stage_features,
            cumulative=cumulative,
            bn=bn,
            logits=logits,
            embedding=m(clips),
        )

    out = jax.tree.map(np.asarray, forward(state, jnp.asarray(clips)))
    pairs = {
        "eval_backbone_clip0_frame0": _nchw(out["base"]),
        "eval_down_channel_clip0_frame0": _nchw(out["maps"]),
        "eval_layer1_clip0": _nchw(out["stages"][0][0]),
        "eval_layer2_clip0": _nchw(out["stages"][1][0]),
        "eval_layer3": _nchw(out["stages"][2]),
        "eval_embedding": out["embedding"],
    }
    for k in range(3):
        pairs[f"eval_stage_feature_{k}"] = out["stage"][k]
        pairs[f"eval_cumulative_feature_{k}"] = out["cumulative"][k]
        pairs[f"eval_bn_feature_{k}"] = out["bn"][k]
        pairs[f"eval_logits_{k}"] = out["logits"][k]
    return pairs


EVAL_KEYS = [
    "eval_backbone_clip0_frame0",
    "eval_down_channel_clip0_frame0",
    "eval_layer1_clip0",
    "eval_layer2_clip0",
    "eval_layer3",
    "eval_embedding",
] + [
    f"eval_{name}_{k}"
    for k in range(3)
    for name in ("stage_feature", "cumulative_feature", "bn_feature", "logits")
]


def test_reference_covers_every_checked_tensor(reference):
    expected = set(EVAL_KEYS)
    assert expected <= set(reference), sorted(expected - set(reference))


@pytest.mark.parametrize("key", EVAL_KEYS)
def test_eval_mode_matches_release(key, eval_outputs, reference):
    error = relative_error(eval_outputs[key], reference[key])
    print(f"{key}: relative error {error:.2e}")
    assert error < EVAL_RTOL


def test_eval_embedding_is_last_bn_feature(eval_outputs):
    # Same math, compiled in two places: equal up to float32 rounding.
    assert relative_error(eval_outputs["eval_embedding"], eval_outputs["eval_bn_feature_2"]) < 1e-5

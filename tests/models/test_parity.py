"""Parity with the authors' PyTorch release on its reference vectors (full size).

The one test module that runs the full 256x128 ResNet-50 PSTA: the model is built once
(module fixture) with the weights of `shared/reference/weights_recipe.py` and compared
with `parity_dev_seed1234.npz` (see shared/reference/README.md). Errors are relative to
the largest absolute value of each reference tensor.

Eval mode (running statistics) is well conditioned and must agree to EVAL_RTOL.
Train mode is not: the reference inputs are i.i.d. noise, so the four clips are nearly
identical and every batch-statistics BatchNorm (most of all the BN necks over B=4 clips)
divides tiny differences by tiny standard deviations. Float32 rounding is amplified to
~1e-4 at down_channel and ~1e-3 at the BN features: our own float32 and float64 forward
passes differ by up to 3.7e-3 there, and the float32 reference is as far from our
float64 result. TRAIN_RTOL sits at that noise floor (measured worst: 2.9e-3); the other
BatchNorm groupings we tried (statistics per pair, per direction, or pooled differently)
miss by 8e-3 to 1.0. The losses average most of this noise out and meet LOSS_RTOL
(measured: CE 2.0e-5, triplet 7.7e-5, total 2.4e-5), though the triplet term is close
to its floor: with one-pass BatchNorm variances in the backbone it moves to 1.4e-4.
"""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psta_jax.interop import load_official_psta
from psta_jax.losses import psta_loss

EVAL_RTOL = 1e-4
TRAIN_RTOL = 5e-3
LOSS_RTOL = 1e-4


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def reference(shared_dir):
    return dict(np.load(shared_dir / "reference" / "parity_dev_seed1234.npz"))


@pytest.fixture(scope="module")
def recipe(shared_dir):
    spec = importlib.util.spec_from_file_location(
        "weights_recipe", shared_dir / "reference" / "weights_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release_weights(shared_dir, recipe, reference):
    layout = json.loads((shared_dir / "reference" / "psta_official_layout.json").read_text())
    entries = [(e["name"], e["shape"], e["dtype"]) for e in layout["entries"]]
    return recipe.make_state_dict(entries, int(reference["seed"]))


@pytest.fixture(scope="module")
def model(release_weights):
    return load_official_psta(release_weights)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, -3)


@pytest.fixture(scope="module")
def eval_outputs(model, recipe, reference):
    clips = recipe.make_inputs(int(reference["eval_inputs_seed"]), 2).transpose(0, 1, 3, 4, 2)
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
        return dict(base=base[0], maps=maps[0, 0], stages=stages, stage=stage_features,
                    cumulative=cumulative, bn=bn, logits=logits, embedding=m(clips))

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


@pytest.fixture(scope="module")
def train_outputs(model, recipe, reference):
    """Train mode from the freshly loaded weights (the eval pass changes no state)."""
    clips = recipe.make_inputs(int(reference["train_inputs_seed"]), 4).transpose(0, 1, 3, 4, 2)
    labels = jnp.asarray(reference["train_labels"], jnp.int32)
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, clips):
        out = nnx.merge(graphdef, state)(clips)
        total, parts = psta_loss(out.logits, out.features, labels, num_classes=625)
        return out, total, parts

    out, total, parts = jax.tree.map(np.asarray, forward(state, jnp.asarray(clips)))
    model.eval()
    pairs = {"train_loss_total": total, "train_loss_ce": parts["ce"],
             "train_loss_triplet": parts["triplet"]}
    for k in range(3):
        pairs[f"train_logits_{k}"] = out.logits[k]
        pairs[f"train_bn_feature_{k}"] = out.features[k]
    return pairs


EVAL_KEYS = (
    ["eval_backbone_clip0_frame0", "eval_down_channel_clip0_frame0", "eval_layer1_clip0",
     "eval_layer2_clip0", "eval_layer3", "eval_embedding"]
    + [f"eval_{name}_{k}" for k in range(3)
       for name in ("stage_feature", "cumulative_feature", "bn_feature", "logits")]
)
TRAIN_KEYS = [f"train_{name}_{k}" for k in range(3) for name in ("logits", "bn_feature")]
LOSS_KEYS = ["train_loss_ce", "train_loss_triplet", "train_loss_total"]


def test_reference_covers_every_checked_tensor(reference):
    expected = set(EVAL_KEYS) | set(TRAIN_KEYS) | set(LOSS_KEYS)
    assert expected <= set(reference), sorted(expected - set(reference))


@pytest.mark.parametrize("key", EVAL_KEYS)
def test_eval_mode_matches_release(key, eval_outputs, reference):
    error = relative_error(eval_outputs[key], reference[key])
    print(f"{key}: relative error {error:.2e}")
    assert error < EVAL_RTOL


def test_eval_embedding_is_last_bn_feature(eval_outputs):
    # Same math, compiled in two places: equal up to float32 rounding.
    assert relative_error(eval_outputs["eval_embedding"],
                          eval_outputs["eval_bn_feature_2"]) < 1e-5


@pytest.mark.parametrize("key", TRAIN_KEYS)
def test_train_mode_matches_release(key, train_outputs, reference):
    error = relative_error(train_outputs[key], reference[key])
    print(f"{key}: relative error {error:.2e}")
    assert error < TRAIN_RTOL


@pytest.mark.parametrize("key", LOSS_KEYS)
def test_train_loss_matches_release(key, train_outputs, reference):
    error = relative_error(np.asarray(train_outputs[key]), np.asarray(reference[key]))
    print(f"{key}: {float(train_outputs[key]):.6f} vs {float(reference[key]):.6f} "
          f"relative error {error:.2e}")
    assert error < LOSS_RTOL

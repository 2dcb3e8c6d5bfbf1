"""The PyTorch release network (psta_jax.interop.torch_model) is the authors' release.

Checked against what the release itself computed (tests/reference/README.md):
- its state_dict is the release's (names, order, shapes, dtypes, frozen entries), so
  release weights load with strict=True;
- eval mode, stand-in weights of seed 1234 on 2 noise clips (`parity_dev_seed1234.npz`):
  backbone and down_channel maps, every stage's maps, stage / cumulative / BN features,
  logits and the embedding within EVAL_RTOL (the release computed them in float32);
- train mode, weights of seed 2024 on 8 person-like clips (`train_step_dev_seed2024.npz`,
  float32): losses, logits and BN features, and all 204 BatchNorm running statistics after
  the forward pass (they pin down the release's BatchNorm call order), within the float32
  tolerances of tests/models/test_train_parity.py.
Errors are relative to the largest absolute value of each reference tensor. Cheap checks
on a narrow model: the loss against psta_jax.training.losses, gradients and the frozen BN-neck bias.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference_data

torch = pytest.importorskip("torch")

from psta_jax.interop import torch_model  # noqa: E402 (needs torch)

EVAL_RTOL = 1e-5
F32_RTOL = 1e-3  # tests/models/test_train_parity.py's float32 tolerances
F32_LOSS_RTOL = 1e-4

# The full-size model tests share one xdist worker, so at most one runs at a time.
pytestmark = [pytest.mark.xdist_group("full_model"), pytest.mark.full_model]

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
TRAIN_KEYS = [f"train_{name}_{k}" for k in range(3) for name in ("logits", "bn_feature")]
LOSS_KEYS = ["train_loss_ce", "train_loss_triplet", "train_loss_total"]


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def release_weights(seed: int) -> dict:
    return {
        name: torch.from_numpy(value)
        for name, value in reference_data.release_state_dict(seed).items()
    }


def torch_clips(clips: np.ndarray):
    """Our (B, T, H, W, 3) clips in the release's layout (B, T, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 1, 4, 2, 3)))


def loaded_model(seed: int):
    model = torch_model.release_model(num_classes=625)
    model.load_state_dict(release_weights(seed), strict=True)
    return model


# ----------------------------------------------------------------------------- layout


def test_state_dict_is_the_release_layout():
    model = torch_model.release_model(num_classes=625)
    layout = reference_data.release_layout_file()
    state = model.state_dict()
    assert [
        (name, tuple(value.shape), str(value.dtype).removeprefix("torch."))
        for name, value in state.items()
    ] == [(e["name"], tuple(e["shape"]), e["dtype"]) for e in layout["entries"]]
    parameters = dict(model.named_parameters())
    for entry in layout["entries"]:
        is_param = entry["kind"] == "param"
        assert (entry["name"] in parameters) == is_param, entry["name"]
        if is_param:
            assert parameters[entry["name"]].requires_grad == entry["trainable"], entry["name"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == layout["total_trainable_params"]


# ----------------------------------------------------------------------------- eval mode


@pytest.fixture(scope="module")
def eval_reference():
    return reference_data.load("parity_dev_seed1234")


@pytest.fixture(scope="module")
def eval_outputs(eval_reference):
    model = loaded_model(int(eval_reference["seed"])).eval()
    clips = torch_clips(reference_data.noise_clips(int(eval_reference["eval_inputs_seed"]), 2))
    with torch.no_grad():
        base, maps = model.frame_maps(clips)
        stages = model.stage_maps(maps)
        stage_features, cumulative = model.clip_features(stages)
        bn = [neck(x) for neck, x in zip(model.bottleneck, cumulative, strict=True)]
        logits = [head(f) for head, f in zip(model.classifier, bn, strict=True)]
        embedding = model(clips)  # the eval forward itself
    outputs = {
        "eval_backbone_clip0_frame0": base[0],
        "eval_down_channel_clip0_frame0": maps[0, 0],
        "eval_layer1_clip0": stages[0][0],
        "eval_layer2_clip0": stages[1][0],
        "eval_layer3": stages[2],
        "eval_embedding": embedding,
    }
    for k in range(3):
        outputs[f"eval_stage_feature_{k}"] = stage_features[k]
        outputs[f"eval_cumulative_feature_{k}"] = cumulative[k]
        outputs[f"eval_bn_feature_{k}"] = bn[k]
        outputs[f"eval_logits_{k}"] = logits[k]
    return {key: value.numpy() for key, value in outputs.items()}


@pytest.mark.parametrize("key", EVAL_KEYS)
def test_eval_mode_matches_release(key, eval_outputs, eval_reference):
    error = relative_error(eval_outputs[key], eval_reference[key])
    print(
        f"{key}: max abs {np.max(np.abs(eval_outputs[key] - eval_reference[key])):.1e}, "
        f"relative {error:.1e}"
    )
    assert error < EVAL_RTOL


# ----------------------------------------------------------------------------- train mode


@pytest.fixture(scope="module")
def train_reference():
    return reference_data.load("train_step_dev_seed2024")


@pytest.fixture(scope="module")
def train_outputs(train_reference):
    """Train-mode forward pass and loss (no gradients) from freshly loaded weights, and the
    state_dict after it (running statistics moved by this one pass)."""
    ref = train_reference
    model = loaded_model(int(ref["weight_seed"])).train()
    clips = torch_clips(
        reference_data.person_clips(
            int(ref["input_seed"]), int(ref["identities"]), int(ref["instances"])
        )
    )
    labels = torch.from_numpy(ref["train_labels"]).long()
    with torch.no_grad():
        out = model(clips)
        total, parts = torch_model.release_loss(out, labels)
    outputs = {
        "train_loss_total": total,
        "train_loss_ce": parts["ce"],
        "train_loss_triplet": parts["triplet"],
    }
    for k in range(3):
        outputs[f"train_logits_{k}"] = out.logits[k]
        outputs[f"train_bn_feature_{k}"] = out.features[k]
    return (
        {key: value.numpy() for key, value in outputs.items()},
        {name: value.numpy() for name, value in model.state_dict().items()},
    )


@pytest.mark.parametrize(
    "key,tolerance",
    [(key, F32_RTOL) for key in TRAIN_KEYS] + [(key, F32_LOSS_RTOL) for key in LOSS_KEYS],
)
def test_train_outputs_and_losses_match_release(key, tolerance, train_outputs, train_reference):
    outputs, _ = train_outputs
    error = relative_error(outputs[key], train_reference[key])
    print(
        f"{key}: max abs {np.max(np.abs(outputs[key] - train_reference[key])):.1e}, "
        f"relative {error:.1e}"
    )
    assert error < tolerance


def test_every_running_statistic_matches_release(train_outputs, train_reference):
    _, state = train_outputs
    ref = train_reference
    errors = {
        str(name): relative_error(
            state[str(name)].reshape(-1)[ref[f"bn_index/{name}"]], ref[f"bn_value/{name}"]
        )
        for name in ref["bn_names"]
    }
    assert len(errors) == 204
    worst = max(errors, key=errors.get)
    print(f"running statistics: worst {worst} {errors[worst]:.1e}")
    failing = {name: e for name, e in errors.items() if e >= F32_RTOL}
    assert not failing, failing
    # One forward pass: TRA's pairwise layers are called once per pair and direction.
    assert int(state["layer1.TRAG.te_para.1.num_batches_tracked"]) == 8
    assert int(state["layer3.TRAG.te_para.1.num_batches_tracked"]) == 2
    assert int(state["layer1.SRAG.spa_para.4.num_batches_tracked"]) == 1


# ----------------------------------------------------------------------------- narrow model


def test_loss_equals_psta_jax_losses():
    import jax.numpy as jnp  # noqa: PLC0415

    from psta_jax.training.losses import psta_loss  # noqa: PLC0415

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 2)
    logits = [rng.normal(size=(6, 10)).astype(np.float32) for _ in range(3)]
    features = [rng.normal(size=(6, 16)).astype(np.float32) for _ in range(3)]
    total, parts = torch_model.release_loss(
        torch_model.ReleaseOutput(
            tuple(map(torch.from_numpy, logits)), tuple(map(torch.from_numpy, features))
        ),
        torch.from_numpy(labels),
    )
    expected, expected_parts = psta_loss(
        [jnp.asarray(x) for x in logits],
        [jnp.asarray(x) for x in features],
        jnp.asarray(labels),
        num_classes=10,
    )
    np.testing.assert_allclose(total.item(), float(expected), rtol=1e-6)
    for name in ("ce", "triplet"):
        np.testing.assert_allclose(parts[name].item(), float(expected_parts[name]), rtol=1e-6)


def test_narrow_model_shapes_and_gradients():
    torch.manual_seed(0)
    model = torch_model.release_model(
        num_classes=5, feature_dim=64, image_size=(64, 32), backbone_width=8
    )
    clips = torch.randn(4, 8, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1])
    out = model.train()(clips)
    assert [tuple(x.shape) for x in out.logits] == [(4, 5)] * 3
    assert [tuple(x.shape) for x in out.features] == [(4, 64)] * 3
    total, _ = torch_model.release_loss(out, labels)
    total.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
    assert all(not model.bottleneck[k].bias.requires_grad for k in range(3))
    with torch.no_grad():
        embedding = model.eval()(clips)
    assert tuple(embedding.shape) == (4, 64)
    with pytest.raises(ValueError, match="clips"):
        model(torch.randn(4, 3, 8, 64, 32))

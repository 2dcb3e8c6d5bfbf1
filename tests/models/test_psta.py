"""PSTA on tiny shapes: ablations, shared STAM weights, errors, attention reporting."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from psta_jax.models import PSTA, PSTAOutput, build_model, capture_attention
from psta_jax.models.psta import FrozenParam
from tests import reference_data
from tests.helpers.tiny import NUM_CLASSES, TINY, forward, forward_both, tiny_clips, tiny_model


def trainable_count(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_default_model_has_the_release_parameter_count():
    layout = reference_data.release_layout_file()
    model = nnx.eval_shape(lambda: PSTA(625, rngs=nnx.Rngs(0)))
    assert trainable_count(model) == 35_422_239 == layout["total_trainable_params"]
    by_module = {
        "base": model.base,
        "down_channel": model.down_channel,
        **{f"layer{k + 1}": stage for k, stage in enumerate(model.stages)},
        "bottleneck": model.bottleneck,
        "classifier": model.classifier,
    }
    assert {k: trainable_count(m) for k, m in by_module.items()} == (
        layout["trainable_params_by_module"]
    )


def test_bn_neck_bias_is_frozen_and_outside_param_filter():
    model = nnx.eval_shape(lambda: PSTA(625, rngs=nnx.Rngs(0)))
    frozen = nnx.to_flat_state(nnx.state(model, FrozenParam))
    assert sorted(str(p) for p, _ in frozen) == sorted(
        str(("bottleneck", k, "bias")) for k in range(3)
    )
    param_paths = {p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert not any(p[0] == "bottleneck" and p[-1] == "bias" for p in param_paths)


ABLATIONS = {
    "pyramid": dict(),
    "one_stage": dict(num_stages=1),
    "baseline_stages0": dict(num_stages=0),
    "baseline_none": dict(aggregation="none"),
    "aras": dict(aggregation="adjacent"),
    "gras": dict(aggregation="global"),
    "sra_only": dict(use_tra=False),
    "tra_only": dict(use_sra=False),
    "pas": dict(use_sra=False, use_tra=False),
    "no_conv_block": dict(use_conv_block=False),
}
EXPECTED_HEADS = {
    "pyramid": 2,
    "one_stage": 1,
    "sra_only": 2,
    "tra_only": 2,
    "pas": 2,
    "no_conv_block": 2,
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_builds_and_runs_in_both_modes(name):
    model = tiny_model(**ABLATIONS[name])
    clips = tiny_clips()
    out, embedding = forward_both(model, clips)
    heads = EXPECTED_HEADS.get(name, 1)
    assert isinstance(out, PSTAOutput)
    assert len(out.logits) == len(out.features) == heads
    chex.assert_shape(out.logits, (2, NUM_CLASSES))
    chex.assert_shape(out.features, (2, TINY["feature_dim"]))
    chex.assert_shape(embedding, (2, TINY["feature_dim"]))
    assert embedding.dtype == jnp.float32
    chex.assert_tree_all_finite((out, embedding))
    # Train mode normalises with batch statistics: BN features have the neck's bias as
    # their batch mean, up to float32 rounding of the normalisation (relative to the
    # features' scale: another CPU's kernels round it differently).
    features = np.asarray(out.features[-1])
    np.testing.assert_allclose(
        features.mean(axis=0), model.bottleneck[-1].bias[...], atol=1e-4 * np.abs(features).max()
    )


def test_ablations_have_the_expected_parts():
    pas = tiny_model(use_sra=False, use_tra=False).stages[0]
    assert pas.sra is None and pas.tra is None and pas.embedding is None
    no_block = tiny_model(use_conv_block=False).stages[0]
    assert no_block.conv_block is None and no_block.sra is not None
    assert len(tiny_model(aggregation="adjacent").stages) == 1
    assert len(tiny_model(aggregation="none").stages) == 0


def test_stage_weights_do_not_depend_on_the_number_of_pairs():
    short = tiny_model(seq_len=4, num_stages=1)
    long = tiny_model(seq_len=8, num_stages=1)
    assert trainable_count(short.stages[0]) == trainable_count(long.stages[0])
    assert trainable_count(short) == trainable_count(long)


def test_one_stam_serves_every_pair():
    """Perturbing one stage-1 weight changes all four pairs (T=8); pairs run in one call."""
    model = tiny_model(seq_len=8, num_stages=1)
    model.eval()
    clips = tiny_clips(seq_len=8)
    graphdef, state = nnx.split(model)

    @jax.jit
    def stage_one(state):
        m = nnx.merge(graphdef, state)
        return m.stage_maps(m.frame_maps(clips))[0]

    before = stage_one(state)
    kernel = model.stages[0].conv_block[1].conv.kernel
    kernel[...] = kernel[...] + 0.5
    after = stage_one(nnx.state(model))
    assert before.shape[1] == 4
    change = np.abs(np.asarray(after - before)).max(axis=(0, 2, 3, 4))
    assert np.all(change > 1e-3), change


@pytest.mark.parametrize("seq_len", [3, 6])
def test_non_power_of_two_seq_len_is_rejected(seq_len):
    with pytest.raises(ValueError, match="power of two"):
        nnx.eval_shape(lambda: PSTA(5, **dict(TINY, seq_len=seq_len), rngs=nnx.Rngs(0)))


def test_non_power_of_two_clip_is_rejected_at_call():
    model = tiny_model()
    with pytest.raises(ValueError, match="power of two"):
        forward(model, tiny_clips(seq_len=6), train=False)


def test_bad_configurations_are_rejected():
    with pytest.raises(ValueError, match="num_stages"):
        nnx.eval_shape(lambda: PSTA(5, **dict(TINY, num_stages=3), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="aggregation"):
        nnx.eval_shape(lambda: PSTA(5, **dict(TINY, aggregation="tree"), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="divisible"):
        nnx.eval_shape(lambda: PSTA(5, **dict(TINY, image_size=(40, 16)), rngs=nnx.Rngs(0)))
    model = tiny_model()
    with pytest.raises(ValueError, match="image_size"):
        forward(model, tiny_clips(image_size=(64, 32)), train=False)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        forward(model, jnp.zeros((2, 4, 32, 16)), train=False)


def test_capture_attention_reports_maps_without_changing_outputs():
    model = tiny_model()
    clips = tiny_clips()
    model.eval()
    plain = model(clips)
    embedding, intermediates = capture_attention(model, clips)
    np.testing.assert_allclose(embedding, plain, rtol=1e-6, atol=1e-6)
    h, w = model.map_size
    for stage, pairs in ((0, 2), (1, 1)):
        tra = intermediates["stages"][stage]["tra"]
        sra = intermediates["stages"][stage]["sra"]
        (sra_spatial,) = sra["sra_spatial"].get_value()
        (tra_channel,) = tra["tra_channel"].get_value()
        chex.assert_shape(sra_spatial, (2, pairs, 2, h, w))
        chex.assert_shape(tra["tra_spatial"].get_value()[0], (2, pairs, 2, h, w))
        chex.assert_shape(tra_channel, (2, pairs, 2, TINY["feature_dim"]))
        chex.assert_shape(sra["sra_channel"].get_value()[0], (2, pairs, 2, TINY["feature_dim"]))
        assert np.all((np.asarray(sra_spatial) >= 0) & (np.asarray(sra_spatial) <= 1))
    # Reporting is off again: a plain call adds no state.
    assert not nnx.state(model, nnx.Intermediate)


def test_build_model_from_config_with_bfloat16_compute():
    config = ml_collections.ConfigDict(
        dict(
            TINY,
            aggregation="pyramid",
            use_sra=True,
            use_tra=True,
            use_conv_block=True,
            last_stride=1,
            dtype="bfloat16",
            remat=False,
        )
    )
    model = nnx.eval_shape(lambda: build_model(config, NUM_CLASSES, nnx.Rngs(0)))
    from tests.helpers.tiny import fill_random

    fill_random(model)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    out = forward(model, tiny_clips(), train=True)
    assert all(x.dtype == jnp.float32 for x in out.logits + out.features)
    chex.assert_tree_all_finite(out)


def test_build_model_rejects_unknown_fields():
    config = ml_collections.ConfigDict(dict(TINY, num_stage=2))
    with pytest.raises(ValueError, match="num_stage"):
        build_model(config, NUM_CLASSES, nnx.Rngs(0))

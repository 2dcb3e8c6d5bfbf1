"""The SPMD train step: the release's loss, Adam on trainable params only, NaN safety, devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psta_jax import config_base
from psta_jax.models import FrozenParam, build_model
from psta_jax.runtime import sharding
from psta_jax.training import loop, losses, optimizer, steps
from tests.conftest import REPO_ROOT
from tests.helpers.tiny import tiny_batch, tiny_model_config

NUM_CLASSES = 2


@pytest.fixture(scope="module")
def setup():
    config = config_base.base_config()
    config.optimizer.warmup_epochs = 0
    tx, schedule = optimizer.create_optimizer(1, **config.optimizer.to_dict())
    mesh = sharding.make_mesh(jax.devices()[:1])
    model = build_model(tiny_model_config(), NUM_CLASSES, nnx.Rngs(0))
    graphs, state = steps.create_train_state(model, tx, mesh)
    step = steps.compile_train_step(
        graphs, tx, losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()), mesh
    )
    return config, tx, mesh, graphs, state, step


def test_frozen_bn_neck_biases_are_not_trained(setup):
    _, _, _, _, state, _ = setup
    frozen = jax.tree.leaves(nnx.filter_state(state.model_state, FrozenParam))
    assert frozen, "the BN-neck biases must be FrozenParam variables outside the trained params"
    assert all(np.all(np.asarray(x) == 0) for x in frozen)


def test_step_minimises_release_loss_with_coupled_adam(setup):
    config, _, mesh, graphs, state, step = setup
    batch = tiny_batch(num_ids=2, per_id=2)
    params0 = steps.tree_to_host(state.params)
    model_state0 = steps.tree_to_host(state.model_state)

    def release_loss(model):
        out = model(jnp.asarray(batch["clips"]))
        return losses.psta_loss(
            out.logits, out.features, jnp.asarray(batch["labels"]), num_classes=NUM_CLASSES
        )[0]

    model = nnx.merge(graphs.train, *jax.tree.map(jnp.asarray, (params0, model_state0)))
    expected_loss, grads = nnx.value_and_grad(release_loss, argnums=nnx.DiffState(0, nnx.Param))(
        model
    )
    new_state, metrics = step(jax.tree.map(jnp.copy, state), sharding.shard_batch(batch, mesh))
    # The jitted step and this eager reference are two XLA programs: float32 sums in another
    # order, so the loss agrees to a few ulp and the gradients' norm (~1e5 terms) to ~1e-5.
    np.testing.assert_allclose(float(metrics["loss"]), float(expected_loss), rtol=1e-5)
    assert float(metrics["finite"]) == 1.0
    expected_norm = np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(float(metrics["grad_norm"]), expected_norm, rtol=1e-4)

    # Adam's first step: -lr * g' / (|g'| + eps) with g' = g + weight_decay * param.
    lr, wd, eps = (
        config.optimizer.learning_rate,
        config.optimizer.weight_decay,
        config.optimizer.eps,
    )
    new_params = steps.tree_to_host(new_state.params)
    for p0, g, p1 in zip(
        jax.tree.leaves(params0), jax.tree.leaves(grads), jax.tree.leaves(new_params), strict=True
    ):
        coupled = np.asarray(g) + wd * np.asarray(p0)
        expected = np.asarray(p0) - lr * coupled / (np.abs(coupled) + eps)
        # Where g' is float noise (e.g. the bias of a near-uniform classifier) its sign is too:
        # compare where it stands clear of the two programs' rounding (relative to the tensor).
        # (Adam's first step is -lr * g' / (|g'| + 1e-8): sign-like only well above 1e-8.)
        clear = np.abs(coupled) > max(1e-5, 1e-3 * np.abs(coupled).max())
        np.testing.assert_allclose(np.asarray(p1)[clear], expected[clear], rtol=1e-4, atol=1e-7)
    frozen = jax.tree.leaves(nnx.filter_state(new_state.model_state, FrozenParam))
    assert all(np.all(np.asarray(x) == 0) for x in frozen)
    assert int(new_state.step) == 1


def test_non_finite_loss_keeps_the_state(setup):
    _, _, mesh, _, state, step = setup
    batch = tiny_batch(num_ids=2, per_id=2)
    batch["clips"][0, 0, 0, 0, 0] = np.nan
    before = steps.tree_to_host(state)
    after, metrics = step(jax.tree.map(jnp.copy, state), sharding.shard_batch(batch, mesh))
    assert float(metrics["finite"]) == 0.0
    for x, y in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))
    for x, y in zip(
        jax.tree.leaves(before.model_state), jax.tree.leaves(after.model_state), strict=True
    ):
        np.testing.assert_array_equal(x, np.asarray(y))


@pytest.fixture(scope="module")
def huge_learning_rate_steps(setup):
    """Two steps at learning rate 1e6 from the setup's state: the first is finite; in the
    second the loss stays finite (~1e13) while BatchNorm running variances overflow to inf.
    (the first step's state on the host, both steps' metrics, the second's state)"""
    config, _, mesh, graphs, state, _ = setup
    huge = config.optimizer.to_dict() | {"learning_rate": 1e6}
    tx, _ = optimizer.create_optimizer(1, **huge)
    step = steps.compile_train_step(
        graphs, tx, losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()), mesh
    )
    first, first_metrics = step(
        jax.tree.map(jnp.copy, state), sharding.shard_batch(tiny_batch(seed=0), mesh)
    )
    assert float(first_metrics["finite"]) == 1.0
    before = steps.tree_to_host(first)
    second, metrics = step(first, sharding.shard_batch(tiny_batch(seed=1), mesh))
    return before, (first_metrics, metrics), second


def test_overflowing_batch_norm_statistics_are_flagged(huge_learning_rate_steps):
    """The loss stays finite, a BatchNorm variance does not: the step flags it and names it
    (the loop then stops before any evaluation or save, test_host_error_...)."""
    before, (_, metrics), after = huge_learning_rate_steps
    assert np.isfinite(float(metrics["loss"])), "the loss-only guard would have let it through"
    assert float(metrics["finite"]) == 0.0
    name = steps.guarded_names(after)[int(metrics[steps.FIRST_NON_FINITE])]
    assert name.startswith("model_state/") and name.endswith("/var"), name
    assert int(after.step) == int(before.step) + 1


def test_host_error_names_the_step_and_the_tensor(huge_learning_rate_steps):
    _, (first_metrics, metrics), state = huge_learning_rate_steps
    name = steps.guarded_names(state)[int(metrics[steps.FIRST_NON_FINITE])]
    with pytest.raises(steps.NonFiniteLossError, match=f"at step 8 .*{name}"):
        loop._write_train_metrics(None, 8, [first_metrics, metrics], lambda s: 0.1, state)


def test_guard_index_is_not_logged(setup):
    _, _, mesh, _, state, step = setup
    _, metrics = step(jax.tree.map(jnp.copy, state), sharding.shard_batch(tiny_batch(), mesh))

    class Writer:
        def write_scalars(self, step, scalars):
            self.scalars = scalars

    writer = Writer()
    loop._write_train_metrics(writer, 1, [metrics], lambda s: 0.1, state)
    assert set(writer.scalars) == {
        "train/loss",
        "train/ce",
        "train/triplet",
        "train/grad_norm",
        "train/learning_rate",
    }


def test_guarded_names_follow_the_state():
    model = build_model(tiny_model_config(), NUM_CLASSES, nnx.Rngs(0))
    _, params, model_state = steps.split_model(model)
    state = steps.TrainState(jnp.zeros((), jnp.int32), params, model_state, ())
    names = steps.guarded_names(state)
    assert names[0] == "loss"
    assert "model_state/base/layer1/0/bn1/var" in names
    assert "params/base/conv1/kernel" in names, [n for n in names if "conv1" in n][:3]
    assert len(names) == len(set(names)) == 1 + len(jax.tree.leaves((params, model_state)))


def test_normal_step_is_bit_identical_to_the_loss_only_guard(setup, monkeypatch):
    """The guard over every tensor changes nothing in a finite step."""
    config, tx, mesh, graphs, state, step = setup
    batch = sharding.shard_batch(tiny_batch(num_ids=2, per_id=2), mesh)
    guarded, metrics = step(jax.tree.map(jnp.copy, state), batch)
    monkeypatch.setattr(steps, "_finite_flags", lambda loss, *_: jnp.isfinite(loss)[None])
    loss_only_step = steps.compile_train_step(
        graphs, tx, losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()), mesh
    )
    reference, ref_metrics = loss_only_step(jax.tree.map(jnp.copy, state), batch)
    assert float(metrics["finite"]) == float(ref_metrics["finite"]) == 1.0
    for x, y in zip(jax.tree.leaves(reference), jax.tree.leaves(guarded), strict=True):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    for key in ("loss", "ce", "triplet", "grad_norm"):
        assert float(metrics[key]) == float(ref_metrics[key]), key


def test_step_without_grad_norm_metric_takes_the_same_step(setup):
    """config.log_grad_norm=False drops the metric (111 reductions on the full model) and
    nothing else."""
    config, tx, mesh, graphs, state, step = setup
    batch = sharding.shard_batch(tiny_batch(num_ids=2, per_id=2), mesh)
    reference, ref_metrics = step(jax.tree.map(jnp.copy, state), batch)
    plain_step = steps.compile_train_step(
        graphs,
        tx,
        losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()),
        mesh,
        log_grad_norm=False,
    )
    new_state, metrics = plain_step(jax.tree.map(jnp.copy, state), batch)
    assert set(metrics) == set(ref_metrics) - {"grad_norm"}
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(reference), jax.tree.leaves(new_state), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_four_devices_equal_one_device():
    """Global-batch BatchNorm and triplet mining: 4 data-parallel devices == 1 device
    (loss, gradients as SGD updates, new parameters and BatchNorm statistics)."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "tests.helpers.multidevice_step"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(report["loss_4"], report["loss_1"], rtol=1e-5)
    np.testing.assert_allclose(report["grad_norm_4"], report["grad_norm_1"], rtol=1e-4)
    assert report["updates"] < 1e-4, report  # the gradients, |g4 - g1| / |g1|
    assert report["params"] < 1e-6, report
    assert report["model_state"] < 1e-5, report


def _variant_step(setup, **override):
    """One step of the setup's state and batch with a model built from `override`."""
    config, tx, mesh, _, state, step = setup
    batch = tiny_batch(num_ids=2, per_id=2)
    reference, ref_metrics = step(jax.tree.map(jnp.copy, state), sharding.shard_batch(batch, mesh))
    model = build_model(tiny_model_config(**override), NUM_CLASSES, nnx.Rngs(0))
    graphs, variant_state = steps.create_train_state(model, tx, mesh)
    variant_step = steps.compile_train_step(
        graphs, tx, losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()), mesh
    )
    new_state, metrics = variant_step(variant_state, sharding.shard_batch(batch, mesh))
    return (reference, ref_metrics), (new_state, metrics)


def test_remat_step_equals_plain_step(setup):
    """Rematerialised backbone blocks give the same loss and new parameters."""
    (reference, ref_metrics), (new_state, metrics) = _variant_step(setup, remat=True)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
    for x, y in zip(
        jax.tree.leaves(reference.params), jax.tree.leaves(new_state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


def test_bfloat16_step_keeps_float32_parameters(setup):
    """bf16 compute: float32 parameters, a finite step, the same cross-entropy.

    The triplet term is not compared: a width-4 network's cosine distances are ~1e-3, so
    its margin-dominated value moves by ~0.1 with bf16 rounding (train-mode BatchNorm over
    4 clips amplifies it); embedding accuracy is checked in eval mode below."""
    (_, ref_metrics), (new_state, metrics) = _variant_step(setup, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
    assert float(metrics["finite"]) == 1.0
    np.testing.assert_allclose(float(metrics["ce"]), float(ref_metrics["ce"]), rtol=1e-2)


def test_bfloat16_embeddings_match_float32():
    """Eval-mode embeddings in bf16 compute: cosine >= 0.999 with float32's, per clip."""
    clips = jnp.asarray(tiny_batch(num_ids=2, per_id=2)["clips"])
    embeddings = {}
    for dtype in ("float32", "bfloat16"):
        model = build_model(tiny_model_config(dtype=dtype), NUM_CLASSES, nnx.Rngs(0))
        model.eval()
        embeddings[dtype] = np.asarray(nnx.jit(lambda m, x: m(x))(model, clips), np.float64)
    a, b = embeddings["float32"], embeddings["bfloat16"]
    assert a.shape == b.shape == (4, tiny_model_config().feature_dim)
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() >= 0.999, cosine

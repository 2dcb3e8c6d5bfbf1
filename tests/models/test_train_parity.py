"""Training parity with the authors' PyTorch release: one train step on person-like clips.

Reference: the release's own train step (tests/reference/README.md) on the stand-in weights
of seed 2024 and 8 person-like clips (4 identities x 2), in float64 and in float32.
Every error is relative to the largest absolute value of its reference tensor.

float64 (`train_step_dev_seed2024_f64.npz`), within F64_RTOL: the three losses, the train-mode
logits and BN features, every one of the 333 gradients (its norm and the sampled entries),
every one of the 204 BatchNorm running statistics after the step, and the parameters after
one step of the release's Adam, whose expected value is derived here from the reference
gradients (closed form of PyTorch Adam's first step), not from our optimiser. Gradients
are only comparable in float64: the release's own float32 and float64 gradients differ by
up to 4x on some tensors.

float32 (`train_step_dev_seed2024.npz`), forward pass only: logits and BN features within
F32_RTOL, losses within F32_LOSS_RTOL, running statistics within F32_RTOL (the release's
own float32 vs float64 distance is 2e-4 there).

The float64 step runs in a subprocess (tests/models/release_step.py; `jax_enable_x64` must
not leak into other tests) and takes minutes; all full-size model tests share one xdist
group so that only one runs at a time. README's parity section has the measured figures.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psta_jax.training.losses import psta_loss
from tests import reference_data
from tests.helpers.tiny import NUM_CLASSES, tiny_model
from tests.models import release_step

F64_RTOL = 1e-6
F32_RTOL = 1e-3
F32_LOSS_RTOL = 1e-4
ADAM = release_step.RELEASE_ADAM

pytestmark = [pytest.mark.xdist_group("full_model"), pytest.mark.full_model]

OUTPUT_KEYS = [f"train_{name}_{k}" for k in range(3) for name in ("logits", "bn_feature")]
LOSS_KEYS = ["train_loss_ce", "train_loss_triplet", "train_loss_total"]
REPO_ROOT = reference_data.REFERENCE_DIR.parents[1]


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.max(np.abs(expected))
    return (
        float(np.max(np.abs(actual - expected)) / scale) if scale else float(np.max(np.abs(actual)))
    )


def worst(errors: dict[str, float]) -> str:
    """'name error' of the largest error."""
    name = max(errors, key=errors.get)
    return f"{name} {errors[name]:.1e}"


@pytest.fixture(scope="module")
def f64_reference():
    return reference_data.load("train_step_dev_seed2024_f64")


@pytest.fixture(scope="module")
def f64_step(tmp_path_factory):
    """The float64 step's summary (release_step.summarise), computed in a subprocess."""
    out = tmp_path_factory.mktemp("f64_step") / "summary.npz"
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    # Fast runtime, not fast compilation: the session's fast-compile XLA flags would slow
    # this one big program down.
    env.pop("XLA_FLAGS", None)
    process = subprocess.run(
        [sys.executable, "-m", "tests.models.release_step", "float64", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    # JAX warns when float64 values are truncated: by a scatter into a float32 array
    # ("cannot safely cast", e.g. float32 running statistics updated with float64 batch
    # statistics) or by an explicit float64 request without x64.
    for downcast in ("cannot safely cast", "Explicitly requested dtype float64"):
        assert downcast not in process.stderr, process.stderr[-4000:]
    with np.load(out) as summary:
        return dict(summary)


def test_f64_step_has_no_silent_downcast(f64_step):
    # The fixture asserts that JAX warned about no float64 -> float32 truncation; the
    # outputs are float64 (and the tests below put them within 1e-11 of the release's).
    assert f64_step["train_logits_0"].dtype == np.float64
    print(f"float64 step: {float(f64_step['seconds']):.0f} s")


@pytest.mark.parametrize("key", LOSS_KEYS + OUTPUT_KEYS)
def test_f64_outputs_and_losses_match_release(key, f64_step, f64_reference):
    error = relative_error(f64_step[key], f64_reference[key])
    print(f"{key}: relative error {error:.1e}")
    assert error < F64_RTOL


def test_f64_every_gradient_matches_release(f64_step, f64_reference):
    names = [str(n) for n in f64_reference["grad_names"]]
    assert len(names) == 333
    entries = {
        n: relative_error(f64_step[f"grad/{n}"], f64_reference[f"grad_value/{n}"]) for n in names
    }
    norms = {
        n: relative_error(f64_step[f"grad_norm/{n}"], f64_reference["grad_norm"][i])
        for i, n in enumerate(names)
    }
    print(f"gradient entries: worst {worst(entries)}; norms: worst {worst(norms)}")
    failing = {
        n: (entries[n], norms[n]) for n in names if entries[n] >= F64_RTOL or norms[n] >= F64_RTOL
    }
    assert not failing, failing


def test_f64_every_running_statistic_matches_release(f64_step, f64_reference):
    names = [str(n) for n in f64_reference["bn_names"]]
    assert len(names) == 204
    errors = {n: relative_error(f64_step[f"bn/{n}"], f64_reference[f"bn_value/{n}"]) for n in names}
    print(f"running statistics: worst {worst(errors)}")
    failing = {n: e for n, e in errors.items() if e >= F64_RTOL}
    assert not failing, failing


def release_adam_first_step(param: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """torch.optim.Adam(lr, betas, eps, weight_decay) step 1, from its documented algorithm:
    g = grad + wd * p; m = (1 - b1) g; v = (1 - b2) g^2; p - lr * (m / (1 - b1)) /
    (sqrt(v) / sqrt(1 - b2) + eps)."""
    b1, b2 = ADAM["b1"], ADAM["b2"]
    g = grad + ADAM["weight_decay"] * param
    m, v = (1 - b1) * g, (1 - b2) * g * g
    return param - ADAM["learning_rate"] / (1 - b1) * m / (
        np.sqrt(v) / np.sqrt(1 - b2) + ADAM["eps"]
    )


def test_f64_adam_step_matches_release_update(f64_step, f64_reference):
    """New parameters = the release's Adam step on the release's gradients.

    Adam's first step is lr * g / (|g| + eps) per entry (g with weight decay): nearly
    lr * sign(g), but where |g| is near eps a gradient error d moves it by up to
    lr * eps * d / (|g| + eps)^2. Each entry must be within lr * (F64_RTOL + that bound),
    with d = the gradient tolerance (F64_RTOL of the tensor's largest gradient). (The
    error relative to each tensor's largest value is printed too: ~1e-6 at worst, from
    entries with |g| near eps.)
    """
    ratios, relative = {}, {}
    for name in map(str, f64_reference["grad_names"]):
        param, grad = f64_step[f"param/{name}"], f64_reference[f"grad_value/{name}"]
        expected = release_adam_first_step(param, grad)
        error = np.abs(f64_step[f"new_param/{name}"] - expected)
        decayed = np.abs(grad + ADAM["weight_decay"] * param)
        gradient_tolerance = F64_RTOL * np.max(np.abs(grad))
        allowed = ADAM["learning_rate"] * (
            F64_RTOL + ADAM["eps"] * gradient_tolerance / (decayed + ADAM["eps"]) ** 2
        )
        ratios[name] = float(np.max(error / allowed))
        relative[name] = relative_error(f64_step[f"new_param/{name}"], expected)
    print(f"Adam step: worst error / allowed {worst(ratios)}; relative {worst(relative)}")
    failing = {n: r for n, r in ratios.items() if r >= 1}
    assert not failing, failing


def test_initial_parameters_are_the_release_weights(f64_step, f64_reference):
    weights = reference_data.release_state_dict(int(f64_reference["weight_seed"]))
    for name in map(str, f64_reference["grad_names"]):
        index = f64_reference[f"grad_index/{name}"]
        np.testing.assert_array_equal(
            f64_step[f"param/{name}"], weights[name].reshape(-1)[index].astype(np.float64)
        )


def test_staged_gradients_equal_one_program_gradients():
    """The float64 step's segment-by-segment backward pass (release_step.py; for memory)
    gives the gradients and statistics of one `nnx.value_and_grad` over the whole model."""
    with jax.enable_x64(True):
        model = tiny_model(dtype=jnp.float64, param_dtype=jnp.float64)
        model.train()
        clips = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4, 32, 16, 3)))
        labels = jnp.asarray([0, 0, 1, 1])
        total, _, _, grads, stats = release_step.staged_value_and_grad(model, clips, labels)
        graphdef, state = nnx.split(model)

        @jax.jit
        def whole(state):
            m = nnx.merge(graphdef, state)

            def loss(m):
                out = m(clips)
                return psta_loss(out.logits, out.features, labels, num_classes=NUM_CLASSES)[0]

            value, g = nnx.value_and_grad(loss)(m)
            return value, g, nnx.state(m, nnx.BatchStat)

        expected_total, expected_grads, expected_stats = whole(state)
    expected_grads = release_step._flat(expected_grads)
    expected_stats = release_step._flat(expected_stats)
    assert set(grads) == set(expected_grads) and set(stats) == set(expected_stats)
    np.testing.assert_allclose(float(total), float(expected_total), rtol=1e-13)
    for path, value in expected_grads.items():
        np.testing.assert_allclose(grads[path], value, rtol=1e-10, atol=1e-13, err_msg=str(path))
    for path, value in expected_stats.items():
        np.testing.assert_allclose(stats[path], value, rtol=1e-12, err_msg=str(path))


@pytest.fixture(scope="module")
def f32_forward():
    reference = release_step.reference("float32")
    return release_step.summarise(release_step.forward("float32"), reference), reference


@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_f32_outputs_match_release(key, f32_forward):
    summary, reference = f32_forward
    error = relative_error(summary[key], reference[key])
    print(f"{key}: relative error {error:.1e}")
    assert error < F32_RTOL


@pytest.mark.parametrize("key", LOSS_KEYS)
def test_f32_losses_match_release(key, f32_forward):
    summary, reference = f32_forward
    error = relative_error(summary[key], reference[key])
    print(f"{key}: relative error {error:.1e}")
    assert error < F32_LOSS_RTOL


def test_f32_every_running_statistic_matches_release(f32_forward):
    summary, reference = f32_forward
    errors = {
        str(n): relative_error(summary[f"bn/{n}"], reference[f"bn_value/{n}"])
        for n in reference["bn_names"]
    }
    assert len(errors) == 204
    print(f"running statistics: worst {worst(errors)}")
    failing = {n: e for n, e in errors.items() if e >= F32_RTOL}
    assert not failing, failing

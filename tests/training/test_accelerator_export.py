"""The train step exported for GPU and TPU keeps XLA's own convolution and max-pool gradients;
models/conv.py's CPU workarounds (1x1 convolutions as matmuls, im2col gradients, per-tap
max-pool gradient) appear only in the program lowered for the CPU.

`jax.export` lowers for any platform from this CPU-only machine, so the StableHLO each
accelerator would compile is checked here without one.
"""

from __future__ import annotations

import collections
import os
import re

import jax
import pytest
from flax import nnx
from jax import export

from psta_jax import config_base
from psta_jax.models import build_model
from psta_jax.runtime import sharding, xla_cpu
from psta_jax.training import losses, optimizer, steps
from tests.helpers.tiny import tiny_batch, tiny_model_config

NUM_CLASSES = 2
# The session's XLA_FLAGS without a YNN setting (jaxlib's default: YNN runs the
# convolutions), and with the convolutions taken out of YNN.
_SESSION_FLAGS = [
    f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(xla_cpu.YNN_FLAG)
]
YNN_CONVOLUTIONS_ON = " ".join(_SESSION_FLAGS)
YNN_CONVOLUTIONS_OFF = " ".join([*_SESSION_FLAGS, xla_cpu.CONVOLUTIONS_OUT_OF_YNN])


def exported_ops(platform: str, xla_flags: str) -> collections.Counter:
    """StableHLO op counts of the project's train step (tiny model, P=2 x K=2, the release's
    loss and optimizer) exported for `platform`, traced under `xla_flags`."""
    mesh = sharding.make_mesh(jax.devices()[:1])  # the backend starts with the session flags
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XLA_FLAGS", xla_flags)  # conv2d reads it at trace time
        config = config_base.base_config()
        tx, _ = optimizer.create_optimizer(1, **config.optimizer.to_dict())
        model = build_model(tiny_model_config(), NUM_CLASSES, nnx.Rngs(0))
        graphs, state = steps.create_train_state(model, tx, mesh)
        step = steps.compile_train_step(
            graphs, tx, losses.bound_psta_loss(NUM_CLASSES, **config.loss.to_dict()), mesh
        )
        batch = sharding.shard_batch(tiny_batch(num_ids=2, per_id=2), mesh)
        text = export.export(step, platforms=(platform,))(state, batch).mlir_module()
    return collections.Counter(re.findall(r"stablehlo\.([a-z_]+)", text))


def forward_convolutions(platform: str) -> int:
    """Convolutions in the tiny model's train-mode forward pass lowered for `platform` (on
    the CPU the 1x1 convolutions are matmuls)."""
    model = build_model(tiny_model_config(), NUM_CLASSES, nnx.Rngs(0))
    model.train()
    graphdef, state = nnx.split(model)
    clips = tiny_batch(num_ids=2, per_id=2)["clips"]
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits)
    text = export.export(forward, platforms=(platform,))(state, clips).mlir_module()
    return len(re.findall(r"stablehlo\.convolution", text))


@pytest.fixture(scope="module")
def all_convolutions() -> int:
    return forward_convolutions("cuda")


@pytest.fixture(scope="module")
def cpu_convolutions() -> int:
    return forward_convolutions("cpu")


@pytest.fixture(scope="module")
def cpu_ops_with_ynn() -> collections.Counter:
    return exported_ops("cpu", YNN_CONVOLUTIONS_ON)


def _without_cases(ops: collections.Counter) -> collections.Counter:
    # platform_dependent leaves one single-branch `case` (and its `return`s) per call;
    # XLA inlines them.
    return collections.Counter({op: n for op, n in ops.items() if op not in ("case", "return")})


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerator_train_step_has_plain_gradient_convolutions(
    platform, all_convolutions, cpu_convolutions, cpu_ops_with_ynn
):
    assert 0 < cpu_convolutions < all_convolutions  # 1x1 convolutions are CPU matmuls only
    ops = exported_ops(platform, YNN_CONVOLUTIONS_ON)
    # Every convolution has its kernel gradient, and all but the stem (whose input, the
    # clips, is not differentiated) their input gradient: all as convolution ops.
    assert ops["convolution"] == 3 * all_convolutions - 1
    assert ops["select_and_scatter"] == 1  # the stem max-pool's XLA gradient
    # No im2col: the only concatenations are the model's own, as in the CPU program
    # less its patches.
    assert ops["concatenate"] < cpu_ops_with_ynn["concatenate"]
    if platform == "cuda":  # XLA_FLAGS (a CPU-only setting) leave the program unchanged
        plain = exported_ops(platform, YNN_CONVOLUTIONS_OFF)
        assert _without_cases(ops) == _without_cases(plain)


def test_cpu_train_step_with_ynn_convolutions_uses_the_workarounds(
    cpu_convolutions, cpu_ops_with_ynn
):
    ops = cpu_ops_with_ynn
    assert ops["select_and_scatter"] == 0
    # Gradients as matmuls: only the forward kxk convolutions and their stride-1 input
    # gradients stay convolutions.
    assert cpu_convolutions <= ops["convolution"] < 2 * cpu_convolutions
    plain = exported_ops("cpu", YNN_CONVOLUTIONS_OFF)
    assert plain["convolution"] == 3 * cpu_convolutions - 1
    assert plain["select_and_scatter"] == 0  # the max-pool gradient is ours on the CPU
    assert ops["concatenate"] > plain["concatenate"]  # the im2col patches
    assert ops["dot_general"] > plain["dot_general"]

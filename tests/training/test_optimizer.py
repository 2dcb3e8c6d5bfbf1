"""The optimiser equals torch.optim.Adam(weight_decay=...) and the release's LR schedule."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from psta_jax import config_base
from psta_jax.training import optimizer


def _schedule(steps_per_epoch=3):
    cfg = config_base.base_config().optimizer
    return optimizer.learning_rate_schedule(
        base_learning_rate=cfg.learning_rate,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=cfg.warmup_epochs,
        warmup_factor=cfg.warmup_factor,
        milestones=cfg.milestones,
        gamma=cfg.gamma,
    )


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 3.5e-6),
        (5, 3.5e-4 * (0.01 * 0.5 + 0.5)),
        (10, 3.5e-4),
        (69, 3.5e-4),
        (70, 1.05e-4),
        (139, 1.05e-4),
        (140, 3.15e-5),
        (210, 9.45e-6),
        (310, 2.835e-6),
        (410, 8.505e-7),
        (499, 8.505e-7),
    ],
)
def test_schedule_matches_release_values(epoch, expected):
    schedule = _schedule(steps_per_epoch=3)
    for step in (3 * epoch, 3 * epoch + 2):  # constant within an epoch
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


def test_schedule_rejects_empty_epochs():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optimizer.learning_rate_schedule(
            base_learning_rate=1.0,
            steps_per_epoch=0,
            warmup_epochs=0,
            warmup_factor=1.0,
            milestones=(),
            gamma=0.1,
        )


def test_adam_with_coupled_decay_equals_torch():
    torch = pytest.importorskip("torch")
    cfg = config_base.base_config().optimizer
    cfg.warmup_epochs = 0
    tx, _ = optimizer.create_optimizer(10, **cfg.to_dict())
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]

    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)

    tw = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.Adam([tw], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    for g in grads:
        tw.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-7)

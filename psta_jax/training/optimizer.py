"""The release's optimiser: PyTorch Adam with coupled L2 decay and a per-epoch warmup schedule."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import optax


def learning_rate_schedule(
    *,
    base_learning_rate: float,
    steps_per_epoch: int,
    warmup_epochs: int,
    warmup_factor: float,
    milestones: Sequence[int],
    gamma: float,
) -> optax.Schedule:
    """WarmupMultiStepLR stepped once per epoch, as the release does.

    With e = step // steps_per_epoch (the 0-based epoch):
    lr(e) = base * w(e) * gamma ** #{m in milestones : m <= e}, where
    w(e) = warmup_factor * (1 - e / W) + e / W for e < W = warmup_epochs, else 1.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    milestone_array = jnp.asarray(tuple(milestones) or (10**9,), jnp.int32)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        if warmup_epochs > 0:
            alpha = epoch.astype(jnp.float32) / warmup_epochs
            warmup = jnp.where(epoch < warmup_epochs, warmup_factor * (1.0 - alpha) + alpha, 1.0)
        else:
            warmup = 1.0
        decays = jnp.sum(milestone_array <= epoch) if milestones else 0
        return base_learning_rate * warmup * gamma**decays

    return schedule


def create_optimizer(
    steps_per_epoch: int,
    *,
    learning_rate: float,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.01,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    grad_clip_norm: float = 0.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam (b1, b2, eps) on gradients + weight_decay * params, as torch.optim.Adam(weight_decay=),
    with `learning_rate_schedule`; `grad_clip_norm` > 0 clips the global norm first.

    The keyword arguments are the fields of `config.optimizer`. Apply it to the trainable
    parameters only: the frozen BN-neck biases are not in that tree, so they get neither
    updates nor decay.
    """
    schedule = learning_rate_schedule(
        base_learning_rate=learning_rate,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        warmup_factor=warmup_factor,
        milestones=milestones,
        gamma=gamma,
    )
    transforms = []
    if grad_clip_norm and grad_clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(grad_clip_norm))
    transforms += [
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(schedule),
    ]
    return optax.chain(*transforms), schedule

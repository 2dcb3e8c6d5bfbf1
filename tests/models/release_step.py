"""One training step of the release's network on the release's reference batch, summarised
against the entries the reference files sample (tests/reference/README.md).

`run_step(dtype)` loads the stand-in release weights (seed 2024) into a full-size PSTA,
runs a train-mode forward pass on the 8 person-like clips (4 identities x 2), the release's
loss, its gradients, and one step of the release's Adam; `summarise` reduces the result to
what the reference files hold, in PyTorch names and layouts.

The float64 step runs in its own process (`python -m tests.models.release_step float64 OUT`):
it needs `jax_enable_x64`, which must not leak into other tests, its XLA settings are the
fastest for float64 (not the test session's fast-compile ones), and its memory is returned
when it ends.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from psta_jax.interop import load_official_psta
from psta_jax.interop.torch_import import key_map, to_torch
from psta_jax.training.losses import psta_loss
from psta_jax.training.optimizer import create_optimizer
from tests import reference_data

REFERENCE = {"float32": "train_step_dev_seed2024", "float64": "train_step_dev_seed2024_f64"}

# The release's Adam after warm-up (protocol doc: lr 3.5e-4, coupled weight decay 5e-4 on
# every trainable tensor, betas (0.9, 0.999), eps 1e-8); warm-up off so that step 1 uses
# the post-warm-up learning rate.
RELEASE_ADAM = dict(
    learning_rate=3.5e-4,
    weight_decay=5e-4,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    warmup_epochs=0,
    warmup_factor=0.01,
    milestones=(),
    gamma=0.3,
    grad_clip_norm=0.0,
)


def reference(dtype: str) -> dict[str, np.ndarray]:
    return reference_data.load(REFERENCE[dtype])


def release_model(dtype: str, seed: int):
    """Full-size PSTA with the stand-in release weights, params and compute in `dtype`, in
    train mode (the float64 step bounds its memory by running segment by segment)."""
    weights = reference_data.release_state_dict(seed)
    model = load_official_psta(weights, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
    model.train()
    return model


def release_batch(dtype: str) -> tuple[jax.Array, jax.Array]:
    ref = reference(dtype)
    clips = reference_data.person_clips(
        int(ref["input_seed"]), int(ref["identities"]), int(ref["instances"])
    )
    return jnp.asarray(clips, dtype), jnp.asarray(ref["train_labels"], jnp.int32)


def _flat(state: nnx.State) -> dict[tuple, np.ndarray]:
    """{variable path: NumPy value} of a state."""
    return {
        tuple(path): np.asarray(value[...] if hasattr(value, "get_value") else value)
        for path, value in nnx.to_flat_state(state)
    }


def forward(dtype: str) -> dict:
    """Train-mode forward pass and loss only (no gradients): outputs, losses, new stats."""
    ref = reference(dtype)
    model = release_model(dtype, int(ref["weight_seed"]))
    clips, labels = release_batch(dtype)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, clips):
        m = nnx.merge(graphdef, state)
        out = m(clips)
        total, parts = psta_loss(out.logits, out.features, labels, num_classes=625)
        return out, total, parts, nnx.state(m, nnx.BatchStat)

    out, total, parts, stats = run(state, clips)
    return dict(
        names=key_map(model),
        out=jax.tree.map(np.asarray, out),
        total=float(total),
        ce=float(parts["ce"]),
        triplet=float(parts["triplet"]),
        stats=_flat(stats),
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _segment_forward(graphdef, fn, params, rest, x):
    nodes = nnx.merge(graphdef, params, rest)
    return fn(nodes, x), nnx.state(nodes, nnx.BatchStat)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _segment_backward(graphdef, fn, params, rest, x, cotangent):
    """Recomputes the segment (train mode: same batch statistics) and pulls `cotangent`
    back to (parameter gradients, input gradient)."""
    # The BatchNorm statistics (in `rest`) are arguments of the pulled-back function too:
    # the recomputation writes them, which flax allows only at the function's trace level.
    _, pullback = jax.vjp(lambda p, r, x: fn(nnx.merge(graphdef, p, r), x), params, rest, x)
    param_grads, _, input_grad = pullback(cotangent)
    return param_grads, input_grad


def _stem(nodes, images):
    return nodes.stem(images)


def _block(nodes, x):
    return nodes(x)


def _head_loss(labels, batch, model, backbone_maps):
    out = model.heads(model.features_from_maps(model.reduce_channels(backbone_maps, batch)))
    total, parts = psta_loss(out.logits, out.features, labels, num_classes=out.logits[0].shape[-1])
    return total, (parts, out)


def _not_backbone_param(path, value) -> bool:
    return isinstance(value, nnx.Param) and path[0] != "base"


def staged_value_and_grad(model, clips: jax.Array, labels: jax.Array):
    """The release loss, its gradients w.r.t. every nnx.Param and the new BatchNorm
    statistics, computed segment by segment (stem, each backbone block, the rest): the
    whole batch goes through every segment (BatchNorm statistics are the full batch's),
    only segment inputs are kept between the forward and the backward pass, and each
    segment is recomputed for its backward pass. Same values as one
    `nnx.value_and_grad` over the model, with a fraction of the memory.

    Returns (total, parts, outputs, grads, stats), grads and stats as flat
    {model path: array}.
    """
    batch, seq_len = clips.shape[:2]
    base = model.base
    segments = [(("base",), base, _stem)] + [
        (("base", f"layer{k + 1}", i), block, _block)
        for k, layer in enumerate(base.layers)
        for i, block in enumerate(layer)
    ]
    grads, stats, inputs = {}, {}, []
    x = clips.reshape(batch * seq_len, *clips.shape[2:])
    for prefix, nodes, fn in segments:
        # The stem's segment is the whole backbone module (it reads conv1 and bn1 only):
        # its parameter gradients are taken from conv1 and bn1 below.
        graphdef, params, rest = nnx.split(nodes, nnx.Param, ...)
        inputs.append(x)
        x, new_stats = _segment_forward(graphdef, fn, params, rest, x)
        for path, value in _flat(new_stats).items():
            if fn is _block or path[0] in ("conv1", "bn1"):
                stats[prefix + path] = value
    head_fn = functools.partial(_head_loss, labels, batch)
    graphdef, params, rest = nnx.split(model, _not_backbone_param, ...)
    (total, (parts, out)), head_stats = jax.jit(
        lambda p, r, x: (lambda m: (head_fn(m, x), nnx.state(m, nnx.BatchStat)))(
            nnx.merge(graphdef, p, r)
        )
    )(params, rest, x)
    stats.update({p: v for p, v in _flat(head_stats).items() if p[0] != "base"})

    @jax.jit
    def head_backward(params, rest, x):
        def loss(p, r, x):
            return head_fn(nnx.merge(graphdef, p, r), x)[0]

        param_grads, _, input_grad = jax.grad(loss, argnums=(0, 1, 2))(params, rest, x)
        return param_grads, input_grad

    head_grads, cotangent = head_backward(params, rest, x)
    grads.update(_flat(head_grads))
    for (prefix, nodes, fn), x in zip(reversed(segments), reversed(inputs), strict=True):
        graphdef, params, rest = nnx.split(nodes, nnx.Param, ...)
        segment_grads, cotangent = _segment_backward(graphdef, fn, params, rest, x, cotangent)
        for path, value in _flat(segment_grads).items():
            if fn is _block or path[0] in ("conv1", "bn1"):
                grads[prefix + path] = value
    return total, parts, out, grads, stats


def train_step(dtype: str) -> dict:
    """Forward, loss, gradients (w.r.t. every nnx.Param) and one release-Adam step."""
    ref = reference(dtype)
    model = release_model(dtype, int(ref["weight_seed"]))
    clips, labels = release_batch(dtype)
    names = key_map(model)
    total, parts, out, grads, stats = staged_value_and_grad(model, clips, labels)
    params = _flat(nnx.state(model, nnx.Param))
    assert set(grads) == set(params), sorted(set(grads) ^ set(params))
    tx, _ = create_optimizer(1, **RELEASE_ADAM)

    @jax.jit
    def adam_step(params, grads):
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)

    paths = list(params)
    updated = adam_step([params[p] for p in paths], [grads[p] for p in paths])
    new_params = {p: np.asarray(v) for p, v in zip(paths, updated, strict=True)}
    return dict(
        names=names,
        out=jax.tree.map(np.asarray, out),
        total=float(total),
        ce=float(parts["ce"]),
        triplet=float(parts["triplet"]),
        stats=stats,
        params=params,
        grads=grads,
        new_params=new_params,
    )


def summarise(result: dict, ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The step's values at the reference's sampled entries, PyTorch names and layouts:
    losses, logits/BN features, running statistics (`bn/<name>`), and where gradients were
    computed `grad/<name>`, `grad_norm/<name>`, `param/<name>` and `new_param/<name>`."""
    names = result["names"]
    summary = {
        "train_loss_total": np.asarray(result["total"]),
        "train_loss_ce": np.asarray(result["ce"]),
        "train_loss_triplet": np.asarray(result["triplet"]),
    }
    for k in range(3):
        summary[f"train_logits_{k}"] = result["out"].logits[k]
        summary[f"train_bn_feature_{k}"] = result["out"].features[k]
    for name in map(str, ref["bn_names"]):
        value = to_torch(result["stats"][names[name]], name).reshape(-1)
        summary[f"bn/{name}"] = value[ref[f"bn_index/{name}"]]
    if "grads" in result:
        for name in map(str, ref["grad_names"]):
            index = ref[f"grad_index/{name}"]
            path = names[name]
            grad = to_torch(result["grads"][path], name).reshape(-1)
            summary[f"grad/{name}"] = grad[index]
            summary[f"grad_norm/{name}"] = np.asarray(np.linalg.norm(grad))
            summary[f"param/{name}"] = to_torch(result["params"][path], name).reshape(-1)[index]
            summary[f"new_param/{name}"] = to_torch(result["new_params"][path], name).reshape(-1)[
                index
            ]
    return summary


def main(argv: list[str]) -> None:
    dtype, out_path = argv
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise SystemExit("the float64 step needs JAX_ENABLE_X64=1")
    start = time.perf_counter()
    summary = summarise(train_step(dtype), reference(dtype))
    summary["seconds"] = np.asarray(time.perf_counter() - start)
    np.savez(out_path, **summary)


if __name__ == "__main__":
    main(sys.argv[1:])

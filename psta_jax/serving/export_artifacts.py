"""A trained model's embedding function as files that run without psta_jax.

    OUT/embed.jax_exported   jax.export serialization, symbolic batch dimension `b`
    OUT/saved_model/         TensorFlow SavedModel (jax2tf, native serialization), signature
                             `serving_default`: clips -> embeddings
    OUT/export.json          input/output shapes, platforms, checkpoint identity, how to load

Both take uint8 clips (B, T, H, W, 3) (RGB frames resized to the model's H x W) and return
(B, feature_dim) float32 embeddings of the eval-mode model; the ImageNet normalisation is
inside. A tracklet's embedding is the mean of its clips' embeddings (as evaluation does).
Loading:

    exported = jax.export.deserialize(open("embed.jax_exported", "rb").read())
    embeddings = exported.call(clips)                      # jax only
    model = tf.saved_model.load("saved_model")
    embeddings = model.signatures["serving_default"](clips=clips)["embeddings"]  # TF only
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from psta_jax.input.preprocess import clip_preparation
from psta_jax.serving.errors import ServingInputError
from psta_jax.training.trained_model import TrainedModel

_NORMALISE_EPS = 1e-12

EXPORTED_FILE = "embed.jax_exported"
SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "export.json"
PLATFORMS = ("cpu", "cuda", "tpu")
SIGNATURE = "serving_default"
INPUT_NAME, OUTPUT_NAME = "clips", "embeddings"
BATCH = "b"


def embedding_function(
    model: TrainedModel, *, l2_normalise: bool = False
) -> Callable[[jax.Array], jax.Array]:
    """uint8 clips (B, T, H, W, 3) -> (B, feature_dim) float32 eval-mode embeddings, with the
    eval input's normalisation inside and the model's weights closed over (constants).

    `l2_normalise` divides each clip's embedding by its L2 norm.
    """
    prepare = clip_preparation(model.eval_input)
    params = jax.device_get(model.params)
    model_state = jax.device_get(model.model_state)
    clip_shape = model.clip_shape

    def embed(clips: jax.Array) -> jax.Array:
        chex.assert_rank(clips, 5)
        chex.assert_type(clips, jnp.uint8)
        if tuple(clips.shape[1:]) != clip_shape:
            raise ValueError(
                f"expected clips (B, {', '.join(map(str, clip_shape))}), got {clips.shape}"
            )
        network = nnx.merge(model.graphs.eval, params, model_state)
        out = network(prepare(clips, None)).astype(jnp.float32)
        if l2_normalise:
            norm = jnp.linalg.norm(out, axis=1, keepdims=True)
            out = out / jnp.maximum(norm, _NORMALISE_EPS)
        return out

    return embed


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if not platforms or unknown:
        raise ServingInputError(
            f"platforms must be a non-empty subset of {PLATFORMS}, got {list(platforms)}"
        )
    return tuple(platforms)


def export_function(
    embed: Callable[[jax.Array], jax.Array],
    clip_shape: tuple[int, ...],
    platforms: Sequence[str] = ("cpu",),
) -> jax.export.Exported:
    """`embed` exported with a symbolic batch: uint8 (b, *clip_shape) -> (b, D) float32."""
    batch = jax.export.symbolic_shape(BATCH)
    spec = jax.ShapeDtypeStruct((*batch, *clip_shape), jnp.uint8)
    return jax.export.export(jax.jit(embed), platforms=check_platforms(platforms))(spec)


def save_saved_model(
    embed: Callable[[jax.Array], jax.Array],
    clip_shape: tuple[int, ...],
    path: pathlib.Path,
    platforms: Sequence[str] = ("cpu",),
) -> pathlib.Path:
    """A TensorFlow SavedModel of `embed` (jax2tf, native serialization) with the signature
    `serving_default`: {'clips': uint8 (None, *clip_shape)} -> {'embeddings': float32}."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(
        embed,
        polymorphic_shapes=[f"({BATCH}, ...)"],
        with_gradient=False,
        native_serialization_platforms=check_platforms(platforms),
    )
    module = tf.Module()

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, *clip_shape], tf.uint8, name=INPUT_NAME)],
    )
    def serve(clips):
        return {OUTPUT_NAME: converted(clips)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})
    return path


def export(
    model: TrainedModel,
    out_dir: str | pathlib.Path,
    *,
    platforms: Sequence[str] = PLATFORMS,
    l2_normalise: bool = False,
    saved_model: bool = True,
) -> dict[str, pathlib.Path]:
    """Writes the jax.export artifact, the SavedModel (unless `saved_model` is False) and
    export.json into `out_dir`; returns their paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    embed = embedding_function(model, l2_normalise=l2_normalise)
    exported = export_function(embed, model.clip_shape, platforms)
    written = {"jax_exported": out_dir / EXPORTED_FILE}
    written["jax_exported"].write_bytes(exported.serialize())
    if saved_model:
        written["saved_model"] = save_saved_model(
            embed, model.clip_shape, out_dir / SAVED_MODEL_DIR, platforms
        )
    seq_len, height, width, _ = model.clip_shape
    metadata = {
        "input": {
            "name": INPUT_NAME,
            "shape": [None, seq_len, height, width, 3],
            "dtype": "uint8",
            "layout": "clips of RGB frames, (batch, T, H, W, 3)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": [None, model.feature_dim],
            "dtype": "float32",
            "l2_normalised": l2_normalise,
        },
        "platforms": list(exported.platforms),
        "checkpoint": {
            "config_hash": model.identity.config_hash,
            "step": model.identity.step,
            "path": model.identity.path,
        },
        "test_sampler": model.eval_input.sampler,
        "files": {name: path.name for name, path in written.items()},
        "load": {
            "jax": "jax.export.deserialize(bytearray(open(path, 'rb').read())).call(clips)",
            "tensorflow": f"tf.saved_model.load(path).signatures['{SIGNATURE}']"
            f"({INPUT_NAME}=clips)['{OUTPUT_NAME}']",
        },
    }
    written["metadata"] = out_dir / METADATA_FILE
    written["metadata"].write_text(json.dumps(metadata, indent=2))
    return written

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

Everything is built in a staging folder inside OUT and moved into place at the end
(`runtime.atomic_files`): a failure (a full or read-only disk) or Ctrl-C leaves an earlier
export byte-identical. export.json lists what an export wrote (`files`); a new export
replaces those entries and removes the ones it no longer writes (an old saved_model/ after
`--nosaved_model`), and never touches other files in OUT. An artifact name in OUT that no
export.json claims is an error, not overwritten.
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
from psta_jax.runtime import atomic_files
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
ARTIFACTS = (EXPORTED_FILE, SAVED_MODEL_DIR)  # what an export may write besides export.json


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


def earlier_export(out_dir: pathlib.Path) -> set[str]:
    """The artifact names (of `ARTIFACTS`) an earlier export wrote in `out_dir`, from its
    export.json. A ServingInputError when `out_dir` holds an artifact name no export.json
    claims, or an export.json that is not one of ours: export overwrites only its own."""
    manifest = out_dir / METADATA_FILE
    present = [name for name in ARTIFACTS if (out_dir / name).exists()]
    claimed: set[str] = set()
    if manifest.exists():
        try:
            files = json.loads(manifest.read_text())["files"]
            claimed = {name for name in files.values() if name in ARTIFACTS}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ServingInputError(
                f"--out {out_dir}: {manifest} is not an export.json written by psta-export "
                f"({type(error).__name__}: {error}); export writes only over its own files: "
                "move it, or choose another --out"
            ) from error
    unclaimed = [name for name in present if name not in claimed]
    if unclaimed:
        raise ServingInputError(
            f"--out {out_dir}: {' and '.join(unclaimed)} "
            f"{'is' if len(unclaimed) == 1 else 'are'} there but no {METADATA_FILE} of an "
            "earlier export lists it (not written by psta-export, or by an export that did not "
            "finish); export writes only over its own files: move it, or choose another --out"
        )
    return claimed


def export(
    model: TrainedModel,
    out_dir: str | pathlib.Path,
    *,
    platforms: Sequence[str] = PLATFORMS,
    l2_normalise: bool = False,
    saved_model: bool = True,
) -> dict[str, pathlib.Path]:
    """Writes the jax.export artifact, the SavedModel (unless `saved_model` is False) and
    export.json into `out_dir`, replacing an earlier export only once all are complete (see
    the module docstring); returns their paths."""
    out_dir = atomic_files.prepare_folder_target(out_dir, "--out")
    earlier = earlier_export(out_dir)
    embed = embedding_function(model, l2_normalise=l2_normalise)
    exported = export_function(embed, model.clip_shape, platforms)
    atomic_files.raise_if_stopped()
    with atomic_files.staging_folder(out_dir, "the export in") as stage:
        staged = {"jax_exported": stage / EXPORTED_FILE}
        staged["jax_exported"].write_bytes(exported.serialize())
        if saved_model:
            staged["saved_model"] = save_saved_model(
                embed, model.clip_shape, stage / SAVED_MODEL_DIR, platforms
            )
        metadata = _metadata(model, exported, l2_normalise, staged)
        (stage / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        atomic_files.raise_if_stopped()
        for path in staged.values():
            atomic_files.move_into_place(path, out_dir / path.name)
        for name in sorted(earlier - {path.name for path in staged.values()}):
            atomic_files.remove_output(out_dir / name)
        atomic_files.move_into_place(stage / METADATA_FILE, out_dir / METADATA_FILE)
    written = {name: out_dir / path.name for name, path in staged.items()}
    written["metadata"] = out_dir / METADATA_FILE
    return written


def _metadata(
    model: TrainedModel,
    exported: jax.export.Exported,
    l2_normalise: bool,
    written: dict[str, pathlib.Path],
) -> dict:
    """export.json: shapes, platforms, the checkpoint, the files written, how to load them."""
    seq_len, height, width, _ = model.clip_shape
    return {
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

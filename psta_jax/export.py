"""Export a trained checkpoint's embedding function for serving (console script: psta-export).

    python -m psta_jax.export --checkpoint=CKPT --out=DIR [--platforms=cpu,cuda,tpu]

writes DIR/embed.jax_exported (jax.export, symbolic batch; load with
`jax.export.deserialize`, no psta_jax needed), DIR/saved_model/ (TensorFlow SavedModel via
jax2tf native serialization, signature `serving_default`: uint8 `clips` (B, T, H, W, 3) ->
float32 `embeddings` (B, D); TensorFlow alone loads it, as TF Serving does) and
DIR/export.json (shapes, platforms, the checkpoint's identity and the files written). See
psta_jax.serving.export_artifacts and docs/serving.md.

The files are built in a staging folder inside DIR and moved into place at the end: a
failure (a full or read-only disk), Ctrl-C (exit 130) or SIGTERM (exit 143) leaves an earlier
export byte-identical. A new export replaces what an earlier one listed in its export.json
(an old saved_model/ is removed after --nosaved_model) and no other file in DIR.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from psta_jax.runtime import atomic_files, cli


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    cli.define_checkpoint_flag(values)
    flags.DEFINE_string("out", None, "The output folder.", flag_values=values, required=True)
    flags.DEFINE_list(
        "platforms",
        None,
        "Platforms to lower for, a subset of cpu,cuda,tpu (default: all three).",
        flag_values=values,
    )
    flags.DEFINE_bool(
        "normalise",
        False,
        "L2-normalise each clip's embedding inside the exported function.",
        flag_values=values,
    )
    flags.DEFINE_bool(
        "saved_model",
        True,
        "Write the TensorFlow SavedModel too (--nosaved_model: only the jax.export artifact).",
        flag_values=values,
    )


def _run(values: flags.FlagValues) -> dict:
    from psta_jax.serving import export_artifacts  # noqa: PLC0415 (after the CPU setup)

    chosen = [p.strip() for p in values.platforms or export_artifacts.PLATFORMS if p.strip()]
    platforms = export_artifacts.check_platforms(chosen)
    # Before the long part: --out is no file, can be written, holds no files of others'.
    export_artifacts.earlier_export(atomic_files.prepare_folder_target(values.out, "--out"))
    with atomic_files.deferred_stop_signals():
        return _export(values, platforms)


def _export(values: flags.FlagValues, platforms: tuple[str, ...]) -> dict:
    from psta_jax.serving import embedder, export_artifacts  # noqa: PLC0415 (after the CPU setup)

    model = embedder.load_model(values.checkpoint)
    written = export_artifacts.export(
        model,
        values.out,
        platforms=platforms,
        l2_normalise=values.normalise,
        saved_model=values.saved_model,
    )
    for path in written.values():
        print(f"wrote {path}")
    return written


main = cli.Command(
    name="psta-export",
    summary="Export a checkpoint's embedding function (jax.export and a TensorFlow SavedModel).",
    define_flags=_define_flags,
    run=_run,
)

if __name__ == "__main__":
    main.entry()

"""Embed tracklets with a trained checkpoint (console script: psta-embed).

    python -m psta_jax.embed --checkpoint=CKPT --tracklets=FOLDER --out=FILE.npz|FILE.parquet
    python -m psta_jax.embed --checkpoint=CKPT --split=mars:query --out=FILE.parquet

CKPT is a training workdir (its best step, else its latest), a `checkpoints/` folder, one
step folder, or a converted release checkpoint. FOLDER holds one sub-folder of .jpg/.png
frames per tracklet (name order); identities and cameras come from FOLDER/labels.csv
(`tracklet,pid,camera`) or `<pid>_<camera>_<anything>` sub-folder names. `--split` embeds a
prepared TFDS split (from `--data_dir`, default the checkpoint config's). Every tracklet is
embedded with the checkpoint config's test sampler and averaged over its clips, as evaluation
does, on all devices (docs/serving.md).

The output is written under a temporary name and renamed onto `--out` after the last batch
(`runtime.atomic_files`): a failure (a full or read-only disk), Ctrl-C (exit 130) or SIGTERM
(exit 143) leaves an earlier file there byte-identical. Both signals are taken between
batches, never inside TensorFlow's or JAX's own code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from psta_jax.runtime import atomic_files, cli
from psta_jax.serving import embedding_file
from psta_jax.serving.errors import ServingInputError


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    cli.define_checkpoint_flag(values)
    flags.DEFINE_string(
        "tracklets",
        None,
        "A folder with one sub-folder of frames per tracklet.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "split",
        None,
        "A prepared TFDS split, DATASET:SPLIT (e.g. mars:query).",
        flag_values=values,
    )
    flags.mark_flags_as_mutual_exclusive(["tracklets", "split"], required=True, flag_values=values)
    flags.DEFINE_string(
        "out", None, "The output file, .npz or .parquet.", flag_values=values, required=True
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "The TFDS data folder for --split (default: the checkpoint config's).",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "batch_size",
        None,
        "Clips per batch over all devices (default: the checkpoint config's eval batch).",
        flag_values=values,
        lower_bound=1,
    )
    flags.DEFINE_bool(
        "normalise", False, "L2-normalise each tracklet's embedding.", flag_values=values
    )
    flags.DEFINE_bool(
        "progress", True, "Show a progress bar (--noprogress: none).", flag_values=values
    )


def _run(values: flags.FlagValues) -> embedding_file.Embeddings:
    if not values.out.endswith(embedding_file.SUFFIXES):
        raise ServingInputError(
            f"--out {values.out}: expected a file ending in one of {embedding_file.SUFFIXES}"
        )
    # Before the long part: --out is no folder, and its folder can be written.
    atomic_files.prepare_file_target(values.out, "--out")
    with atomic_files.deferred_stop_signals():
        try:
            return _embed(values)
        except KeyboardInterrupt:
            print(
                f"stopped: {values.out} was not written (an earlier file there is unchanged)",
                file=sys.stderr,
            )
            raise


def _embed(values: flags.FlagValues) -> embedding_file.Embeddings:
    from psta_jax.serving import embedder  # noqa: PLC0415 (imports JAX, after the CPU setup)

    common = dict(
        batch_size=values.batch_size,
        l2_normalise=values.normalise,
        show_progress=values.progress,
    )
    if values.tracklets:
        embeddings = embedder.embed_folder(values.checkpoint, values.tracklets, **common)
    else:
        embeddings = embedder.embed_split(
            values.checkpoint, values.split, data_dir=values.data_dir, **common
        )
    path = embedding_file.save(embeddings, values.out)
    labels = "with pids and cameras" if embeddings.has_labels else "without identities"
    print(
        f"wrote {path}: {len(embeddings.names)} tracklets x {embeddings.embeddings.shape[1]} "
        f"({labels}; {embeddings.checkpoint.describe()})"
    )
    return embeddings


main = cli.Command(
    name="psta-embed",
    summary="Embed tracklets (a folder, or a prepared split) with a trained checkpoint into a "
    ".npz or .parquet file.",
    define_flags=_define_flags,
    run=_run,
)

if __name__ == "__main__":
    main.entry()

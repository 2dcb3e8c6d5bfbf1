"""Command line: embed new tracklets with a trained checkpoint into an embeddings file.

    python -m psta_jax.embed --checkpoint CKPT --tracklets FOLDER --out FILE.npz|FILE.parquet
    python -m psta_jax.embed --checkpoint CKPT --split mars:query --out FILE.parquet

CKPT is a training workdir (its best step, else its latest), a `checkpoints/` folder, one
step folder, or a converted release checkpoint. FOLDER holds one sub-folder of .jpg/.png
frames per tracklet (name order); identities and cameras come from FOLDER/labels.csv
(`tracklet,pid,camera`) or `<pid>_<camera>_<anything>` sub-folder names. `--split` embeds a
prepared TFDS split (from `--data-dir`, default the checkpoint config's). Every tracklet is
embedded with the checkpoint config's test sampler and averaged over its clips, as evaluation
does, on all devices, with a progress bar and clips/s at the end. Tracklets shorter than the
clip length are padded by the sampler (it repeats frames); empty folders, unreadable frames
and a checkpoint that does not match its config end with one error message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from psta_jax import errors, xla_cpu
from psta_jax.serving import embedding_file
from psta_jax.serving.errors import ServingInputError

# TensorFlow and JAX (input_pipeline, serving.embedder) are imported once main() has set up
# the CPU: glibc's heap settings (xla_cpu.keep_freed_memory) hold for threads started after.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m psta_jax.embed",
        description="Embed tracklets with a trained PSTA checkpoint (.npz or .parquet out).")
    parser.add_argument("--checkpoint", required=True,
                        help="workdir, checkpoints/ folder, step folder or converted checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tracklets", help="folder with one sub-folder of frames per tracklet")
    source.add_argument("--split", help="a prepared TFDS split, DATASET:SPLIT (e.g. mars:query)")
    parser.add_argument("--out", required=True, help="output file, .npz or .parquet")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data dir for --split (default: the checkpoint config's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per batch over all devices (default: the config's eval batch)")
    parser.add_argument("--normalise", action="store_true",
                        help="L2-normalise each tracklet's embedding before saving")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an expected error")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> embedding_file.Embeddings:
    if not args.out.endswith(embedding_file.SUFFIXES):
        raise ServingInputError(f"--out {args.out}: expected a file ending in one of "
                                f"{embedding_file.SUFFIXES}")
    from psta_jax.serving import embedder  # noqa: PLC0415 (after the CPU setup)

    common = dict(batch_size=args.batch_size, l2_normalise=args.normalise,
                  show_progress=not args.no_progress)
    if args.tracklets:
        embeddings = embedder.embed_folder(args.checkpoint, args.tracklets, **common)
    else:
        embeddings = embedder.embed_split(args.checkpoint, args.split, data_dir=args.data_dir,
                                          **common)
    path = embedding_file.save(embeddings, args.out)
    labels = "with pids and cameras" if embeddings.has_labels else "without identities"
    print(f"wrote {path}: {len(embeddings.names)} tracklets x "
          f"{embeddings.embeddings.shape[1]} ({labels}; {embeddings.checkpoint.describe()})")
    return embeddings


def main(argv: Sequence[str] | None = None) -> embedding_file.Embeddings:
    xla_cpu.configure_for_cpu_if_needed()  # before JAX and TensorFlow start their threads
    from psta_jax import input_pipeline  # noqa: PLC0415 (after the CPU setup)

    input_pipeline.disable_tf_accelerators()  # tf.data decodes on the host
    args = _parse_args(argv)
    return errors.run_cli(lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    main(sys.argv[1:])

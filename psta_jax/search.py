"""Command line: rank gallery tracklets for query tracklets from their embeddings.

    python -m psta_jax.search --gallery G.npz --query Q.npz [--top-k 10] [--out DIR]
    python -m psta_jax.search --gallery G.npz --query FOLDER --checkpoint CKPT

G and Q are embedding files written by `python -m psta_jax.embed` (.npz or .parquet); Q may
also be a folder of tracklet sub-folders, embedded on the fly with `--checkpoint` (the
checkpoint that embedded G). Prints each query's ranked gallery (name, distance, pid/camera
when known) and, when both files know identities, CMC/mAP from the evaluator under the
protocol (default: the one the files record, e.g. `mars` for a MARS split; else `duke`, i.e.
query vs gallery as given). `--out DIR` writes a retrieval sheet per query, rankings.csv and
index.html (see psta_jax.serving.report_page). Bad input ends with one error message.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from psta_jax import errors, evaluation, xla_cpu
from psta_jax.serving import embedding_file, ranking, report_page
from psta_jax.serving.errors import ServingInputError


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m psta_jax.search",
        description="Rank gallery tracklets for query tracklets (embeddings from "
                    "python -m psta_jax.embed).")
    parser.add_argument("--gallery", required=True, help="gallery embeddings (.npz / .parquet)")
    parser.add_argument("--query", required=True,
                        help="query embeddings (.npz / .parquet), or a folder of tracklet "
                             "sub-folders to embed with --checkpoint")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint that embeds a query folder (the gallery's checkpoint)")
    parser.add_argument("--top-k", type=int, default=10, help="gallery tracklets per query")
    parser.add_argument("--distance", choices=evaluation.METRICS, default="cosine")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    parser.add_argument("--exclude-same-camera", action="store_true",
                        help="hide gallery tracklets from the query's camera in the lists")
    parser.add_argument("--protocol", choices=sorted(evaluation.PROTOCOLS), default=None,
                        help="evaluation protocol (default: the files' recorded one, else duke)")
    parser.add_argument("--out", default=None,
                        help="folder for retrieval sheets, rankings.csv and index.html")
    parser.add_argument("--max-sheets", type=int, default=None,
                        help="draw sheets for the first N queries only (default: all)")
    parser.add_argument("--frames-per-tracklet", type=int, default=4,
                        help="frames shown per tracklet in a sheet")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an expected error")
    return parser.parse_args(argv)


def load_query(args: argparse.Namespace) -> embedding_file.Embeddings:
    path = pathlib.Path(args.query)
    if not path.is_dir():
        return embedding_file.load(path)
    if not args.checkpoint:
        raise ServingInputError(f"--query {path} is a folder: pass --checkpoint (the checkpoint "
                                "that embedded the gallery) to embed it")
    from psta_jax.serving import embedder

    return embedder.embed_folder(args.checkpoint, path)


def run(args: argparse.Namespace) -> ranking.SearchResult:
    gallery = embedding_file.load(args.gallery)
    query = load_query(args)
    options = ranking.SearchOptions(distance=args.distance, rerank=args.rerank,
                                    exclude_same_camera=args.exclude_same_camera,
                                    top_k=args.top_k, protocol=args.protocol)
    result = ranking.search(query, gallery, options)
    print(ranking.format_rankings(query, result))
    if result.metrics is not None:
        print(evaluation.format_report(result.metrics))
    if args.out:
        page = report_page.write_report(query, gallery, result, args.out,
                                        frames_per_tracklet=args.frames_per_tracklet,
                                        max_sheets=args.max_sheets)
        print(f"wrote {page}")
    return result


def main(argv: Sequence[str] | None = None) -> ranking.SearchResult:
    xla_cpu.configure_for_cpu_if_needed()  # before JAX and TensorFlow start their threads
    from psta_jax import input_pipeline  # noqa: PLC0415 (after the CPU setup)

    input_pipeline.disable_tf_accelerators()  # tf.data decodes on the host
    args = _parse_args(argv)
    return errors.run_cli(lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    main(sys.argv[1:])

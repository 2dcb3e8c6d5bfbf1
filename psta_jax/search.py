"""Rank gallery tracklets for query tracklets from their embeddings (console script:
psta-search).

    python -m psta_jax.search --gallery=G.npz --query=Q.npz [--top_k=10] [--out=DIR]
    python -m psta_jax.search --gallery=G.npz --query=FOLDER --checkpoint=CKPT

G and Q are embedding files written by `python -m psta_jax.embed` (.npz or .parquet); Q may
also be a folder of tracklet sub-folders, embedded on the fly with `--checkpoint` (the
checkpoint that embedded G). Prints each query's ranked gallery (name, distance, pid/camera
when known; cosine is printed as 1 - cosine similarity) and, when both files know
identities, CMC/mAP from the evaluator under the protocol (default: the one the files
record, e.g. `mars` for a MARS split; else `duke`, i.e. query vs gallery as given).
`--out=DIR` writes a retrieval sheet per query, rankings.csv and index.html
(psta_jax.serving.report_page; docs/serving.md), built in a staging folder and moved into
place at the end: a failure or Ctrl-C leaves an earlier page in DIR as it was. When no query's
identity is in the gallery (new identities), the rankings are printed and CMC/mAP skipped with
a note saying why.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from absl import flags

from psta_jax import evaluation
from psta_jax.runtime import atomic_files, cli
from psta_jax.serving import embedding_file, ranking
from psta_jax.serving.errors import ServingInputError


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string(
        "gallery", None, "Gallery embeddings (.npz or .parquet).", flag_values=values, required=True
    )
    flags.DEFINE_string(
        "query",
        None,
        "Query embeddings (.npz or .parquet), or a folder of tracklet sub-folders to embed "
        "with --checkpoint.",
        flag_values=values,
        required=True,
    )
    cli.define_checkpoint_flag(
        values, required=False, purpose=": embeds a query folder (the gallery's checkpoint)"
    )
    flags.DEFINE_integer(
        "top_k", 10, "Gallery tracklets listed per query.", flag_values=values, lower_bound=1
    )
    flags.DEFINE_enum(
        "distance", "cosine", list(evaluation.METRICS), "The distance.", flag_values=values
    )
    flags.DEFINE_bool("rerank", False, "k-reciprocal re-ranking.", flag_values=values)
    flags.DEFINE_bool(
        "exclude_same_camera",
        False,
        "Hide gallery tracklets of the query's camera from the lists.",
        flag_values=values,
    )
    flags.DEFINE_enum(
        "protocol",
        None,
        sorted(evaluation.PROTOCOLS),
        "The evaluation protocol (default: the files' recorded one, else duke).",
        flag_values=values,
    )
    flags.DEFINE_string(
        "out", None, "A folder for retrieval sheets, rankings.csv, index.html.", flag_values=values
    )
    flags.DEFINE_integer(
        "max_sheets",
        None,
        "Draw sheets for the first N queries only.",
        flag_values=values,
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "frames_per_tracklet",
        4,
        "Frames shown per tracklet in a sheet.",
        flag_values=values,
        lower_bound=1,
    )


def load_query(values: flags.FlagValues) -> embedding_file.Embeddings:
    path = pathlib.Path(values.query)
    if not path.is_dir():
        return embedding_file.load(path)
    if not values.checkpoint:
        raise ServingInputError(
            f"--query {path} is a folder: pass --checkpoint (the checkpoint that embedded the "
            "gallery) to embed it"
        )
    from psta_jax.serving import embedder  # noqa: PLC0415 (imports JAX)

    return embedder.embed_folder(values.checkpoint, path)


def _run(values: flags.FlagValues) -> ranking.SearchResult:
    if values.out:  # before the long part: --out is no file, and it can be written
        atomic_files.prepare_folder_target(values.out, "--out")
    with atomic_files.deferred_stop_signals():
        return _search(values)


def _search(values: flags.FlagValues) -> ranking.SearchResult:
    gallery = embedding_file.load(values.gallery)
    query = load_query(values)
    options = ranking.SearchOptions(
        distance=values.distance,
        rerank=values.rerank,
        exclude_same_camera=values.exclude_same_camera,
        top_k=values.top_k,
        protocol=values.protocol,
    )
    result = ranking.search(query, gallery, options)
    print(ranking.format_rankings(query, result))
    if result.metrics is not None:
        print(evaluation.format_report(result.metrics))
    if result.note:
        print(result.note)
    if values.out:
        from psta_jax.serving import report_page  # noqa: PLC0415 (imports matplotlib)

        page = report_page.write_report(
            query,
            gallery,
            result,
            values.out,
            frames_per_tracklet=values.frames_per_tracklet,
            max_sheets=values.max_sheets,
        )
        print(f"wrote {page}")
    return result


main = cli.Command(
    name="psta-search",
    summary="Rank gallery tracklets for query tracklets from their embeddings; CMC/mAP when "
    "identities are known; sheets and a page with --out.",
    define_flags=_define_flags,
    run=_run,
)

if __name__ == "__main__":
    main.entry()

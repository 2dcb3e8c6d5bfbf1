"""A search's results on disk: one retrieval sheet per query (Figure 5's layout, drawn by
`inspection.plot_retrieval`), `rankings.csv`, and `index.html`, one page that shows them.

    OUT/index.html            metrics (when identities are known), options, and per query its
                              sheet and its ranked list; inline CSS, no scripts, no links out
    OUT/sheets/query_00000.png  ...
    OUT/rankings.csv          query, rank, gallery name, distance, pid, camera, match

The page refers to the sheets by relative paths, so OUT can be moved or zipped as a whole.
Everything is built in a staging folder inside OUT and moved into place at the end
(`runtime.atomic_files`): a failure (a full or read-only disk) or Ctrl-C leaves an earlier
page byte-identical. Sheets of an earlier search that this one does not draw are removed;
other files in OUT are never touched.
"""

from __future__ import annotations

import csv
import html
import pathlib
import re

from psta_jax import evaluation
from psta_jax.inspection import plot_retrieval
from psta_jax.runtime import atomic_files
from psta_jax.serving.embedding_file import Embeddings
from psta_jax.serving.errors import ServingInputError
from psta_jax.serving.ranking import SearchResult
from psta_jax.serving.tracklets import FrameReader

SHEETS_DIR = "sheets"
PAGE = "index.html"
RANKINGS = "rankings.csv"
_SHEET_FILE = re.compile(r"^query_\d{5}\.png$")  # the names sheet_name gives

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
pre { background: #f4f4f4; padding: 0.8em; }
section { border-top: 1px solid #ccc; padding-top: 1em; margin-top: 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.15em 0.7em; text-align: right; }
td.name { text-align: left; font-family: monospace; }
tr.match { color: #1a7f1a; } tr.miss { color: #b22; }
img { max-width: 100%; }
""".strip()


def sheet_name(row: int) -> str:
    return f"{SHEETS_DIR}/query_{row:05d}.png"


def _readers(query: Embeddings, gallery: Embeddings) -> dict[str, FrameReader]:
    readers = {
        "query": FrameReader(query.source, query.names),
        "gallery": FrameReader(gallery.source, gallery.names),
    }
    for split, reader in readers.items():
        if not reader.available():
            raise ServingInputError(
                f"--out draws the tracklets' frames, but the {split} file's source "
                f"{reader.source or '(none recorded)'} is not available here"
            )
    return readers


def write_sheets(
    query: Embeddings,
    gallery: Embeddings,
    result: SearchResult,
    out_dir: pathlib.Path,
    *,
    frames_per_tracklet: int = 4,
    max_sheets: int | None = None,
) -> list[pathlib.Path]:
    """One PNG per query (the first `max_sheets`), under out_dir/sheets/."""
    readers = _readers(query, gallery)
    count = len(result.ranked) if max_sheets is None else min(max_sheets, len(result.ranked))
    paths = []
    for row in range(count):
        atomic_files.raise_if_stopped()  # Ctrl-C between sheets
        entries = result.ranked[row]
        ranked_frames = [readers[e.split].frames(e.position, frames_per_tracklet) for e in entries]
        label = f"query {row}\n{query.names[row]}"
        if query.has_labels:
            label += f"\npid {query.pids[row]} cam {query.camids[row]}"
        path = out_dir / sheet_name(row)
        fig = plot_retrieval(
            readers["query"].frames(row, frames_per_tracklet),
            ranked_frames,
            entries,
            query_label=label,
            title=f"top-{len(entries)} of {query.names[row]}",
            path=path,
        )
        fig.clear()
        paths.append(path)
    return paths


def write_rankings_csv(query: Embeddings, result: SearchResult, path: pathlib.Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["query", "rank", "gallery", "distance", "pid", "camera", "match"])
        for row, entries in enumerate(result.ranked):
            for entry, index in zip(entries, result.top_indices[row], strict=True):
                writer.writerow(
                    [
                        query.names[row],
                        entry.rank,
                        result.names[index],
                        f"{entry.distance:.6f}",
                        entry.pid if entry.pid >= 0 else "",
                        entry.camid if entry.camid >= 0 else "",
                        "" if entry.match is None else int(entry.match),
                    ]
                )


def page_html(query: Embeddings, result: SearchResult, sheets: int) -> str:
    """The page: a summary, then per query its sheet (if drawn) and ranked list."""
    esc = html.escape
    options = result.options
    summary = (
        f"protocol {result.protocol}, distance: "
        f"{evaluation.REPORTED_AS[options.distance]}, re-ranking "
        f"{'on' if options.rerank else 'off'}, same-camera results "
        f"{'hidden' if options.exclude_same_camera else 'shown'}, top-{options.top_k}; "
        f"{len(result.ranked)} queries, {len(result.names)} gallery tracklets; "
        f"checkpoint {query.checkpoint.describe()}"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>psta-jax search</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>psta-jax search</h1>",
        f"<p>{esc(summary)}</p>",
    ]
    if result.metrics is not None:
        parts.append(f"<pre>{esc(evaluation.format_report(result.metrics))}</pre>")
    if result.note:
        parts.append(f'<p class="note">{esc(result.note)}</p>')
    for row, entries in enumerate(result.ranked):
        known = (
            f" &middot; pid {query.pids[row]} &middot; camera {query.camids[row]}"
            if query.has_labels
            else ""
        )
        parts.append(
            f'<section id="q{row}"><h2>query {row}: {esc(str(query.names[row]))}{known}</h2>'
        )
        if row < sheets:
            parts.append(f'<img src="{sheet_name(row)}" alt="retrieval sheet of query {row}">')
        parts.append(
            "<table><tr><th>rank</th><th>gallery tracklet</th><th>distance</th>"
            "<th>pid</th><th>camera</th></tr>"
        )
        for entry, index in zip(entries, result.top_indices[row], strict=True):
            css = {True: "match", False: "miss", None: ""}[entry.match]
            parts.append(
                f'<tr class="{css}"><td>{entry.rank}</td>'
                f'<td class="name">{esc(str(result.names[index]))}</td>'
                f"<td>{entry.distance:.4f}</td><td>{entry.pid if entry.pid >= 0 else ''}</td>"
                f"<td>{entry.camid if entry.camid >= 0 else ''}</td></tr>"
            )
        parts.append("</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    query: Embeddings,
    gallery: Embeddings,
    result: SearchResult,
    out_dir: str | pathlib.Path,
    *,
    frames_per_tracklet: int = 4,
    max_sheets: int | None = None,
) -> pathlib.Path:
    """Sheets, rankings.csv and index.html into `out_dir`, replacing an earlier page only once
    the new one is complete (see the module docstring); returns the page's path."""
    if frames_per_tracklet < 1:
        raise ServingInputError(
            f"frames per tracklet must be at least 1, got {frames_per_tracklet}"
        )
    if max_sheets is not None and max_sheets < 0:
        raise ServingInputError(f"max sheets must be 0 or more, got {max_sheets}")
    out_dir = atomic_files.prepare_folder_target(out_dir, "--out")
    for name in (SHEETS_DIR, RANKINGS, PAGE):
        kind_ok = pathlib.Path.is_dir if name == SHEETS_DIR else pathlib.Path.is_file
        if (out_dir / name).exists() and not kind_ok(out_dir / name):
            raise atomic_files.OutputError(
                f"--out {out_dir}: {out_dir / name} exists and is not the "
                f"{'folder' if name == SHEETS_DIR else 'file'} a search page writes there; "
                "move it or choose another --out"
            )
    with atomic_files.staging_folder(out_dir, "the search page in") as stage:
        (stage / SHEETS_DIR).mkdir()
        sheets = write_sheets(
            query,
            gallery,
            result,
            stage,
            frames_per_tracklet=frames_per_tracklet,
            max_sheets=max_sheets,
        )
        write_rankings_csv(query, result, stage / RANKINGS)
        (stage / PAGE).write_text(page_html(query, result, len(sheets)), encoding="utf-8")
        atomic_files.raise_if_stopped()
        _publish(stage, out_dir, {path.name for path in sheets})
    return out_dir / PAGE


def _publish(stage: pathlib.Path, out_dir: pathlib.Path, sheets: set[str]) -> None:
    """Moves the staged sheets, rankings.csv and (last) the page into `out_dir`, and removes
    sheets of an earlier search that the new page does not show."""
    (out_dir / SHEETS_DIR).mkdir(exist_ok=True)
    for name in sorted(sheets):
        atomic_files.move_into_place(stage / SHEETS_DIR / name, out_dir / SHEETS_DIR / name)
    for old in (out_dir / SHEETS_DIR).iterdir():
        if _SHEET_FILE.match(old.name) and old.name not in sheets:
            atomic_files.remove_output(old)
    atomic_files.move_into_place(stage / RANKINGS, out_dir / RANKINGS)
    atomic_files.move_into_place(stage / PAGE, out_dir / PAGE)

"""Where a run's scalars go: clu MultiWriters, so every scalar reaches every sink.

Process 0 writes each scalar to the log, to TensorBoard event files in the workdir and to
workdir/metrics.jsonl (one JSON object per write: {"step": s, name: value, ...}); the other
processes only log. A resumed run redoes the steps after its checkpoint, so the rows of
those steps are dropped from metrics.jsonl when the writer opens it: every step appears once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging
from clu import metric_writers
from etils import epath

METRICS_FILE = "metrics.jsonl"


class JsonlWriter(metric_writers.MetricWriter):
    """Scalars as JSON lines, written at once (a killed run keeps every row written).

    Local files are appended to; on object stores (gs://...), which cannot append, the file
    is rewritten whole at each write. Only scalars are recorded; images, texts and other
    summaries go to the other writers of the MultiWriter (TensorBoard).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume_step: int | None = None,
        append: bool | None = None,
    ):
        """`resume_step`: the step training continues from; rows after it are removed.
        `append`: append to the file (default: unless `path` is a URL)."""
        self.path = epath.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            _drop_rows_after(self.path, resume_step)
        self._append = "://" not in os.fspath(path) if append is None else append
        self._lines = [self.path.read_text()] if not self._append and self.path.exists() else []

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        line = json.dumps(row) + "\n"
        if self._append:
            with self.path.open("a") as f:
                f.write(line)
        else:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))

    def write_summaries(self, step, values, metadata=None) -> None:
        del step, values, metadata

    def write_images(self, step, images) -> None:
        del step, images

    def write_videos(self, step, videos) -> None:
        del step, videos

    def write_audios(self, step, audios, *, sample_rate) -> None:
        del step, audios, sample_rate

    def write_texts(self, step, texts) -> None:
        del step, texts

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        del step, arrays, num_buckets

    def write_hparams(self, hparams) -> None:
        del hparams

    def flush(self) -> None:
        pass  # every write is already closed

    def close(self) -> None:
        pass


def _drop_rows_after(path: epath.Path, step: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
    logging.info(
        "%s: dropped %d row(s) after step %d (the resumed run redoes those steps)",
        path,
        len(lines) - len(kept),
        step,
    )


def _row_step(line: str) -> int | None:
    """The step of a metrics.jsonl row; None for a line a killed run left half-written."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def create_metric_writers(
    workdir: str | os.PathLike, *, resume_step: int | None = None, asynchronous: bool = True
) -> tuple[metric_writers.MetricWriter, metric_writers.MetricWriter]:
    """The run's writers: (everything, files only).

    Everything: the log, TensorBoard and metrics.jsonl on process 0, the log elsewhere; files
    only: TensorBoard and metrics.jsonl without the log (for the speed scalars that the
    progress line already shows). With `asynchronous`, the log and TensorBoard writes happen
    on background threads (close or flush before reading them); metrics.jsonl is always
    written at once. Closing the first closes both.
    """
    files: list[metric_writers.MetricWriter] = []
    if jax.process_index() == 0:
        board: metric_writers.MetricWriter = metric_writers.SummaryWriter(os.fspath(workdir))
        files.append(metric_writers.AsyncWriter(board) if asynchronous else board)
        files.append(JsonlWriter(epath.Path(workdir) / METRICS_FILE, resume_step=resume_step))
    log: metric_writers.MetricWriter = metric_writers.LoggingWriter()
    if asynchronous:
        log = metric_writers.AsyncWriter(log)
    file_writer = metric_writers.MultiWriter(files)
    return metric_writers.MultiWriter([log, file_writer]), file_writer

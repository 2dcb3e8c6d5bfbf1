"""Tracklet embeddings of new data with a trained checkpoint, exactly as evaluation computes them.

A tracklet folder (see `tracklets`) or a prepared TFDS split becomes the input pipeline's
`TrackletStore`; the checkpoint's eval pipeline (its test sampler: RRS chunks, or the
release's begin_interval / dense clips) cuts every tracklet into clips, batched over all
devices, and `evaluation.features.tracklet_features` averages each tracklet's clip
embeddings — the code path of the evaluator, so an embedded split ranks exactly as the
evaluator ranks it. Rows may then be L2-normalised (recorded in the file).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from psta_jax import clip_preparation, evaluation, input_pipeline, steps
from psta_jax.evaluation import features as features_lib
from psta_jax.serving import tracklets
from psta_jax.serving.embedding_file import Embeddings
from psta_jax.serving.errors import ServingInputError
from psta_jax.serving.trained_model import TrainedModel
from psta_jax.serving.trained_model import load as load_model


@dataclasses.dataclass(frozen=True)
class Throughput:
    """How long embedding took: all clips, and the clips after the first batch (whose time
    includes compiling the model)."""

    num_clips: int
    seconds: float
    steady_clips: int
    steady_seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.num_clips / max(self.seconds, 1e-9)

    @property
    def steady_clips_per_second(self) -> float:
        return self.steady_clips / max(self.steady_seconds, 1e-9)

    def describe(self) -> str:
        text = (f"{self.num_clips} clips in {self.seconds:.1f} s: "
                f"{self.clips_per_second:.2f} clips/s")
        if self.steady_clips:
            text += (f" ({self.steady_clips_per_second:.2f} clips/s after the first batch, "
                     "which includes compilation)")
        return text


class _Timed(Iterable):
    """Batches passed through, with a progress bar (stderr) and the time between them."""

    def __init__(self, batches: input_pipeline.EvalIterable, show_progress: bool):
        self.batches = batches
        self.show_progress = show_progress and jax.process_index() == 0
        self.marks: list[tuple[float, int]] = []

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(total=self.batches.num_clips, unit="clip", desc="embedding",
                       file=sys.stderr, dynamic_ncols=True)
        self.marks = [(time.perf_counter(), 0)]
        for batch in self.batches:
            clips = int(np.count_nonzero(batch["mask"])) * jax.process_count()
            yield batch
            # The caller has fetched this batch's features when it asks for the next one.
            self.marks.append((time.perf_counter(), clips))
            if bar is not None:
                bar.update(clips)
        if bar is not None:
            bar.close()

    def throughput(self) -> Throughput:
        times = [t for t, _ in self.marks]
        clips = [c for _, c in self.marks]
        return Throughput(num_clips=sum(clips), seconds=times[-1] - times[0],
                          steady_clips=sum(clips[2:]),
                          steady_seconds=times[-1] - times[1] if len(times) > 2 else 0.0)


def embed_store(model: TrainedModel, store: input_pipeline.TrackletStore, *,
                batch_size: int | None = None, show_progress: bool = True
                ) -> tuple[np.ndarray, Throughput]:
    """(N, D) float32 tracklet embeddings of `store` in its order, and the throughput.

    `batch_size` (clips per global batch, rounded up to a multiple of the device count)
    defaults to the checkpoint config's eval batch.
    """
    config = model.config
    if batch_size is not None:
        if batch_size < 1:
            raise ServingInputError(f"--batch-size must be at least 1, got {batch_size}")
        config = config.copy_and_resolve_references()
        config.input.eval_batch_size = batch_size
    embed_fn = steps.compile_embed(model.graphs, model.mesh,
                                   clip_preparation.prepare_eval_clips(config))
    batches = _Timed(input_pipeline.eval_iterator(store, config), show_progress)
    result = features_lib.tracklet_features(
        embed_fn, model.variables["params"], model.variables["model_state"], batches,
        model.mesh)
    if not np.array_equal(result["tracklet_ids"], store.tracklet_ids):
        raise RuntimeError(f"embedded {len(result['tracklet_ids'])} tracklets, expected the "
                           f"{store.num_tracklets} of the input in order")
    return result["features"], batches.throughput()


def _finish(features: np.ndarray, l2_normalise: bool) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return evaluation.l2_normalise(features).astype(np.float32) if l2_normalise else features


def embed_folder(checkpoint: str | os.PathLike | TrainedModel, path: str | os.PathLike, *,
                 batch_size: int | None = None, l2_normalise: bool = False,
                 show_progress: bool = True) -> Embeddings:
    """Embeddings of every tracklet sub-folder of `path` (see `tracklets`)."""
    folder = tracklets.scan_folder(path)
    model = checkpoint if isinstance(checkpoint, TrainedModel) else load_model(checkpoint)
    store = tracklets.read_store(folder)
    features, throughput = embed_store(model, store, batch_size=batch_size,
                                       show_progress=show_progress)
    _report(len(folder.names), throughput)
    return Embeddings(embeddings=_finish(features, l2_normalise), names=list(folder.names),
                      num_frames=folder.num_frames, checkpoint=model.identity,
                      normalised=l2_normalise, pids=folder.pids, camids=folder.camids,
                      source={"kind": "folder", "path": str(folder.root)})


def split_protocol(config, dataset: str) -> str:
    """The evaluation protocol of `dataset`: the run's own when it trained on it."""
    if config.dataset.name == dataset and config.dataset.get("protocol"):
        return config.dataset.protocol
    from psta_jax import datasets

    return datasets.builder_class(dataset).EVAL_PROTOCOL


def split_source(model: TrainedModel, spec: str, data_dir: str | None) -> dict[str, Any]:
    """Where `spec`'s split is prepared: `data_dir`, else the checkpoint config's data_dir
    (and raw_dir / builder config when the checkpoint was trained on that dataset)."""
    dataset, _ = tracklets.parse_split(spec)
    config = model.config
    same = config.dataset.name == dataset
    raw_dir = config.dataset.raw_dir if same and config.dataset.raw_dir else None
    if same and config.dataset.get("synthetic") and raw_dir:
        from psta_jax.datasets import synthetic

        synthetic.ensure(raw_dir)
    return tracklets.split_source(
        spec, data_dir=data_dir or config.data_dir, raw_dir=raw_dir,
        builder_config=(config.dataset.builder_config or None) if same else None)


def embed_split(checkpoint: str | os.PathLike | TrainedModel, spec: str, *,
                data_dir: str | None = None, batch_size: int | None = None,
                l2_normalise: bool = False, show_progress: bool = True) -> Embeddings:
    """Embeddings of every tracklet of a prepared TFDS split, e.g. 'mars:query'; names are
    `<split>_<tracklet id>`."""
    model = checkpoint if isinstance(checkpoint, TrainedModel) else load_model(checkpoint)
    source = split_source(model, spec, data_dir)
    store = tracklets.read_split(source)
    features, throughput = embed_store(model, store, batch_size=batch_size,
                                       show_progress=show_progress)
    _report(store.num_tracklets, throughput)
    return Embeddings(embeddings=_finish(features, l2_normalise),
                      names=[f"{source['split']}_{t}" for t in store.tracklet_ids],
                      num_frames=store.num_frames, checkpoint=model.identity,
                      normalised=l2_normalise, pids=store.pids, camids=store.camids,
                      source=source, protocol=split_protocol(model.config, source["dataset"]))


def _report(num_tracklets: int, throughput: Throughput) -> None:
    if jax.process_index() == 0:
        print(f"embedded {num_tracklets} tracklets on {jax.device_count()} "
              f"{jax.default_backend()} device(s), {throughput.describe()}", file=sys.stderr)

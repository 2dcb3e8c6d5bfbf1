"""Tracklet embeddings of new data with a trained checkpoint, exactly as evaluation computes
them.

A tracklet folder (see `tracklets`) or a prepared TFDS split becomes a `TrackletStore`; the
checkpoint's eval input (its test sampler: RRS chunks, or the release's begin_interval /
dense clips) cuts every tracklet into clips, batched over all devices, and
`training.evaluator.tracklet_features` averages each tracklet's clip embeddings: the code
path of evaluation, so an embedded split ranks exactly as evaluation ranks it. Rows may then
be L2-normalised (recorded in the file).

A stop signal recorded by `runtime.atomic_files.deferred_stop_signals` (Ctrl-C, SIGTERM) is
raised between batches (and between tracklets while frames are read), with the tf.data
iterator released first.
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

from psta_jax import config_base, datasets, evaluation
from psta_jax.input.pipeline import EvalBatches
from psta_jax.runtime import atomic_files, checkpointing, errors, workdir
from psta_jax.serving import tracklets
from psta_jax.serving.embedding_file import Embeddings
from psta_jax.serving.errors import ServingInputError
from psta_jax.training import evaluator
from psta_jax.training.trained_model import TrainedModel, load_trained_model


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
        text = (
            f"{self.num_clips} clips in {self.seconds:.1f} s: {self.clips_per_second:.2f} clips/s"
        )
        if self.steady_clips:
            text += (
                f" ({self.steady_clips_per_second:.2f} clips/s after the first batch, "
                "which includes compilation)"
            )
        return text


class _Timed(Iterable):
    """Batches passed through, with a progress bar (stderr) and the time between them."""

    def __init__(self, batches: EvalBatches, show_progress: bool):
        self.batches = batches
        self.show_progress = show_progress and jax.process_index() == 0
        self.marks: list[tuple[float, int]] = []

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(
                total=self.batches.num_clips,
                unit="clip",
                desc="embedding",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        self.marks = [(time.perf_counter(), 0)]
        iterator = iter(self.batches)
        try:
            for batch in iterator:
                atomic_files.raise_if_stopped()
                clips = int(np.count_nonzero(batch["mask"])) * jax.process_count()
                yield batch
                # The caller has fetched this batch's features when it asks for the next one.
                self.marks.append((time.perf_counter(), clips))
                if bar is not None:
                    bar.update(clips)
            atomic_files.raise_if_stopped()
        finally:
            # Stopped or done: release the tf.data iterator (and its threads) now, not when
            # the interpreter exits.
            del iterator
            if bar is not None:
                bar.close()

    def throughput(self) -> Throughput:
        times = [t for t, _ in self.marks]
        clips = [c for _, c in self.marks]
        return Throughput(
            num_clips=sum(clips),
            seconds=times[-1] - times[0],
            steady_clips=sum(clips[2:]),
            steady_seconds=times[-1] - times[1] if len(times) > 2 else 0.0,
        )


def embed_store(
    model: TrainedModel,
    store: datasets.TrackletStore,
    *,
    batch_size: int | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, Throughput]:
    """(N, D) float32 tracklet embeddings of `store` in its order, and the throughput.

    `batch_size` (clips per global batch, rounded up to a multiple of the device count)
    defaults to the checkpoint config's eval batch.
    """
    if batch_size is None:
        batch_size = model.eval_batch_size
    elif batch_size < 1:
        raise ServingInputError(f"--batch_size must be at least 1, got {batch_size}")
    eval_input = model.eval_input
    embed_fn = model.embed_fn
    batches = _Timed(
        evaluator.eval_batches(store, eval_input, batch_size, model.mesh), show_progress
    )
    result = evaluator.tracklet_features(
        embed_fn, model.params, model.model_state, batches, model.mesh
    )
    if not np.array_equal(result["tracklet_ids"], store.tracklet_ids):
        raise RuntimeError(
            f"embedded {len(result['tracklet_ids'])} tracklets, expected the "
            f"{store.num_tracklets} of the input in order"
        )
    return result["features"], batches.throughput()


def _finish(features: np.ndarray, l2_normalise: bool) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return evaluation.l2_normalise(features).astype(np.float32) if l2_normalise else features


def check_run_config(checkpoint: str | os.PathLike) -> None:
    """A ServingInputError when the config.json of `checkpoint`'s run parses but lacks (or
    garbles) a field that using the model reads: the eval input, the evaluation settings, the
    dataset, the model. A missing or unparsable config.json is `workdir.RunConfigError`."""
    directory, _ = checkpointing.resolve_model_checkpoint(checkpoint)
    run = workdir.load_run_config(directory)
    try:
        config_base.eval_input(run.config)
        config_base.eval_settings(run.config)
        config_base.dataset_spec(run.config)
        int(run.config.input.eval_batch_size)
        run.config.model.to_dict()
    except errors.UserError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ServingInputError(
            f"{run.path}: not a complete run config ({type(error).__name__}: {error}); it should "
            "be the config.json written by psta_jax.main (or psta_jax.interop.convert) beside the "
            "checkpoints. Restore it, or copy it from a run with the same config."
        ) from error


def load_model(checkpoint: str | os.PathLike | TrainedModel) -> TrainedModel:
    """The checkpoint as an eval-mode model (as given when it already is one); a config.json
    that cannot describe it is one ServingInputError (`check_run_config`)."""
    if isinstance(checkpoint, TrainedModel):
        return checkpoint
    check_run_config(checkpoint)
    return load_trained_model(checkpoint)


def embed_folder(
    checkpoint: str | os.PathLike | TrainedModel,
    path: str | os.PathLike,
    *,
    batch_size: int | None = None,
    l2_normalise: bool = False,
    show_progress: bool = True,
) -> Embeddings:
    """Embeddings of every tracklet sub-folder of `path` (see `tracklets`)."""
    folder = tracklets.scan_folder(path)
    model = load_model(checkpoint)
    atomic_files.raise_if_stopped()
    store = tracklets.read_store(folder)
    features, throughput = embed_store(
        model, store, batch_size=batch_size, show_progress=show_progress
    )
    _report(len(folder.names), throughput)
    return Embeddings(
        embeddings=_finish(features, l2_normalise),
        names=list(folder.names),
        num_frames=folder.num_frames,
        checkpoint=model.identity,
        normalised=l2_normalise,
        pids=folder.pids,
        camids=folder.camids,
        source={"kind": "folder", "path": str(folder.root)},
    )


def split_dataset(model: TrainedModel, dataset: str, data_dir: str | None) -> Any:
    """The `datasets.DatasetSpec` of `dataset` for a checkpoint: the run's own (raw folder,
    builder config, synthetic) when it trained on that dataset, else the dataset's defaults;
    `data_dir` overrides the data root."""
    run_spec = model.dataset
    if run_spec.name == dataset:
        spec = run_spec
    else:
        spec = datasets.DatasetSpec(name=dataset, data_dir=run_spec.data_dir)
    return dataclasses.replace(spec, data_dir=data_dir) if data_dir else spec


def split_protocol(model: TrainedModel, dataset: str) -> str:
    """The evaluation protocol of `dataset`: the run's own when it trained on it."""
    if model.dataset.name == dataset:
        return model.eval_settings.protocol
    return datasets.builder_class(dataset).EVAL_PROTOCOL


def embed_split(
    checkpoint: str | os.PathLike | TrainedModel,
    spec: str,
    *,
    data_dir: str | None = None,
    batch_size: int | None = None,
    l2_normalise: bool = False,
    show_progress: bool = True,
) -> Embeddings:
    """Embeddings of every tracklet of a prepared TFDS split, e.g. 'mars:query'; names are
    `<split>_<tracklet id>`."""
    dataset, split = tracklets.parse_split(spec)
    model = load_model(checkpoint)
    source = tracklets.split_source(split_dataset(model, dataset, data_dir), split)
    atomic_files.raise_if_stopped()
    store = tracklets.read_split(source)
    atomic_files.raise_if_stopped()
    features, throughput = embed_store(
        model, store, batch_size=batch_size, show_progress=show_progress
    )
    _report(store.num_tracklets, throughput)
    return Embeddings(
        embeddings=_finish(features, l2_normalise),
        names=[f"{split}_{t}" for t in store.tracklet_ids],
        num_frames=store.num_frames,
        checkpoint=model.identity,
        normalised=l2_normalise,
        pids=store.pids,
        camids=store.camids,
        source=source,
        protocol=split_protocol(model, dataset),
    )


def _report(num_tracklets: int, throughput: Throughput) -> None:
    if jax.process_index() == 0:
        print(
            f"embedded {num_tracklets} tracklets on {jax.device_count()} "
            f"{jax.default_backend()} device(s), {throughput.describe()}",
            file=sys.stderr,
        )

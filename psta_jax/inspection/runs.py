"""A trained workdir as a `Run`: config, restored eval-mode model, dataset splits,
tracklet features, and the clips and frames of single tracklets."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from psta_jax import checkpointing, clip_preparation, evaluation, input_pipeline, sharding, steps
from psta_jax.errors import UserError
from psta_jax.evaluation import features as features_lib
from psta_jax.evaluation import model_eval
from psta_jax.models import PSTA

RESULT_FILES = ("results.json", model_eval.EVAL_RESULTS_FILE)


@dataclasses.dataclass(eq=False)
class Run:
    """One trained workdir: its config, restored eval-mode model variables and results.

    `params` / `model_state` are replicated over `mesh`; `splits` are the dataset's tracklet
    stores (None when loaded without data).
    """

    name: str
    workdir: epath.Path
    config: ml_collections.ConfigDict
    num_classes: int
    step: int
    graphs: steps.ModelGraphs
    params: nnx.State
    model_state: nnx.State
    results: dict | None
    mesh: jax.sharding.Mesh
    splits: input_pipeline.Splits | None = None
    _programs: dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def aggregation(self) -> str:
        return effective_aggregation(self.config.model)

    def model(self) -> PSTA:
        """The eval-mode PSTA (a fresh module sharing this run's arrays)."""
        return nnx.merge(self.graphs.eval, self.params, self.model_state)

    @functools.cached_property
    def embed_fn(self) -> Callable:
        """Jitted (params, model_state, pipeline clips (B, T, H, W, 3)) -> (B, feature_dim)."""
        return steps.compile_embed(self.graphs, self.mesh, prepare_clips(self.config))

    def program(self, key: str, build: Callable[[], Callable]) -> Callable:
        """A jitted function of this run, built once per `key` (each compiles once per shape)."""
        if key not in self._programs:
            self._programs[key] = build()
        return self._programs[key]

    @functools.cached_property
    def features(self) -> dict[str, dict[str, np.ndarray]]:
        """{'query', 'gallery'}: {'features' (N, D), 'pids', 'camids', 'tracklet_ids'}."""
        splits = self.require_splits()
        return {
            name: features_lib.split_features(
                getattr(splits, name), self.config, self.embed_fn, self.params,
                self.model_state, self.mesh)
            for name in ("query", "gallery")
        }

    def require_splits(self) -> input_pipeline.Splits:
        if self.splits is None:
            raise ValueError(f"run {self.name!r} was loaded without its dataset; "
                             "use load_run(..., load_data=True)")
        return self.splits


def prepare_clips(config: ml_collections.ConfigDict) -> steps.PrepareClips | None:
    """What turns the eval pipeline's clips into model inputs on the device (None: as is)."""
    if clip_preparation.eval_pipeline_config(config).uint8_clips:
        return clip_preparation.prepare_eval_clips(config)
    return None


def effective_aggregation(model_config: Mapping) -> str:
    """'pyramid' | 'adjacent' | 'global' | 'none' as the model builds it (0 stages = none)."""
    aggregation = model_config["aggregation"]
    if aggregation == "pyramid" and int(model_config["num_stages"]) == 0:
        return "none"
    return aggregation


class NotAWorkdirError(UserError, FileNotFoundError):
    """A folder given as a training workdir has no readable config.json."""


def read_run_config(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, int]:
    """(config, num_classes) from a workdir's config.json."""
    path = epath.Path(workdir) / checkpointing.CONFIG_FILE
    if not path.exists():
        raise NotAWorkdirError(
            f"{path} not found: expected a training workdir written by psta_jax.main "
            "(config.json beside checkpoints/)")
    try:
        payload = json.loads(path.read_text())
    except ValueError as error:
        raise NotAWorkdirError(f"{path} is not valid JSON ({error}); it should be the run's "
                               "config written by psta_jax.main") from error
    num_classes = payload.pop("num_classes", None)
    if not isinstance(num_classes, int) or "model" not in payload:
        raise NotAWorkdirError(f"{path}: expected the run's config with 'model' and an integer "
                               f"'num_classes', got keys {sorted(payload)}")
    return ml_collections.ConfigDict(payload), num_classes


def read_results(workdir: str | os.PathLike) -> dict | None:
    """The workdir's final metrics (results.json, else eval_results.json), if any."""
    for name in RESULT_FILES:
        path = epath.Path(workdir) / name
        if path.exists():
            return json.loads(path.read_text())
    return None


def load_run(workdir: str | os.PathLike, *, name: str | None = None, load_data: bool = True,
             splits: input_pipeline.Splits | None = None) -> Run:
    """Restores a workdir's best checkpoint (else its latest) into an eval-mode model.

    The model is built abstractly (no initialisers run) and filled from the checkpoint.
    `splits` reuses already-loaded dataset splits; else `load_data` opens them.
    """
    workdir = _absolute(workdir)
    config, num_classes = read_run_config(workdir)
    mesh = sharding.make_mesh()
    graphs, step, variables = model_eval.restore_model(workdir, config.model, num_classes, mesh)
    if splits is None and load_data:
        splits = input_pipeline.open_dataset(config)
    return Run(name=name or workdir.name, workdir=workdir, config=config,
               num_classes=num_classes, step=step, graphs=graphs,
               params=variables["params"], model_state=variables["model_state"],
               results=read_results(workdir), mesh=mesh, splits=splits)


def _absolute(path: str | os.PathLike) -> epath.Path:
    """Local paths made absolute (Orbax restores only from absolute paths); URLs as given."""
    return epath.Path(path if "://" in os.fspath(path) else os.path.abspath(path))


def load_runs(workdirs: Sequence[str | os.PathLike], *, load_data: bool = True) -> list[Run]:
    """Runs of several workdirs with unique names; runs on the same dataset share its splits."""
    if not workdirs:
        raise ValueError("load_runs: expected at least one workdir")
    runs: list[Run] = []
    opened: dict[str, input_pipeline.Splits] = {}
    for workdir in workdirs:
        config, _ = read_run_config(workdir)
        key = json.dumps([config.data_dir, config.dataset.to_dict()], sort_keys=True)
        if load_data and key not in opened:
            opened[key] = input_pipeline.open_dataset(config)
        name = _unique_name(epath.Path(workdir).name, {r.name for r in runs})
        runs.append(load_run(workdir, name=name, load_data=False, splits=opened.get(key)))
    return runs


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name}-{index}", index + 1
    return candidate


# ----------------------------------------------------------------------------- clips and frames


def tracklet_clip(store: input_pipeline.TrackletStore, position: int,
                  config: ml_collections.ConfigDict) -> np.ndarray:
    """The first evaluation clip of tracklet `position` as the eval pipeline yields it
    (T, H, W, 3) (uint8 or normalised float, see prepare_clips)."""
    _check_position(store, position)
    start, stop = int(store.offsets[position]), int(store.offsets[position + 1])
    single = input_pipeline.TrackletStore(
        frames=store.frames[start:stop],
        offsets=np.asarray([0, stop - start], np.int64),
        pids=store.pids[position:position + 1],
        camids=store.camids[position:position + 1],
        tracklet_ids=store.tracklet_ids[position:position + 1],
    )
    batches = input_pipeline.create_eval_iterator(
        single, clip_preparation.eval_pipeline_config(config), batch_size=1)
    return next(iter(batches))["clips"][0]


def display_frames(clip: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
    """A pipeline clip (T, H, W, 3) as uint8 for display (undoes float normalisation)."""
    if np.asarray(clip).dtype == np.uint8:
        return np.asarray(clip)
    pipeline = clip_preparation.eval_pipeline_config(config)
    frames = np.asarray(clip, np.float32)
    if pipeline.normalize:
        frames = frames * np.asarray(pipeline.std, np.float32) + np.asarray(pipeline.mean,
                                                                             np.float32)
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


def tracklet_frames(store: input_pipeline.TrackletStore, position: int,
                    count: int) -> list[np.ndarray]:
    """Up to `count` raw frames of a tracklet, evenly spaced, each (H, W, 3) uint8."""
    _check_position(store, position)
    start, stop = int(store.offsets[position]), int(store.offsets[position + 1])
    picks = np.unique(np.linspace(start, stop - 1, num=min(count, stop - start)).astype(int))
    frames = []
    for index in picks:
        encoded = store.frames[int(index)].numpy()
        frames.append(np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")))
    return frames


def _check_position(store: input_pipeline.TrackletStore, position: int) -> None:
    if not 0 <= position < store.num_tracklets:
        raise IndexError(f"tracklet position {position} out of range: the split has "
                         f"{store.num_tracklets} tracklets")


def protocol_gallery(run: Run) -> dict[str, np.ndarray]:
    """Gallery features as the run's protocol ranks them, with each item's split/position."""
    feats = run.features
    parts = [("gallery", feats["gallery"])]
    if evaluation.get_protocol(run.config.dataset.protocol).append_query_to_gallery:
        parts.insert(0, ("query", feats["query"]))
    return {
        "features": np.concatenate([f["features"] for _, f in parts]),
        "pids": np.concatenate([f["pids"] for _, f in parts]),
        "camids": np.concatenate([f["camids"] for _, f in parts]),
        "split": np.concatenate([np.full(len(f["pids"]), s) for s, f in parts]),
        "position": np.concatenate([np.arange(len(f["pids"])) for _, f in parts]),
    }


def default_query(run: Run) -> int:
    """The first query tracklet with a true match in the gallery it is ranked against."""
    queries, gallery = run.features["query"], protocol_gallery(run)
    for position, (pid, camid) in enumerate(zip(queries["pids"], queries["camids"],
                                                strict=True)):
        valid = (gallery["pids"] == pid) & (gallery["camids"] != camid)
        if valid.any():
            return position
    raise ValueError(f"run {run.name!r}: no query has a true match in the gallery")

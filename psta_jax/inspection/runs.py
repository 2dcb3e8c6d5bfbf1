"""A trained workdir as a `Run`: its restored model (`training.trained_model.TrainedModel`),
its results, its dataset splits and tracklet features, and single tracklets' clips."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from etils import epath
from flax import nnx

from psta_jax import config_base, datasets, evaluation
from psta_jax.input.pipeline import EvalBatches
from psta_jax.models import PSTA
from psta_jax.runtime import workdir as workdir_lib
from psta_jax.training import evaluator
from psta_jax.training.trained_model import TrainedModel, load_trained_model


@dataclasses.dataclass(eq=False)
class Run:
    """One trained workdir: its model (best checkpoint, else latest), final results and,
    when loaded with data, its dataset's splits (`datasets.Splits`)."""

    name: str
    workdir: epath.Path
    trained: TrainedModel
    results: dict | None
    splits: datasets.Splits | None = None
    _programs: dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def step(self) -> int:
        return self.trained.step

    @property
    def params(self) -> nnx.State:
        return self.trained.params

    @property
    def model_state(self) -> nnx.State:
        return self.trained.model_state

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.trained.mesh

    @property
    def aggregation(self) -> str:
        return effective_aggregation(self.trained.model_fields)

    def model(self) -> PSTA:
        """The eval-mode PSTA (a fresh module sharing this run's arrays)."""
        return self.trained.model()

    @property
    def embed_fn(self) -> Callable:
        """Jitted (params, model_state, uint8 clips (B, T, H, W, 3)) -> (B, feature_dim)."""
        return self.trained.embed_fn

    def program(self, key: str, build: Callable[[], Callable]) -> Callable:
        """A jitted function of this run, built once per `key` (each compiles once per shape)."""
        if key not in self._programs:
            self._programs[key] = build()
        return self._programs[key]

    @functools.cached_property
    def features(self) -> dict[str, dict[str, np.ndarray]]:
        """{'query', 'gallery'}: {'features' (N, D), 'pids', 'camids', 'tracklet_ids'}."""
        scorer = evaluator.Evaluator(
            self.require_splits(),
            self.trained.eval_input,
            self.trained.eval_settings,
            batch_size=self.trained.eval_batch_size,
            mesh=self.mesh,
        )
        return scorer.features(self.embed_fn, self.params, self.model_state)

    def protocol_gallery(self) -> evaluation.RankedGallery:
        """The gallery as the run's protocol ranks it, each item with its split/position."""
        query, gallery = self.features["query"], self.features["gallery"]
        return evaluation.protocol_gallery(
            self.trained.eval_settings.protocol,
            query["features"],
            gallery["features"],
            query["pids"],
            gallery["pids"],
            query["camids"],
            gallery["camids"],
        )

    def require_splits(self) -> datasets.Splits:
        if self.splits is None:
            raise ValueError(
                f"run {self.name!r} was loaded without its dataset; use "
                "load_run(..., load_data=True)"
            )
        return self.splits


def effective_aggregation(model_config: Mapping) -> str:
    """'pyramid' | 'adjacent' | 'global' | 'none' as the model builds it (0 stages = none)."""
    aggregation = model_config["aggregation"]
    if aggregation == "pyramid" and int(model_config["num_stages"]) == 0:
        return "none"
    return aggregation


def load_run(
    workdir: str | os.PathLike,
    *,
    name: str | None = None,
    load_data: bool = True,
    splits: datasets.Splits | None = None,
) -> Run:
    """Restores a workdir's best checkpoint (else its latest) into an eval-mode model.

    `splits` reuses already-loaded dataset splits; else `load_data` opens them.
    """
    workdir = workdir_lib.absolute_path(workdir)
    workdir_lib.load_run_config(workdir)  # names the workdir when it is not one
    trained = load_trained_model(workdir)
    if splits is None and load_data:
        splits = datasets.open_dataset(trained.dataset)
    return Run(
        name=name or workdir.name,
        workdir=workdir,
        trained=trained,
        results=workdir_lib.read_results(workdir),
        splits=splits,
    )


def load_runs(workdirs: Sequence[str | os.PathLike], *, load_data: bool = True) -> list[Run]:
    """Runs of several workdirs with unique names; runs on the same dataset share its splits."""
    if not workdirs:
        raise ValueError("load_runs: expected at least one workdir")
    runs: list[Run] = []
    opened: dict[str, datasets.Splits] = {}
    for workdir in workdirs:
        spec = config_base.dataset_spec(workdir_lib.load_run_config(workdir).config)
        key = json.dumps(dataclasses.asdict(spec), sort_keys=True)
        if load_data and key not in opened:
            opened[key] = datasets.open_dataset(spec)
        name = _unique_name(epath.Path(workdir).name, {r.name for r in runs})
        runs.append(load_run(workdir, name=name, load_data=False, splits=opened.get(key)))
    return runs


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name}-{index}", index + 1
    return candidate


def tracklet_clip(run: Run, store: datasets.TrackletStore, position: int) -> np.ndarray:
    """The first evaluation clip of tracklet `position`, as the run's eval input yields it:
    (T, H, W, 3) uint8."""
    batches = EvalBatches(store.tracklet(position), run.trained.eval_input, batch_size=1)
    return next(iter(batches))["clips"][0]


def default_query(run: Run) -> int:
    """The first query tracklet with a true match in the gallery it is ranked against."""
    queries, gallery = run.features["query"], run.protocol_gallery()
    for position, (pid, camid) in enumerate(zip(queries["pids"], queries["camids"], strict=True)):
        if ((gallery.pids == pid) & (gallery.camids != camid)).any():
            return position
    raise ValueError(f"run {run.name!r}: no query has a true match in the gallery")

"""Inspecting trained runs: the paper's ablation table, attention maps, retrieval and t-SNE.

    python -m psta_jax.inspect --workdirs WORKDIR [WORKDIR ...] --out DIR

writes `DIR/ablation_table.md` and `DIR/ablation_table.csv` (one row per workdir, in the
layout of the paper's Tables 1 and 2) and, per run, `DIR/<run>_attention.png` (Figure 4:
SRA/TRA spatial maps of every STAM stage over a clip's frames), `DIR/<run>_retrieval.png`
(Figure 5: a query's top-k gallery tracklets, true/false matches marked) and
`DIR/<run>_tsne.png` (Figure 6: t-SNE of the tracklet features of chosen identities).
The notebook `notebooks/ablation_inspection.ipynb` calls the same functions.

A run is a training workdir (psta_jax.train): its `config.json`, its best checkpoint (else
its latest) and its `results.json` (mAP, Rank-1). Parameters and FLOPs come from the model
itself: trainable `nnx.Param` count, and XLA's cost analysis of the compiled eval program
(`jax.jit(...).lower(...).compile().cost_analysis()`). XLA counts 2 FLOPs per multiply-add;
the paper's "GFLOPs" column counts multiply-adds, so it is about half of ours for the same
network. Speed is measured here, on whatever device JAX runs on.

Figures are built on matplotlib `Figure` objects with the Agg canvas (no pyplot state);
every figure function returns the Figure and saves a PNG when given a path.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from psta_jax import checkpointing, data, evaluation, input_pipeline, steps
from psta_jax.models import PSTA, build_model, capture_attention

RESULT_FILES = ("results.json", "eval_results.json")
TABLE_STEM = "ablation_table"
AGGREGATION_LETTERS = {"pyramid": "P", "adjacent": "A", "global": "G", "none": "-"}
DISTRACTOR_PID = 0
EXACT_TSNE_POINTS = 1000

# ----------------------------------------------------------------------------- runs


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
    splits: data.Splits | None = None

    @property
    def aggregation(self) -> str:
        return effective_aggregation(self.config.model)

    @property
    def state(self) -> steps.TrainState:
        return steps.TrainState(step=np.int32(self.step), params=self.params,
                                model_state=self.model_state, opt_state=())

    def model(self) -> PSTA:
        """The eval-mode PSTA (a fresh module sharing this run's arrays)."""
        return nnx.merge(self.graphs.eval, self.params, self.model_state)

    @functools.cached_property
    def embed_fn(self) -> Callable:
        """Jitted (params, model_state, pipeline clips (B, T, H, W, 3)) -> (B, feature_dim)."""
        return steps.compile_embed(self.graphs, self.mesh, prepare_clips(self.config))

    @functools.cached_property
    def attention_fn(self) -> Callable:
        """Jitted (params, model_state, clips) -> (activation (B, T, h, w), {path: spatial
        maps (B, P, 2, h, w)}) of every STAM."""
        return _attention_program(self.graphs, prepare_clips(self.config))

    @functools.cached_property
    def features(self) -> dict[str, dict[str, np.ndarray]]:
        """{'query', 'gallery'}: {'features' (N, D), 'pids', 'camids', 'tracklet_ids'}."""
        splits = self.require_splits()
        return {
            name: data.extract_tracklet_features(
                getattr(splits, name), self.config, self.embed_fn, self.state, self.mesh)
            for name in ("query", "gallery")
        }

    def require_splits(self) -> data.Splits:
        if self.splits is None:
            raise ValueError(f"run {self.name!r} was loaded without its dataset; "
                             "use load_run(..., load_data=True)")
        return self.splits


def prepare_clips(config: ml_collections.ConfigDict) -> steps.PrepareClips | None:
    """What turns the eval pipeline's clips into model inputs on the device (None: as is)."""
    if data.eval_pipeline_config(config).uint8_clips:
        return data.prepare_eval_clips(config)
    return None


def effective_aggregation(model_config: Mapping) -> str:
    """'pyramid' | 'adjacent' | 'global' | 'none' as the model builds it (0 stages = none)."""
    aggregation = model_config["aggregation"]
    if aggregation == "pyramid" and int(model_config["num_stages"]) == 0:
        return "none"
    return aggregation


def read_run_config(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, int]:
    """(config, num_classes) from a workdir's config.json."""
    path = epath.Path(workdir) / checkpointing.CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: expected a training workdir written by psta_jax.main "
            "(config.json beside best/ or checkpoints/)")
    payload = json.loads(path.read_text())
    num_classes = payload.pop("num_classes", None)
    if not isinstance(num_classes, int) or "model" not in payload:
        raise ValueError(f"{path}: expected the run's config with 'model' and an integer "
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
             splits: data.Splits | None = None) -> Run:
    """Restores a workdir's best checkpoint (else its latest) into an eval-mode model.

    The model is built abstractly (no initialisers run) and filled from the checkpoint.
    `splits` reuses already-loaded dataset splits; else `load_data` opens them.
    """
    workdir = _absolute(workdir)
    config, num_classes = read_run_config(workdir)
    abstract = nnx.eval_shape(lambda: build_model(config.model, num_classes, nnx.Rngs(0)))
    graphs, params, model_state = steps.split_model(abstract)
    step, variables = checkpointing.restore_model_variables(
        workdir, {"params": params, "model_state": model_state})
    mesh = steps.make_mesh()
    variables = jax.device_put(variables, steps.replicated(mesh))
    if splits is None and load_data:
        splits = data.open_dataset(config)
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
    opened: dict[str, data.Splits] = {}
    for workdir in workdirs:
        config, _ = read_run_config(workdir)
        key = json.dumps([config.data_dir, config.dataset.to_dict()], sort_keys=True)
        if load_data and key not in opened:
            opened[key] = data.open_dataset(config)
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
        single, data.eval_pipeline_config(config), batch_size=1)
    return next(iter(batches))["clips"][0]


def display_frames(clip: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
    """A pipeline clip (T, H, W, 3) as uint8 for display (undoes float normalisation)."""
    if np.asarray(clip).dtype == np.uint8:
        return np.asarray(clip)
    pipeline = data.eval_pipeline_config(config)
    frames = np.asarray(clip, np.float32)
    if pipeline.normalize:
        frames = frames * np.asarray(pipeline.std, np.float32) + np.asarray(pipeline.mean,
                                                                             np.float32)
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


def tracklet_frames(store: input_pipeline.TrackletStore, position: int,
                    count: int) -> list[np.ndarray]:
    """Up to `count` raw frames of a tracklet, evenly spaced, each (H, W, 3) uint8."""
    from PIL import Image

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


# ----------------------------------------------------------------------------- table


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Measured cost of a run's eval program at `batch_size` clips."""

    params: int
    flops_per_clip: float
    clips_per_second: float
    batch_size: int


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One row of Tables 1/2: structure flags (None: no STAM), metrics in %, cost measured
    with batches of `batch_size` clips."""

    run: str
    ablation: str
    aggregation: str
    sra: bool | None
    tra: bool | None
    conv_block: bool | None
    stages: int
    mAP: float
    rank1: float
    clips_per_second: float
    params: int
    gflops_per_clip: float
    batch_size: int
    checkpoint_step: int


def eval_batch_size(run: Run) -> int:
    """The run's evaluation batch rounded up to a multiple of the device count."""
    devices = run.mesh.size
    return -(-int(run.config.input.eval_batch_size) // devices) * devices


def measure_cost(run: Run, *, batch_size: int | None = None, repeats: int = 3) -> ModelCost:
    """Trainable parameters, XLA FLOPs per clip and eval clips/s (best of `repeats` calls).

    The default batch is the run's evaluation batch, so the program compiled here is the one
    feature extraction uses.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    batch_size = batch_size or eval_batch_size(run)
    if batch_size % run.mesh.size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the "
                         f"{run.mesh.size} devices")
    clips = random_clips(run.config, batch_size)
    compiled = run.embed_fn.lower(
        run.params, run.model_state, jax.ShapeDtypeStruct(clips.shape, clips.dtype)).compile()
    flops = xla_flops(compiled.cost_analysis())
    clips = jax.device_put(clips, steps.data_sharded(run.mesh))
    jax.block_until_ready(compiled(run.params, run.model_state, clips))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(run.params, run.model_state, clips))
        best = min(best, time.perf_counter() - start)
    return ModelCost(params=steps.count_trainable(run.params), flops_per_clip=flops / batch_size,
                     clips_per_second=batch_size / best, batch_size=batch_size)


def random_clips(config: ml_collections.ConfigDict, batch_size: int) -> np.ndarray:
    """Random clips shaped and typed as the eval pipeline's batches (B, T, H, W, 3)."""
    pipeline = data.eval_pipeline_config(config)
    shape = (batch_size, pipeline.seq_len, *pipeline.image_size, 3)
    rng = np.random.default_rng(0)
    if pipeline.uint8_clips:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(pipeline.dtype)


def xla_flops(cost_analysis) -> float:
    """Total 'flops' of a compiled program's cost analysis (a dict, or a list of them)."""
    analyses = cost_analysis if isinstance(cost_analysis, list | tuple) else [cost_analysis]
    flops = sum(float(a.get("flops", 0.0)) for a in analyses if a)
    if not flops > 0:
        raise RuntimeError(f"XLA's cost analysis reports no FLOPs: {cost_analysis!r}")
    return flops


def structure(model_config: Mapping) -> dict:
    """The Table 1/2 structure columns of a model config."""
    aggregation = effective_aggregation(model_config)
    has_stam = aggregation != "none"
    stages = {"pyramid": int(model_config["num_stages"]), "none": 0}.get(aggregation, 1)

    def flag(name: str) -> bool | None:
        return bool(model_config[name]) if has_stam else None

    return dict(aggregation=AGGREGATION_LETTERS[aggregation], sra=flag("use_sra"),
                tra=flag("use_tra"), conv_block=flag("use_conv_block"), stages=stages)


def table_row(run: Run, cost: ModelCost) -> TableRow:
    results = run.results or {}
    return TableRow(
        run=run.name,
        ablation=str(run.config.get("ablation", "")),
        **structure(run.config.model),
        mAP=100.0 * float(results.get("mAP", math.nan)),
        rank1=100.0 * float(results.get("rank1", math.nan)),
        clips_per_second=cost.clips_per_second,
        params=cost.params,
        gflops_per_clip=cost.flops_per_clip / 1e9,
        batch_size=cost.batch_size,
        checkpoint_step=run.step,
    )


def ablation_table(runs: Sequence[Run], *, batch_size: int | None = None,
                   repeats: int = 3) -> list[TableRow]:
    """One TableRow per run, cost measured on this machine."""
    return [table_row(run, measure_cost(run, batch_size=batch_size, repeats=repeats))
            for run in runs]


MARKDOWN_COLUMNS = ("Run", "AS", "SRA", "TRA", "Res", "Stages", "mAP", "Rank-1",
                    "Speed (clips/s)", "Params (M)", "GFLOPs")


def _mark(flag: bool | None) -> str:
    return "-" if flag is None else ("✓" if flag else "×")


def table_markdown(rows: Sequence[TableRow]) -> str:
    """The paper's layout: AS (P/A/G/-), SRA, TRA, Res (conv block), stages, metrics, cost."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |",
             "|" + "|".join(["---"] + [":-:"] * 5 + ["--:"] * 5) + "|"]
    for r in rows:
        cells = (r.run, r.aggregation, _mark(r.sra), _mark(r.tra), _mark(r.conv_block),
                 str(r.stages), f"{r.mAP:.1f}", f"{r.rank1:.1f}", f"{r.clips_per_second:.4g}",
                 f"{r.params / 1e6:.4g}", f"{r.gflops_per_clip:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_table_markdown(text: str) -> list[dict[str, str]]:
    """Rows of a table_markdown table as {column: cell} (for checks and notebooks)."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError("expected a markdown table with a header and a separator line")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


def write_table(rows: Sequence[TableRow], out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes `ablation_table.md` and `ablation_table.csv` (raw values) into `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / f"{TABLE_STEM}.md"
    markdown.write_text(table_markdown(rows))
    csv_path = out / f"{TABLE_STEM}.csv"
    names = [f.name for f in dataclasses.fields(TableRow)]
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        for row in rows:
            values = dataclasses.asdict(row)
            writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return {"markdown": markdown, "csv": csv_path}


# ----------------------------------------------------------------------------- attention


@dataclasses.dataclass(frozen=True)
class AttentionMaps:
    """What Figure 4 shows for one clip.

    frames: (T, H, W, 3) uint8, the clip as the model saw it.
    activation: (T, h, w), the frame maps' mean over channels (backbone + down_channel).
    stages: one dict per STAM, {'sra'/'tra': (T, h, w)}: each frame's spatial attention
      (the map of the stage input that holds the frame).
    """

    frames: np.ndarray
    activation: np.ndarray
    stages: tuple[dict[str, np.ndarray], ...]


def maps_per_frame(aggregation: str, stage: int, maps: np.ndarray, seq_len: int) -> np.ndarray:
    """A STAM's pair maps (P, 2, h, w) -> one map per frame (T, h, w).

    pyramid: stage s (0-based) pairs its inputs (2p, 2p + 1), each input covering 2**s
    frames; adjacent: pair t is frames (t, t + 1), a frame in two pairs gets the mean of its
    two maps; global: pair t is (frame t, mean frame), the mean frame's map is dropped.
    """
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != 2:
        raise ValueError(f"expected pair maps (P, 2, h, w), got {maps.shape}")
    frames = np.arange(seq_len)
    if aggregation == "pyramid":
        inputs = frames // (2 ** stage)
        expected = seq_len // (2 ** (stage + 1))
        if maps.shape[0] != expected:
            raise ValueError(f"pyramid stage {stage} of T={seq_len} has {expected} pairs, "
                             f"got {maps.shape[0]}")
        return maps[inputs // 2, inputs % 2]
    if aggregation == "adjacent":
        if maps.shape[0] != seq_len - 1:
            raise ValueError(f"adjacent aggregation of T={seq_len} has {seq_len - 1} pairs, "
                             f"got {maps.shape[0]}")
        padded_first = np.concatenate([maps[:, 0], maps[-1:, 1]])  # frame t as first (or last)
        padded_second = np.concatenate([maps[:1, 0], maps[:, 1]])  # frame t as second (or first)
        return (padded_first + padded_second) / 2.0
    if aggregation == "global":
        if maps.shape[0] != seq_len:
            raise ValueError(f"global aggregation of T={seq_len} has {seq_len} pairs, "
                             f"got {maps.shape[0]}")
        return maps[:, 0]
    raise ValueError(f"no STAM maps for aggregation {aggregation!r}")


def _attention_program(graphs: steps.ModelGraphs,
                       prepare: steps.PrepareClips | None) -> Callable:
    def forward(params, model_state, clips):
        model = nnx.merge(graphs.eval, params, model_state)
        if prepare is not None:
            clips = prepare(clips, None)
        activation = jnp.mean(model.frame_maps(clips), axis=-1, dtype=jnp.float32)
        _, intermediates = capture_attention(model, clips)
        sown = {path: variable.get_value()
                for path, variable in nnx.to_flat_state(intermediates)}
        return activation, {"/".join(map(str, path)): values[0]
                            for path, values in sown.items() if path[-1].endswith("_spatial")}

    return jax.jit(forward)


def clip_attention(run: Run, clip: np.ndarray) -> AttentionMaps:
    """Activation and SRA/TRA spatial maps of every STAM stage for one clip (T, H, W, 3)."""
    model = run.config.model
    seq_len = int(model.seq_len)
    chex.assert_shape(clip, (seq_len, *map(int, model.image_size), 3))
    activation, spatial = run.attention_fn(run.params, run.model_state, jnp.asarray(clip)[None])
    stages = []
    aggregation = run.aggregation
    for stage in range(structure(model)["stages"]):
        maps = {}
        for kind in ("sra", "tra"):
            key = f"stages/{stage}/{kind}/{kind}_spatial"
            if key in spatial:
                maps[kind] = maps_per_frame(aggregation, stage, np.asarray(spatial[key][0]),
                                            seq_len)
        stages.append(maps)
    return AttentionMaps(frames=display_frames(clip, run.config),
                         activation=np.asarray(activation[0]), stages=tuple(stages))


def _normalised(maps: np.ndarray) -> np.ndarray:
    """Min-max over a whole row, so frames of one row compare with each other."""
    low, high = float(np.min(maps)), float(np.max(maps))
    return (maps - low) / (high - low) if high > low else np.zeros_like(maps)


def plot_attention(maps: AttentionMaps, *, title: str = "",
                   path: str | os.PathLike | None = None) -> Figure:
    """Figure 4: frames, then the activation and each stage's SRA/TRA maps over them.

    Each map row is min-max normalised over its frames (jet colour map, red = high).
    """
    rows = [("frames", None), ("activation", maps.activation)]
    for stage, stage_maps in enumerate(maps.stages, start=1):
        rows += [(f"stage {stage} {kind.upper()}", stage_maps[kind])
                 for kind in ("sra", "tra") if kind in stage_maps]
    num_frames = maps.frames.shape[0]
    height, width = maps.frames.shape[1:3]
    cell = 1.1
    fig = _figure((cell * num_frames + 1.0, cell * height / width * len(rows) + 0.6))
    axes = fig.subplots(len(rows), num_frames, squeeze=False)
    for row, (label, values) in enumerate(rows):
        shown = None if values is None else _normalised(values)
        for t in range(num_frames):
            ax = axes[row, t]
            ax.imshow(maps.frames[t])
            if shown is not None:
                ax.imshow(shown[t], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                          extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                          interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def attention_figure(run: Run, *, query: int | None = None,
                     path: str | os.PathLike | None = None) -> Figure:
    """Figure 4 for the first eval clip of query tracklet `query` (default: default_query)."""
    store = run.require_splits().query
    query = default_query(run) if query is None else query
    maps = clip_attention(run, tracklet_clip(store, query, run.config))
    pid, camid = int(store.pids[query]), int(store.camids[query])
    return plot_attention(maps, title=f"{run.name}: query {query} (pid {pid}, camera {camid})",
                          path=path)


# ----------------------------------------------------------------------------- retrieval


@dataclasses.dataclass(frozen=True)
class RetrievalEntry:
    """A ranked gallery item: its split ('query' when the protocol appends queries)."""

    rank: int
    split: str
    position: int
    pid: int
    camid: int
    distance: float
    match: bool


def rank_gallery(distances: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray,
                 g_camids: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `top_k` nearest gallery indices and whether each is a true match.

    Gallery items of the query's identity seen by the query's camera are not ranked (the
    standard video re-ID rule); ties keep gallery order.
    """
    distances = np.asarray(distances)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    if distances.ndim != 1 or distances.shape != g_pids.shape or g_pids.shape != g_camids.shape:
        raise ValueError(f"expected distances, g_pids and g_camids of one shape (G,), got "
                         f"{distances.shape}, {g_pids.shape}, {g_camids.shape}")
    order = np.argsort(distances, kind="stable")
    order = order[~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))][:top_k]
    return order, g_pids[order] == q_pid


def _gallery(run: Run) -> dict[str, np.ndarray]:
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
    queries, gallery = run.features["query"], _gallery(run)
    for position, (pid, camid) in enumerate(zip(queries["pids"], queries["camids"],
                                                strict=True)):
        valid = (gallery["pids"] == pid) & (gallery["camids"] != camid)
        if valid.any():
            return position
    raise ValueError(f"run {run.name!r}: no query has a true match in the gallery")


def retrieve(run: Run, query: int, top_k: int = 5) -> list[RetrievalEntry]:
    """The top-k gallery tracklets of query tracklet `query` under the run's distance."""
    queries, gallery = run.features["query"], _gallery(run)
    if not 0 <= query < len(queries["pids"]):
        raise IndexError(f"query {query} out of range: {len(queries['pids'])} queries")
    distances = evaluation.pairwise_distance(
        queries["features"][query:query + 1], gallery["features"], run.config.eval.distance)[0]
    order, matches = rank_gallery(distances, queries["pids"][query], queries["camids"][query],
                                  gallery["pids"], gallery["camids"], top_k)
    return [RetrievalEntry(rank=rank, split=str(gallery["split"][i]),
                           position=int(gallery["position"][i]), pid=int(gallery["pids"][i]),
                           camid=int(gallery["camids"][i]), distance=float(distances[i]),
                           match=bool(match))
            for rank, (i, match) in enumerate(zip(order, matches, strict=True), start=1)]


MATCH_COLOURS = {True: "tab:green", False: "tab:red"}


def plot_retrieval(query_frames: Sequence[np.ndarray],
                   ranked_frames: Sequence[Sequence[np.ndarray]],
                   entries: Sequence[RetrievalEntry], *, query_label: str = "query",
                   title: str = "", path: str | os.PathLike | None = None) -> Figure:
    """Figure 5: the query tracklet, then one row per ranked tracklet framed green (true
    match, ✓) or red (false, ✗)."""
    if len(ranked_frames) != len(entries):
        raise ValueError(f"got {len(ranked_frames)} ranked tracklets for {len(entries)} entries")
    rows = [(query_label, list(query_frames), "black")]
    for entry, frames in zip(entries, ranked_frames, strict=True):
        mark = "✓" if entry.match else "✗"
        label = f"{mark} #{entry.rank} pid {entry.pid}\ncam {entry.camid} d={entry.distance:.3f}"
        rows.append((label, list(frames), MATCH_COLOURS[entry.match]))
    columns = max(len(frames) for _, frames, _ in rows)
    fig = _figure((1.0 * columns + 1.6, 1.9 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row, (label, frames, colour) in enumerate(rows):
        for column in range(columns):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(frames):
                ax.axis("off")
                continue
            ax.imshow(frames[column])
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
        axes[row, 0].set_ylabel(label, fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def retrieval_figure(run: Run, *, query: int | None = None, top_k: int = 5,
                     frames_per_tracklet: int = 4,
                     path: str | os.PathLike | None = None) -> Figure:
    """Figure 5 for query tracklet `query` (default: default_query) of a run."""
    splits = run.require_splits()
    query = default_query(run) if query is None else query
    entries = retrieve(run, query, top_k)
    ranked = [tracklet_frames(getattr(splits, e.split), e.position, frames_per_tracklet)
              for e in entries]
    pid, camid = int(splits.query.pids[query]), int(splits.query.camids[query])
    return plot_retrieval(
        tracklet_frames(splits.query, query, frames_per_tracklet), ranked, entries,
        query_label=f"query {query}\npid {pid} cam {camid}",
        title=f"{run.name}: top-{len(entries)} of query {query}", path=path)


# ----------------------------------------------------------------------------- t-SNE


def choose_identities(pids: np.ndarray, count: int) -> np.ndarray:
    """The `count` identities with the most tracklets (ties: smaller pid), distractors and
    junk (pid <= 0) excluded; sorted by pid."""
    pids = np.asarray(pids)
    ids, counts = np.unique(pids[pids > DISTRACTOR_PID], return_counts=True)
    if len(ids) == 0:
        raise ValueError("choose_identities: no identity with pid > 0")
    order = np.lexsort((ids, -counts))[:count]
    return np.sort(ids[order])


def default_identities(run: Run, count: int = 10) -> np.ndarray:
    """choose_identities over a run's query and gallery tracklets."""
    feats = run.features
    return choose_identities(
        np.concatenate([feats["query"]["pids"], feats["gallery"]["pids"]]), count)


def tsne_points(features: np.ndarray, *, seed: int = 0,
                perplexity: float | None = None) -> np.ndarray:
    """2-D t-SNE of L2-normalised features (N, D) -> (N, 2).

    Default perplexity: min(30, (N - 1) / 3), which scikit-learn needs below N. Up to
    EXACT_TSNE_POINTS points use exact gradients: at figure sizes they are faster than
    Barnes-Hut (whose threads crawl on a busy CPU) and deterministic.
    """
    from sklearn.manifold import TSNE

    features = evaluation.l2_normalise(evaluation.distance.validate_features("features",
                                                                             features))
    num = features.shape[0]
    if num < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {num}")
    perplexity = perplexity or min(30.0, (num - 1) / 3.0)
    if not 0 < perplexity < num:
        raise ValueError(f"perplexity must be in (0, {num}), got {perplexity}")
    method = "exact" if num <= EXACT_TSNE_POINTS else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto", method=method)
    return tsne.fit_transform(features).astype(np.float32)


def plot_tsne(points: np.ndarray, pids: np.ndarray, *, title: str = "",
              path: str | os.PathLike | None = None) -> Figure:
    """Figure 6: one dot per tracklet, one colour per identity."""
    points, pids = np.asarray(points), np.asarray(pids)
    chex.assert_shape(points, (len(pids), 2))
    fig = _figure((5.5, 4.5))
    ax = fig.subplots()
    identities = np.unique(pids)
    colours = _colours(len(identities))
    for colour, pid in zip(colours, identities, strict=True):
        chosen = pids == pid
        ax.scatter(points[chosen, 0], points[chosen, 1], s=28, color=colour, label=str(pid),
                   edgecolors="black", linewidths=0.3)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(identities) <= 20:
        ax.legend(title="pid", fontsize=6, title_fontsize=7, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def tsne_figure(run: Run, *, identities: Sequence[int] | None = None, count: int = 10,
                seed: int = 0, path: str | os.PathLike | None = None) -> Figure:
    """Figure 6: t-SNE of the query and gallery tracklet features of `identities`
    (default: the `count` identities with the most tracklets)."""
    feats = run.features
    features = np.concatenate([feats["query"]["features"], feats["gallery"]["features"]])
    pids = np.concatenate([feats["query"]["pids"], feats["gallery"]["pids"]])
    if identities is None:
        identities = default_identities(run, count)
    chosen = np.isin(pids, np.asarray(identities))
    if not chosen.any():
        raise ValueError(f"none of the identities {list(identities)} is in run {run.name!r}")
    points = tsne_points(features[chosen], seed=seed)
    return plot_tsne(points, pids[chosen], path=path,
                     title=f"{run.name}: {len(np.unique(pids[chosen]))} identities, "
                           f"{int(chosen.sum())} tracklets")


# ----------------------------------------------------------------------------- figures


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _colours(count: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if count <= 20 else "turbo"]
    return [cmap(i % 20 if count <= 20 else i / max(count - 1, 1)) for i in range(count)]


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        save_png(fig, path)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (for IPython.display.Image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- command line


def inspect_runs(workdirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 figures: bool = True, query: int | None = None, top_k: int = 5,
                 identities: int = 10, batch_size: int | None = None,
                 repeats: int = 3) -> dict[str, pathlib.Path]:
    """The table of `workdirs` and (with `figures`) each run's three figures into `out_dir`.

    One query and one identity set serve every run (chosen on the first), so figures compare.
    Returns {'markdown', 'csv', '<run>_<figure>': path}.
    """
    runs = load_runs(workdirs, load_data=figures)
    rows = ablation_table(runs, batch_size=batch_size, repeats=repeats)
    written = write_table(rows, out_dir)
    print(table_markdown(rows))
    if not figures:
        return written
    out = pathlib.Path(out_dir)
    first = runs[0]
    query = default_query(first) if query is None else query
    chosen = default_identities(first, identities)
    for run in runs:
        made = {
            "attention": lambda p, r=run: attention_figure(r, query=query, path=p),
            "retrieval": lambda p, r=run: retrieval_figure(r, query=query, top_k=top_k, path=p),
            "tsne": lambda p, r=run: tsne_figure(r, identities=chosen, path=p),
        }
        for kind, draw in made.items():
            path = out / f"{run.name}_{kind}.png"
            draw(path)
            written[f"{run.name}_{kind}"] = path
    return written


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m psta_jax.inspect",
        description="Ablation table (paper Tables 1/2) and Figures 4-6 of trained workdirs.")
    parser.add_argument("--workdirs", nargs="+", required=True,
                        help="training workdirs (relative data paths in their configs resolve "
                             "from the current directory: the repository root for the demo)")
    parser.add_argument("--out", required=True, help="output folder for the table and PNGs")
    parser.add_argument("--no_figures", action="store_true", help="write the table only")
    parser.add_argument("--query", type=int, default=None,
                        help="query tracklet position (default: the first with a true match)")
    parser.add_argument("--top_k", type=int, default=5, help="ranked tracklets in Figure 5")
    parser.add_argument("--identities", type=int, default=10, help="identities in Figure 6")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="clips per call for FLOPs and speed (default: the eval batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, pathlib.Path]:
    args = _parse_args(argv)
    data.disable_tf_accelerators()
    written = inspect_runs(args.workdirs, args.out, figures=not args.no_figures,
                           query=args.query, top_k=args.top_k, identities=args.identities,
                           batch_size=args.batch_size, repeats=args.repeats)
    for path in written.values():
        print(path)
    return written


if __name__ == "__main__":
    main()

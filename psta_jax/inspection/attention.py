"""Figure 4: a clip's channel activation and the SRA/TRA spatial maps of every STAM stage."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from psta_jax.input.preprocess import PrepareClips, clip_preparation
from psta_jax.inspection.plotting import finish, new_figure
from psta_jax.inspection.runs import Run, default_query, tracklet_clip
from psta_jax.inspection.table import structure
from psta_jax.models import capture_attention
from psta_jax.training import steps


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
        inputs = frames // (2**stage)
        expected = seq_len // (2 ** (stage + 1))
        if maps.shape[0] != expected:
            raise ValueError(
                f"pyramid stage {stage} of T={seq_len} has {expected} pairs, got {maps.shape[0]}"
            )
        return maps[inputs // 2, inputs % 2]
    if aggregation == "adjacent":
        if maps.shape[0] != seq_len - 1:
            raise ValueError(
                f"adjacent aggregation of T={seq_len} has {seq_len - 1} pairs, got {maps.shape[0]}"
            )
        padded_first = np.concatenate([maps[:, 0], maps[-1:, 1]])  # frame t as first (or last)
        padded_second = np.concatenate([maps[:1, 0], maps[:, 1]])  # frame t as second (or first)
        return (padded_first + padded_second) / 2.0
    if aggregation == "global":
        if maps.shape[0] != seq_len:
            raise ValueError(
                f"global aggregation of T={seq_len} has {seq_len} pairs, got {maps.shape[0]}"
            )
        return maps[:, 0]
    raise ValueError(f"no STAM maps for aggregation {aggregation!r}")


def _attention_program(graphs: steps.ModelGraphs, prepare: PrepareClips) -> Callable:
    def forward(params, model_state, clips):
        model = nnx.merge(graphs.eval, params, model_state)
        clips = prepare(clips, None)
        activation = jnp.mean(model.frame_maps(clips), axis=-1, dtype=jnp.float32)
        _, intermediates = capture_attention(model, clips)
        sown = {path: variable.get_value() for path, variable in nnx.to_flat_state(intermediates)}
        return activation, {
            "/".join(map(str, path)): values[0]
            for path, values in sown.items()
            if path[-1].endswith("_spatial")
        }

    return jax.jit(forward)


def clip_attention(run: Run, clip: np.ndarray) -> AttentionMaps:
    """Activation and SRA/TRA spatial maps of every STAM stage for one clip (T, H, W, 3)."""
    seq_len = run.trained.clip_shape[0]
    chex.assert_shape(clip, run.trained.clip_shape)
    program = run.program(
        "attention",
        lambda: _attention_program(run.trained.graphs, clip_preparation(run.trained.eval_input)),
    )
    activation, spatial = program(run.params, run.model_state, jnp.asarray(clip)[None])
    stages = []
    aggregation = run.aggregation
    for stage in range(structure(run.trained.model_fields)["stages"]):
        maps = {}
        for kind in ("sra", "tra"):
            key = f"stages/{stage}/{kind}/{kind}_spatial"
            if key in spatial:
                maps[kind] = maps_per_frame(
                    aggregation, stage, np.asarray(spatial[key][0]), seq_len
                )
        stages.append(maps)
    return AttentionMaps(
        frames=np.asarray(clip, np.uint8),
        activation=np.asarray(activation[0]),
        stages=tuple(stages),
    )


def _normalised(maps: np.ndarray) -> np.ndarray:
    """Min-max over a whole row, so frames of one row compare with each other."""
    low, high = float(np.min(maps)), float(np.max(maps))
    return (maps - low) / (high - low) if high > low else np.zeros_like(maps)


def plot_attention(
    maps: AttentionMaps, *, title: str = "", path: str | os.PathLike | None = None
) -> Figure:
    """Figure 4: frames, then the activation and each stage's SRA/TRA maps over them.

    Each map row is min-max normalised over its frames (jet colour map, red = high).
    """
    rows = [("frames", None), ("activation", maps.activation)]
    for stage, stage_maps in enumerate(maps.stages, start=1):
        rows += [
            (f"stage {stage} {kind.upper()}", stage_maps[kind])
            for kind in ("sra", "tra")
            if kind in stage_maps
        ]
    num_frames = maps.frames.shape[0]
    height, width = maps.frames.shape[1:3]
    cell = 1.1
    fig = new_figure((cell * num_frames + 1.0, cell * height / width * len(rows) + 0.6))
    axes = fig.subplots(len(rows), num_frames, squeeze=False)
    for row, (label, values) in enumerate(rows):
        shown = None if values is None else _normalised(values)
        for t in range(num_frames):
            ax = axes[row, t]
            ax.imshow(maps.frames[t])
            if shown is not None:
                ax.imshow(
                    shown[t],
                    cmap="jet",
                    alpha=0.5,
                    vmin=0.0,
                    vmax=1.0,
                    extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                    interpolation="bilinear",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return finish(fig, path)


def attention_figure(
    run: Run, *, query: int | None = None, path: str | os.PathLike | None = None
) -> Figure:
    """Figure 4 for the first eval clip of query tracklet `query` (default: default_query)."""
    store = run.require_splits().query
    query = default_query(run) if query is None else query
    maps = clip_attention(run, tracklet_clip(run, store, query))
    pid, camid = int(store.pids[query]), int(store.camids[query])
    return plot_attention(
        maps, title=f"{run.name}: query {query} (pid {pid}, camera {camid})", path=path
    )

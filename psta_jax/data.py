"""Glue between a config, the TFDS builders and the input pipeline, for the train loop."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from psta_jax import datasets, distributed, input_pipeline, steps


@dataclasses.dataclass(frozen=True)
class Splits:
    """The three splits of one dataset as host-memory tracklet stores."""

    name: str
    train: input_pipeline.TrackletStore
    query: input_pipeline.TrackletStore
    gallery: input_pipeline.TrackletStore


def _prepare(config: ml_collections.ConfigDict):
    if config.dataset.synthetic:
        from psta_jax.datasets import synthetic

        synthetic.ensure(
            datasets.raw_data_dir(
                config.dataset.name, config.data_dir, config.dataset.raw_dir or None
            )
        )
    return datasets.build(
        config.dataset.name,
        data_dir=config.data_dir,
        raw_dir=config.dataset.raw_dir or None,
        builder_config=config.dataset.builder_config or None,
    )


def open_dataset(config: ml_collections.ConfigDict) -> Splits:
    """Prepares (once, by process 0) and loads the dataset `config.dataset` names."""
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            _prepare(config)
        distributed.barrier("dataset_prepared")
    builder = _prepare(config)
    stores = {
        split: input_pipeline.load_tracklets(datasets.load_split(builder, split))
        for split in ("train", "query", "gallery")
    }
    return Splits(name=config.dataset.name, **stores)


def _image_fields(config: ml_collections.ConfigDict) -> dict:
    return dict(
        seq_len=config.model.seq_len,
        image_size=tuple(config.model.image_size),
        dtype=config.model.dtype,
        num_parallel_calls=config.input.num_parallel_calls,
        # The host stops at uint8 (4x fewer bytes to write and to copy to the devices);
        # normalisation and erasing run inside the jitted step (prepare_train/eval_clips).
        uint8_clips=True,
    )


def train_pipeline_config(config: ml_collections.ConfigDict) -> input_pipeline.TrainPipelineConfig:
    return input_pipeline.TrainPipelineConfig(
        identities_per_batch=config.batch.identities,
        instances_per_identity=config.batch.instances,
        sampler=config.input.train_sampler,
        flip=config.input.flip,
        erasing=config.input.erasing_prob > 0,
        erasing_prob=config.input.erasing_prob,
        **_image_fields(config),
    )


def eval_pipeline_config(config: ml_collections.ConfigDict) -> input_pipeline.EvalPipelineConfig:
    return input_pipeline.EvalPipelineConfig(
        sampler=config.input.test_sampler, seed=config.seed, **_image_fields(config)
    )


class TrainData:
    """The training split with the config's P x K sampling, for any start step."""

    def __init__(self, store: input_pipeline.TrackletStore, config: ml_collections.ConfigDict):
        self.store = store
        self.pipeline_config = train_pipeline_config(config)
        index = input_pipeline.build_identity_index(store.pids)
        self.num_identities = index.num_identities
        self.steps_per_epoch = self.num_identities // self.pipeline_config.identities_per_batch
        self.global_batch_size = self.pipeline_config.global_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {self.num_identities} identities, fewer than "
                f"config.batch.identities={self.pipeline_config.identities_per_batch}"
            )
        if self.global_batch_size % jax.device_count():
            raise ValueError(
                f"the global batch of {self.global_batch_size} clips (config.batch.identities x "
                f"config.batch.instances) must divide evenly over {jax.device_count()} devices"
            )

    def iterator(self, *, seed: int, start_step: int) -> input_pipeline.TrainIterator:
        """This process's slice of every global batch from `start_step` on."""
        return input_pipeline.create_train_iterator(
            self.store,
            self.pipeline_config,
            seed=seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )


def prepare_train_clips(config: ml_collections.ConfigDict) -> steps.PrepareClips:
    """Device-side normalisation and erasing of the training pipeline's uint8 clips."""
    return functools.partial(input_pipeline.finish_clips, config=train_pipeline_config(config))


def prepare_eval_clips(config: ml_collections.ConfigDict) -> steps.PrepareClips:
    return functools.partial(input_pipeline.finish_clips, config=eval_pipeline_config(config))


def _eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """The configured eval batch rounded up to a multiple of the device count."""
    devices = jax.device_count()
    return -(-config.input.eval_batch_size // devices) * devices


def extract_tracklet_features(
    store: input_pipeline.TrackletStore,
    config: ml_collections.ConfigDict,
    embed_fn: Callable,
    state: steps.TrainState,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """One feature per tracklet of `store` (clip features averaged for multi-clip samplers).

    Returns {'features' (N, D), 'pids' (N,), 'camids' (N,), 'tracklet_ids' (N,)} in the
    split's order; every process gets the same arrays.
    """
    batches = input_pipeline.create_eval_iterator(
        store,
        eval_pipeline_config(config),
        batch_size=_eval_batch_size(config),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    clips = steps.extract_features(embed_fn, state, iter(batches), mesh)
    ids, features = input_pipeline.average_clip_features(clips["features"], clips["tracklet_ids"])
    position = {int(t): i for i, t in enumerate(store.tracklet_ids)}
    order = np.asarray([position[int(t)] for t in ids])
    if len(order) != len(store.tracklet_ids):
        raise RuntimeError(
            f"evaluation saw {len(order)} of {len(store.tracklet_ids)} tracklets of the split"
        )
    return {
        "features": features,
        "tracklet_ids": ids,
        "pids": store.pids[order],
        "camids": store.camids[order],
    }


def disable_tf_accelerators() -> None:
    """tf.data runs on the host; accelerators belong to JAX."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")

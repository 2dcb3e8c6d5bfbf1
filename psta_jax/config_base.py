"""The release's training recipe as a ConfigDict, the presets the config strings select, and
what each part of the system takes from a config.

Each file in `configs/` is a thin `get_config(arg)` that names its dataset and calls
`dataset_config`, which reads the dataset's facts (evaluation protocol, the release's test
sampler) from its builder class in `psta_jax.datasets`. The config string
(`--config=configs/mars.py:tra_only,release`) is a comma-separated list of presets: at most
one ablation (rows of the paper's Tables 1 and 2) and optionally `release` (the release code's
frame samplers instead of the paper's RRS).

A config is read here and in the commands only: `dataset_spec`, `train_input`, `eval_input`
and `eval_settings` turn it into the typed settings each part takes, so no ConfigDict travels
below the training loop.
"""

from __future__ import annotations

import ml_collections

from psta_jax.runtime.errors import ConfigError

# Rows of the paper's Tables 1 and 2, as model-option overrides.
ABLATIONS: dict[str, dict] = {
    "full": {},
    "baseline": {"aggregation": "none", "num_stages": 0},
    "pyramid_only": {"use_sra": False, "use_tra": False},
    "adjacent": {"aggregation": "adjacent"},
    "global": {"aggregation": "global"},
    "sra_only": {"use_tra": False},
    "tra_only": {"use_sra": False},
    "no_conv_block": {"use_conv_block": False},
    "stages0": {"num_stages": 0},
    "stages1": {"num_stages": 1},
    "stages2": {"num_stages": 2},
    "stages3": {"num_stages": 3},
}

# The release trains with random_interval; it tests with each dataset's RELEASE_TEST_SAMPLER.
RELEASE_TRAIN_SAMPLER = "random_interval"


def model_config() -> ml_collections.ConfigDict:
    """The default network: the authors' release of PSTA (docs/architecture.md, Model)."""
    return ml_collections.ConfigDict(
        dict(
            depth=50,
            width=64,
            last_stride=1,
            feature_dim=1024,
            image_size=(256, 128),
            seq_len=8,
            aggregation="pyramid",
            num_stages=3,
            use_sra=True,
            use_tra=True,
            use_conv_block=True,
            dtype="float32",
            remat=False,
        )
    )


def base_config() -> ml_collections.ConfigDict:
    """The release's recipe (docs/design.md, "The release's recipe"), dataset-independent."""
    c = ml_collections.ConfigDict()
    c.mode = "train"  # "train" or "evaluate"
    c.seed = 0
    c.data_dir = "data"
    # ImageNet ResNet-50 weights from torchvision (.pth); empty = random init (warned loudly).
    c.pretrained = ""
    # Evaluate mode: a workdir or converted release checkpoint (its best-mAP step, else its
    # latest), a checkpoints/ folder (its latest step) or one step folder; empty = the workdir.
    c.checkpoint = ""

    # raw_dir: the raw dataset folder (default <data_dir>/<the dataset's folder>); synthetic:
    # generate the synthetic MARS-layout dataset into raw_dir when it is missing;
    # skip_bad_frames: prepare without frames that do not decode (the tracklet counts as
    # shorter) instead of stopping with their list.
    c.dataset = ml_collections.ConfigDict(
        dict(
            name="mars",
            raw_dir="",
            builder_config="",
            protocol="mars",
            synthetic=False,
            skip_bad_frames=False,
        )
    )
    c.model = model_config()

    c.batch = ml_collections.ConfigDict(dict(identities=8, instances=4))
    c.input = ml_collections.ConfigDict(
        dict(
            train_sampler="rrs",
            test_sampler="rrs",
            flip=True,
            erasing_prob=0.5,
            eval_batch_size=32,
            num_parallel_calls=-1,  # tf.data.AUTOTUNE
        )
    )

    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=3.5e-4,
            weight_decay=5e-4,  # coupled L2 added to the gradients (PyTorch Adam semantics)
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            warmup_epochs=10,
            warmup_factor=0.01,
            milestones=(70, 140, 210, 310, 410),
            gamma=0.3,
            grad_clip_norm=0.0,  # 0 = off (the release does not clip)
        )
    )
    c.loss = ml_collections.ConfigDict(
        dict(label_smoothing=0.1, margin=0.3, triplet_distance="cosine")
    )
    c.eval = ml_collections.ConfigDict(dict(distance="cosine", rerank=False, max_rank=50))

    c.num_epochs = 500
    c.num_train_steps = -1  # > 0 overrides num_epochs (tests, quick runs)
    c.eval_every_epochs = 10
    c.checkpoint_every_epochs = 10
    c.eval_every_steps = -1  # > 0 overrides eval_every_epochs
    c.checkpoint_every_steps = -1  # > 0 overrides checkpoint_every_epochs
    c.max_to_keep = 3  # latest steps kept; the best-mAP step is kept besides them
    c.log_every_steps = 20
    # train/grad_norm in the logs: the gradients' global L2 norm, computed every step.
    c.log_grad_norm = True
    # (first step, number of steps) to profile into the workdir for TensorBoard; 0 steps = off.
    c.profile_steps = (0, 0)
    return c


def apply_presets(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated presets of a config string (ablation names, `release`)."""
    names = [a.strip() for a in (arg or "").split(",") if a.strip()]
    ablations = [n for n in names if n in ABLATIONS]
    unknown = [n for n in names if n not in ABLATIONS and n != "release"]
    if unknown:
        raise ConfigError(
            f"unknown config preset(s) {unknown}: expected ablations {sorted(ABLATIONS)} "
            "and/or 'release'"
        )
    if len(ablations) > 1:
        raise ConfigError(f"at most one ablation per config string, got {ablations}")
    for ablation in ablations:
        config.model.update(ABLATIONS[ablation])
        config.ablation = ablation
    if "release" in names:
        config.input.train_sampler = RELEASE_TRAIN_SAMPLER
        config.input.test_sampler = _builder(config.dataset.name).RELEASE_TEST_SAMPLER
    return config


def dataset_config(dataset: str, arg: str | None, **dataset_fields) -> ml_collections.ConfigDict:
    """The recipe for one dataset with the presets of `arg` applied."""
    config = base_config()
    config.ablation = "full"
    config.dataset.name = dataset
    config.dataset.protocol = _builder(dataset).EVAL_PROTOCOL
    config.dataset.update(dataset_fields)
    return apply_presets(config, arg)


def _builder(dataset: str) -> type:
    """The builder class of `dataset` (imported here: configs need TFDS only to name facts)."""
    from psta_jax import datasets

    return datasets.builder_class(dataset)


# ----------------------------------------------------------------------------- what each part reads
# (imported inside the functions: a config file loads without JAX or TensorFlow)


def dataset_spec(config: ml_collections.ConfigDict):
    """The dataset a run reads (`datasets.DatasetSpec`)."""
    from psta_jax.datasets.loading import DatasetSpec  # noqa: PLC0415

    return DatasetSpec(
        name=config.dataset.name,
        data_dir=config.data_dir,
        raw_dir=config.dataset.raw_dir or None,
        builder_config=config.dataset.builder_config or None,
        synthetic=bool(config.dataset.get("synthetic", False)),
        skip_bad_frames=bool(config.dataset.get("skip_bad_frames", False)),
    )


def _image_fields(config: ml_collections.ConfigDict) -> dict:
    return dict(
        seq_len=config.model.seq_len,
        image_size=tuple(config.model.image_size),
        dtype=config.model.dtype,
        num_parallel_calls=config.input.num_parallel_calls,
    )


def train_input(config: ml_collections.ConfigDict):
    """The training input pipeline a run's config describes
    (`input.preprocess.TrainPipelineConfig`)."""
    from psta_jax.input.preprocess import TrainPipelineConfig  # noqa: PLC0415

    return TrainPipelineConfig(
        identities_per_batch=config.batch.identities,
        instances_per_identity=config.batch.instances,
        sampler=config.input.train_sampler,
        flip=config.input.flip,
        erasing=config.input.erasing_prob > 0,
        erasing_prob=config.input.erasing_prob,
        **_image_fields(config),
    )


def eval_input(config: ml_collections.ConfigDict):
    """The evaluation input pipeline a run's config describes
    (`input.preprocess.EvalPipelineConfig`)."""
    from psta_jax.input.preprocess import EvalPipelineConfig  # noqa: PLC0415

    return EvalPipelineConfig(
        sampler=config.input.test_sampler, seed=config.seed, **_image_fields(config)
    )


def eval_settings(config: ml_collections.ConfigDict):
    """How a run is evaluated (`evaluation.EvalSettings`)."""
    from psta_jax.evaluation import EvalSettings  # noqa: PLC0415

    try:
        return EvalSettings(
            protocol=config.dataset.protocol,
            distance=config.eval.distance,
            rerank=bool(config.eval.rerank),
            max_rank=int(config.eval.max_rank),
        )
    except ValueError as error:
        raise ConfigError(f"config.dataset.protocol / config.eval: {error}") from error

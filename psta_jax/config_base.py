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

import dataclasses
import functools
import math
from typing import Any

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
    # The backbone's start: "imagenet" (torchvision's ImageNet ResNet-50, downloaded and
    # cached; psta_jax/interop/imagenet_weights.py), "none" (random init) or a path to a .pth.
    # "imagenet" applies to the ResNet-50 backbone only; smaller ones start from random weights.
    c.pretrained = "imagenet"
    # Evaluate mode: a workdir or converted release checkpoint (its best-mAP step, else its
    # latest), a checkpoints/ folder (its latest step) or one step folder; empty = the workdir.
    c.checkpoint = ""

    # raw_dir: the raw dataset folder (default <data_dir>/<the dataset's folder>); synthetic:
    # generate the synthetic MARS-layout dataset into raw_dir when it is missing, with the
    # `datasets.synthetic.SyntheticConfig` fields of synthetic_sizes changed from its defaults;
    # skip_bad_frames: prepare without frames that do not decode (the tracklet counts as
    # shorter) instead of stopping with their list.
    c.dataset = ml_collections.ConfigDict(
        dict(
            name="mars",
            raw_dir="",
            builder_config="",
            protocol="mars",
            synthetic=False,
            synthetic_sizes=ml_collections.ConfigDict(),
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
            # Decode every training frame once, resized, into host memory when that takes at
            # most this many GiB (MARS at 256x128: ~47; 0 = decode the sampled frames at
            # every step). Batches are identical either way; the cache saves the host's CPU.
            cache_decoded_gb=2.0,
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
        synthetic_sizes=tuple(sorted(config.dataset.get("synthetic_sizes", {}).items())),
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
        cache_decoded_gb=float(config.input.get("cache_decoded_gb", 0.0)),
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


# ----------------------------------------------------------------------------- validation
# One table of what every field of `base_config()` may hold, checked by `validate` before JAX
# starts (psta_jax.main), so a bad value costs no start-up time and reads as one message.

MODES = ("train", "evaluate")  # psta_jax.main's modes
# Copied from the model (importing psta_jax.models starts JAX); tests/test_config_checks.py
# checks they match `models.resnet.STAGE_SIZES`, `models.psta.AGGREGATIONS` and
# `training.losses.DISTANCES`.
MODEL_DEPTHS = (10, 18, 34, 50)
AGGREGATIONS = ("pyramid", "adjacent", "global", "none")
DTYPES = ("float32", "bfloat16", "float16", "float64")
TRIPLET_DISTANCES = ("cosine", "euclidean")
MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class FieldRule:
    """What one config field may hold: a type (`int`, `float`, `bool`, `str` or `dict` for a
    mapping), optionally one of `choices`, a range [low, high] (`open_low`, `open_high`: that
    end excluded) or a multiple; `sequence`: a list or tuple of such values (`length`: exactly
    that many)."""

    kind: type
    description: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    multiple_of: int | None = None
    sequence: bool = False
    length: int | None = None
    optional: bool = False  # may be absent (read with a default)

    def accepts(self, value: Any) -> bool:
        if not self.sequence:
            return self._accepts_one(value)
        if not isinstance(value, (list, tuple)):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        return all(self._accepts_one(v) for v in value)

    def _accepts_one(self, value: Any) -> bool:
        if self.kind is dict:
            return hasattr(value, "items")
        if self.kind is bool:
            if not isinstance(value, bool):
                return False
        elif isinstance(value, bool):
            return False
        elif self.kind is float:
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return False
        elif not isinstance(value, self.kind):
            return False
        if self.choices and value not in self.choices:
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return not (self.multiple_of and value % self.multiple_of)

    def allowed(self) -> str:
        """What the field may hold, in words."""
        names = {int: "an int", float: "a number", bool: "True or False", str: "a string"}
        if self.choices:
            quoted = [repr(c) for c in self.choices]
            one = " or ".join(quoted) if len(quoted) == 2 else f"one of {', '.join(quoted)}"
        else:
            one = names.get(self.kind, "a mapping")
            if self.low is not None and self.high is not None:
                ends = "(["[not self.open_low], ")]"[not self.open_high]
                one += f" in {ends[0]}{self.low}, {self.high}{ends[1]}"
            elif self.low is not None:
                one += f" {'>' if self.open_low else '>='} {self.low}"
            if self.multiple_of:
                one += f" that is a multiple of {self.multiple_of}"
        if not self.sequence:
            return one
        count = f"{self.length} " if self.length is not None else ""
        return f"a list of {count}values, each {one}"


@functools.cache
def field_rules() -> dict[str, FieldRule]:
    """The rule of every field of `base_config()` (and `ablation`), by its path under config."""
    from psta_jax import datasets  # noqa: PLC0415 (no JAX, no TensorFlow: builder names)
    from psta_jax.evaluation import METRICS, PROTOCOLS  # noqa: PLC0415 (NumPy only)
    from psta_jax.input.samplers import EVAL_SAMPLERS, TRAIN_SAMPLERS  # noqa: PLC0415

    positive = dict(low=1)
    non_negative = dict(low=0)
    return {
        "mode": FieldRule(str, "train, or evaluate a checkpoint", choices=MODES),
        "seed": FieldRule(
            int, "seed of the model's init and the input order", low=0, high=MAX_SEED
        ),
        "data_dir": FieldRule(str, "where prepared datasets live"),
        "pretrained": FieldRule(str, "the backbone's start: 'imagenet', 'none' or a .pth path"),
        "checkpoint": FieldRule(str, "evaluate mode: what to evaluate; empty = the workdir"),
        "ablation": FieldRule(str, "the ablation preset", choices=tuple(ABLATIONS), optional=True),
        "dataset.name": FieldRule(str, "the dataset", choices=tuple(sorted(datasets.BUILDERS))),
        "dataset.raw_dir": FieldRule(str, "the raw dataset folder; empty = the dataset's default"),
        "dataset.builder_config": FieldRule(str, "the TFDS builder config; empty = the default"),
        "dataset.protocol": FieldRule(str, "the evaluation protocol", choices=tuple(PROTOCOLS)),
        "dataset.synthetic": FieldRule(bool, "generate the synthetic dataset", optional=True),
        "dataset.synthetic_sizes": FieldRule(
            dict, "SyntheticConfig fields (checked by the generator)", optional=True
        ),
        "dataset.skip_bad_frames": FieldRule(
            bool, "prepare without undecodable frames", optional=True
        ),
        "model.depth": FieldRule(int, "the ResNet's depth", choices=MODEL_DEPTHS),
        "model.width": FieldRule(int, "the ResNet's base width (torchvision: 64)", **positive),
        "model.last_stride": FieldRule(int, "the stride of the ResNet's layer4", choices=(1, 2)),
        "model.feature_dim": FieldRule(
            int, "the down-channel width (STAM splits it in 8 groups)", low=8, multiple_of=8
        ),
        "model.image_size": FieldRule(
            int, "(height, width) of the frames", sequence=True, length=2, **positive
        ),
        "model.seq_len": FieldRule(int, "frames per clip", **positive),
        "model.aggregation": FieldRule(str, "how STAM aggregates frames", choices=AGGREGATIONS),
        "model.num_stages": FieldRule(int, "STAM stages of the pyramid", **non_negative),
        "model.use_sra": FieldRule(bool, "STAM's spatial reasoning"),
        "model.use_tra": FieldRule(bool, "STAM's temporal reasoning"),
        "model.use_conv_block": FieldRule(bool, "STAM's conv block"),
        "model.dtype": FieldRule(str, "the compute dtype", choices=DTYPES),
        "model.remat": FieldRule(bool, "rematerialise the backbone's blocks"),
        "batch.identities": FieldRule(int, "identities per batch (P)", **positive),
        "batch.instances": FieldRule(int, "clips per identity (K)", **positive),
        "input.train_sampler": FieldRule(str, "training frame sampler", choices=TRAIN_SAMPLERS),
        "input.test_sampler": FieldRule(str, "evaluation frame sampler", choices=EVAL_SAMPLERS),
        "input.flip": FieldRule(bool, "random horizontal flips"),
        "input.erasing_prob": FieldRule(float, "random erasing probability", low=0, high=1),
        "input.eval_batch_size": FieldRule(int, "clips per evaluation batch", **positive),
        "input.num_parallel_calls": FieldRule(int, "tf.data parallelism; -1 = AUTOTUNE", low=-1),
        "input.cache_decoded_gb": FieldRule(
            float,
            "GiB of host memory for decoded training frames; 0 = off",
            optional=True,
            **non_negative,
        ),
        "optimizer.learning_rate": FieldRule(
            float, "Adam's base learning rate", low=0, open_low=True
        ),
        "optimizer.weight_decay": FieldRule(float, "coupled L2 weight decay", **non_negative),
        "optimizer.b1": FieldRule(float, "Adam's beta1", low=0, high=1, open_high=True),
        "optimizer.b2": FieldRule(float, "Adam's beta2", low=0, high=1, open_high=True),
        "optimizer.eps": FieldRule(float, "Adam's epsilon", low=0, open_low=True),
        "optimizer.warmup_epochs": FieldRule(int, "epochs of linear warm-up", **non_negative),
        "optimizer.warmup_factor": FieldRule(float, "warm-up's starting factor", low=0, high=1),
        "optimizer.milestones": FieldRule(
            int, "epochs where the learning rate decays", sequence=True, **non_negative
        ),
        "optimizer.gamma": FieldRule(float, "decay factor at each milestone", low=0, open_low=True),
        "optimizer.grad_clip_norm": FieldRule(float, "gradient clipping norm; 0 = off", low=0),
        "loss.label_smoothing": FieldRule(
            float, "cross-entropy label smoothing", low=0, high=1, open_high=True
        ),
        "loss.margin": FieldRule(float, "triplet margin", **non_negative),
        "loss.triplet_distance": FieldRule(str, "triplet distance", choices=TRIPLET_DISTANCES),
        "eval.distance": FieldRule(str, "retrieval distance", choices=tuple(METRICS)),
        "eval.rerank": FieldRule(bool, "k-reciprocal re-ranking"),
        "eval.max_rank": FieldRule(int, "longest CMC rank reported", **positive),
        "num_epochs": FieldRule(int, "training epochs", **positive),
        "num_train_steps": FieldRule(int, "training steps; <= 0 = num_epochs"),
        "eval_every_epochs": FieldRule(int, "epochs between evaluations", **positive),
        "checkpoint_every_epochs": FieldRule(int, "epochs between checkpoints", **positive),
        "eval_every_steps": FieldRule(int, "steps between evaluations; <= 0 = by epochs"),
        "checkpoint_every_steps": FieldRule(int, "steps between checkpoints; <= 0 = by epochs"),
        "max_to_keep": FieldRule(int, "latest checkpoints kept", **positive),
        "log_every_steps": FieldRule(int, "steps between metric writes", **positive),
        "log_grad_norm": FieldRule(bool, "log the gradients' global norm"),
        "profile_steps": FieldRule(
            int, "(first step, number of steps) to profile", sequence=True, length=2, low=0
        ),
    }


_MISSING = object()


def _lookup(config: ml_collections.ConfigDict, path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        if not hasattr(value, "get"):
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
    """One line per field of `config` that cannot work: its path, its value, what is allowed.
    Fields outside the table (e.g. the demo's `expected_results`) are not checked."""
    problems, bad = [], set()
    for path, rule in field_rules().items():
        value = _lookup(config, path)
        if value is _MISSING:
            if not rule.optional:
                problems.append(f"config.{path} is missing: expected {rule.allowed()}")
                bad.add(path)
        elif not rule.accepts(value):
            problems.append(
                f"config.{path}={value!r}: expected {rule.allowed()} ({rule.description})"
            )
            bad.add(path)
    return problems + _combination_problems(config, bad)


def _combination_problems(config: ml_collections.ConfigDict, bad: set[str]) -> list[str]:
    """Fields that are each allowed but do not fit together (checked when all are allowed)."""
    problems = []
    model = config.get("model", {})
    if not bad & {"model.image_size", "model.last_stride"} and "image_size" in model:
        stride = 16 * model.last_stride
        if any(size % stride for size in model.image_size):
            problems.append(
                f"config.model.image_size={tuple(model.image_size)}: both sides must be "
                f"multiples of the backbone's stride {stride} (16 x config.model.last_stride)"
            )
    fields = {"model.aggregation", "model.seq_len", "model.num_stages"}
    if not bad & fields and model.get("aggregation") == "pyramid":
        seq_len, stages = model.seq_len, model.num_stages
        if seq_len & (seq_len - 1):
            problems.append(
                f"config.model.seq_len={seq_len}: the pyramid needs a power of two (1, 2, 4, 8, "
                "...)"
            )
        elif stages > int(math.log2(seq_len)):
            problems.append(
                f"config.model.num_stages={stages}: the pyramid over seq_len={seq_len} frames has "
                f"at most log2(seq_len)={int(math.log2(seq_len))} stages"
            )
    return problems


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config`, or a ConfigError listing every field that cannot work (path, value, what is
    allowed). Imports neither JAX nor TensorFlow."""
    problems = config_problems(config)
    if problems:
        raise ConfigError(
            f"{len(problems)} config value(s) cannot work:\n  "
            + "\n  ".join(problems)
            + "\nSet them in the config file or with --config.<field>=<value>."
        )
    return config

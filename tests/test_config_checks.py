"""`config_base.validate`: one table of what every config field may hold, checked before JAX
starts, every bad field reported in one message."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest

from psta_jax import config_base
from psta_jax.runtime.errors import ConfigError
from tests.conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.py"))
RULES = config_base.field_rules()


def _load(path, arg: str | None = None) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _loose(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy that takes values of any type (a ConfigDict refuses another type on assignment)."""
    return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


def _set(config: ml_collections.ConfigDict, path: str, value) -> None:
    *parents, name = path.split(".")
    for key in parents:
        config = config[key]
    config[name] = value


def _bad_value(rule: config_base.FieldRule):
    """A value outside the rule: its range or choices where it has one, else another type."""
    if rule.sequence:
        return (1,) * (rule.length + 1) if rule.length else ("x",)
    if rule.choices:
        return "no_such_choice" if rule.kind is str else max(rule.choices) + 1
    if rule.low is not None:
        return rule.kind(rule.low if rule.open_low else rule.low - 1)
    if rule.high is not None:
        return rule.kind(rule.high + 1)
    return {bool: "yes", str: 3, int: "3", float: "0.1", dict: 3}[rule.kind]


def _leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and path not in RULES:
            paths |= _leaf_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_the_table_covers_every_field_of_the_base_config():
    fields = _leaf_paths(config_base.base_config())
    assert fields <= set(RULES), sorted(fields - set(RULES))
    assert set(RULES) - fields == {"ablation"}  # set by dataset_config


def test_copied_choices_match_the_model_and_the_loss():
    from psta_jax import main
    from psta_jax.models import psta, resnet
    from psta_jax.training import losses

    assert config_base.MODEL_DEPTHS == tuple(sorted(resnet.STAGE_SIZES))
    assert config_base.AGGREGATIONS == psta.AGGREGATIONS
    assert config_base.TRIPLET_DISTANCES == losses.DISTANCES
    assert main.MODES == config_base.MODES


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    config = _load(path)
    assert config_base.config_problems(config) == []
    assert config_base.validate(config) is config


PRESETS = [*config_base.ABLATIONS, "release", *(f"{a},release" for a in config_base.ABLATIONS)]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_of_the_mars_config_validates(preset):
    assert config_base.config_problems(_load(REPO_ROOT / "configs" / "mars.py", preset)) == []


@pytest.mark.parametrize("path", sorted(RULES))
def test_a_bad_value_of_each_field_is_refused_with_its_path(path):
    rule = RULES[path]
    bad = _bad_value(rule)
    assert not rule.accepts(bad), (path, bad)
    config = _loose(config_base.dataset_config("mars", None))
    _set(config, path, bad)
    with pytest.raises(ConfigError) as raised:
        config_base.validate(config)
    message = str(raised.value)
    assert f"config.{path}={bad!r}: expected {rule.allowed()}" in message
    assert message.startswith("1 config value(s)"), message


def test_fields_outside_the_table_are_allowed():
    config = config_base.dataset_config("mars", None)
    config.expected_results = ml_collections.ConfigDict(dict(source="README", ranges={}))
    config.dataset.synthetic_sizes = ml_collections.ConfigDict(dict(num_train_ids=3))
    assert config_base.config_problems(config) == []


def test_every_bad_field_is_reported_at_once():
    config = config_base.dataset_config("mars", None)
    config.seed = -1
    config.log_every_steps = 0
    config.input.eval_batch_size = 0
    config.model.depth = 51
    config.model.dtype = "flaot32"
    config.optimizer.learning_rate = -1e-3
    with pytest.raises(ConfigError) as raised:
        config_base.validate(config)
    message = str(raised.value)
    assert message.startswith("6 config value(s) cannot work")
    for text in (
        "config.seed=-1",
        "config.log_every_steps=0",
        "config.input.eval_batch_size=0",
        "config.model.depth=51: expected one of 10, 18, 34, 50",
        "config.model.dtype='flaot32'",
        "config.optimizer.learning_rate=-0.001: expected a number > 0",
    ):
        assert text in message, (text, message)


def test_a_missing_required_field_is_named():
    config = config_base.dataset_config("mars", None).to_dict()
    del config["input"]["eval_batch_size"]
    problems = config_base.config_problems(ml_collections.ConfigDict(config))
    assert problems == ["config.input.eval_batch_size is missing: expected an int >= 1"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (dict(image_size=(250, 128)), "config.model.image_size=(250, 128): both sides"),
        (dict(image_size=(272, 128), last_stride=2), "multiples of the backbone's stride 32"),
        (dict(seq_len=6), "config.model.seq_len=6: the pyramid needs a power of two"),
        (dict(seq_len=4, num_stages=3), "config.model.num_stages=3: the pyramid over seq_len=4"),
    ],
)
def test_fields_that_do_not_fit_together_are_named(model, expected):
    config = config_base.dataset_config("mars", None)
    config.model.update(model)
    problems = config_base.config_problems(config)
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_bad_seed_stops_main_before_jax_starts(tmp_path):
    """One message, no traceback, no workdir, within seconds (no JAX, no tf.data threads)."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "psta_jax.main",
            "--config=configs/demo.py",
            f"--workdir={workdir}",
            "--config.seed=-1",
        ],
        cwd=REPO_ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == ConfigError.exit_code == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.count("error:") == 1, result.stderr
    assert "config.seed=-1: expected an int in [0, 2147483647]" in result.stderr
    assert "JAX process" not in result.stderr
    assert not workdir.exists()


def test_validation_imports_neither_jax_nor_tensorflow():
    probe = (
        "import sys, importlib.util\n"
        "from psta_jax import config_base\n"
        "spec = importlib.util.spec_from_file_location('demo', 'configs/demo.py')\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "config_base.validate(module.get_config(None))\n"
        "print(sorted({'jax', 'tensorflow', 'flax'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "[]"

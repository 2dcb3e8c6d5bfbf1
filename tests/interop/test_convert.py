"""A release checkpoint converts into a checkpoint that evaluation mode restores unchanged."""

import jax
import numpy as np
import pytest
from flax import nnx

from psta_jax import config_base
from psta_jax.interop import convert
from psta_jax.interop.torch_import import export_state_dict
from psta_jax.models import build_model
from psta_jax.runtime import checkpointing, workdir
from psta_jax.training import steps
from tests.helpers.tiny import tiny_model_config


@pytest.fixture(scope="module")
def release_like(tmp_path_factory):
    torch = pytest.importorskip("torch")
    model = nnx.eval_shape(lambda: build_model(tiny_model_config(), 7, nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), nnx.state(model))
    nnx.update(model, state)
    state_dict = export_state_dict(model)
    path = tmp_path_factory.mktemp("release") / "checkpoint_ep350.pth"
    torch.save(
        {"module." + k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, path
    )
    return model, path


def test_convert_then_restore_gives_the_release_weights(release_like, tmp_path):
    model, path = release_like
    config = config_base.base_config()
    config.model = tiny_model_config()
    out = convert.convert(str(path), tmp_path / "converted", config)
    saved = workdir.load_run_config(out)
    assert saved.num_classes == 7 and saved.payload["converted_from"].endswith(".pth")

    fresh = build_model(config.model, 7, nnx.Rngs(1))
    _, params, model_state = steps.split_model(fresh)
    step, restored = checkpointing.restore_model_variables(
        out, {"params": params, "model_state": model_state}
    )
    assert step == 0
    _, expected_params, expected_state = steps.split_model(model)
    for x, y in zip(
        jax.tree.leaves((expected_params, expected_state)),
        jax.tree.leaves((restored["params"], restored["model_state"])),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_convert_never_overwrites(release_like, tmp_path):
    _, path = release_like
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("results")
    config = config_base.base_config()
    config.model = tiny_model_config()
    with pytest.raises(FileExistsError, match="not empty"):
        convert.convert(str(path), out, config)
    assert (out / "keep.txt").read_text() == "results"

"""The names docs/architecture.md lists as the public API import, and are what they say."""

import importlib

import pytest

from tests.conftest import REPO_ROOT

PUBLIC = [
    ("psta_jax.models", "build_model"),
    ("psta_jax.models", "PSTA"),
    ("psta_jax.interop", "load_official_psta"),
    ("psta_jax.interop", "load_torchvision_resnet50"),
    ("psta_jax.interop.torch_import", "torch_name"),
    ("psta_jax", "psta_loss"),
    ("psta_jax.evaluation", "cmc_map"),
    ("psta_jax.evaluation", "evaluate"),
    ("psta_jax.evaluation.rerank", "k_reciprocal_rerank"),
    ("psta_jax.datasets", "build"),
    ("psta_jax.datasets", "open_dataset"),
    ("psta_jax.training.trained_model", "load_trained_model"),
]


@pytest.mark.parametrize("module,name", PUBLIC)
def test_public_names_import_and_are_documented(module, name):
    assert callable(getattr(importlib.import_module(module), name))
    documented = (REPO_ROOT / "docs" / "architecture.md").read_text()
    assert (
        f"`{module}.{name}`" in documented
        or f"`{module}.{name}` " in documented
        or (f"{module}.{name}" in documented)
    )


def test_psta_loss_is_the_training_loss():
    import psta_jax
    from psta_jax.training import losses

    assert psta_jax.psta_loss is losses.psta_loss
    with pytest.raises(AttributeError):
        psta_jax.no_such_name  # noqa: B018

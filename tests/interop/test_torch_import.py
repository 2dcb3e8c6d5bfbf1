"""PyTorch import: key map against the release layout, strict loading, round trips."""

from __future__ import annotations

import io
import sys
import tarfile

import jax
import numpy as np
import pytest
from flax import nnx

from psta_jax.interop import (
    WeightImportError,
    export_state_dict,
    key_map,
    load_official_psta,
    load_psta_state_dict,
    load_torchvision_resnet50,
    torch_name,
)
from psta_jax.interop.torch_import import NotATorchCheckpointError, check_torch_checkpoint, to_flax
from psta_jax.models import PSTA
from tests import reference_data
from tests.helpers.tiny import TINY, forward, tiny_clips, tiny_model


def test_key_map_covers_the_release_layout_exactly():
    model = nnx.eval_shape(lambda: PSTA(625, rngs=nnx.Rngs(0)))
    names = key_map(model)
    release = {
        name: shape
        for name, shape, _ in reference_data.release_layout()
        if not name.endswith("num_batches_tracked")
    }
    assert set(names) == set(release)
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    for name, path in names.items():
        converted = to_flax(np.zeros(release[name], np.float32), flat[path].shape)
        assert converted.shape == tuple(flat[path].shape), name


def test_torch_names_of_some_paths():
    assert torch_name(("stages", 0, "sra", "spatial_head", 1, "bn", "scale")) == (
        "layer1.SRAG.spa_para.4.weight"
    )
    assert torch_name(("stages", 2, "tra", "theta", "kernel")) == (
        "layer3.TRAG.theta_channel.0.weight"
    )
    assert torch_name(("base", "layer2", 0, "downsample", "bn", "var")) == (
        "base.layer2.0.downsample.1.running_var"
    )
    assert torch_name(("bottleneck", 1, "bias")) == "bottleneck.1.bias"


def _release_like(model) -> dict[str, np.ndarray]:
    """A model's weights as a release checkpoint would hold them."""
    state_dict = export_state_dict(model)
    state_dict["down_channel.1.num_batches_tracked"] = np.array(7)
    return {"module." + k: v for k, v in state_dict.items()}


def test_round_trip_through_a_pth_file(tmp_path):
    torch = pytest.importorskip("torch")
    source = tiny_model(seed=3)
    path = tmp_path / "release.pth"
    torch.save(
        {
            "state_dict": {
                k: torch.from_numpy(np.array(v)) for k, v in _release_like(source).items()
            }
        },
        path,
    )
    loaded = load_official_psta(path, **TINY)
    assert loaded.classifier[0].kernel.shape[-1] == 5  # num_classes from the classifier
    clips = tiny_clips()
    np.testing.assert_array_equal(
        forward(loaded, clips, train=False), forward(source, clips, train=False)
    )


def test_mapping_source_loads_into_existing_model():
    source, target = tiny_model(seed=1), tiny_model(seed=2)
    load_psta_state_dict(target, _release_like(source))
    for a, b in zip(
        jax.tree.leaves(nnx.state(source)), jax.tree.leaves(nnx.state(target)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_every_problem_is_listed_at_once():
    state_dict = export_state_dict(tiny_model())
    del state_dict["layer1.TRAG.te_para.1.weight"]
    del state_dict["classifier.1.bias"]
    state_dict["layer1.extra.weight"] = np.zeros(3)
    state_dict["layer2.conv_block.3.weight"] = np.zeros((5, 4, 3, 3))
    with pytest.raises(WeightImportError) as err:
        load_psta_state_dict(tiny_model(), state_dict)
    message = str(err.value)
    for text in (
        "2 missing",
        "layer1.TRAG.te_para.1.weight",
        "classifier.1.bias",
        "1 unexpected",
        "layer1.extra.weight",
        "1 mis-shaped",
        "layer2.conv_block.3.weight",
    ):
        assert text in message, text


def test_pth_without_torch_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        load_official_psta(tmp_path / "missing.pth")


def test_torchvision_resnet50_loads_into_the_backbone():
    model = tiny_model(depth=50)
    donor = tiny_model(depth=50, seed=4)
    state_dict = export_state_dict(donor.base)
    state_dict.update(
        {
            "fc.weight": np.zeros((1000, 128)),
            "fc.bias": np.zeros(1000),
            "bn1.num_batches_tracked": np.array(0),
        }
    )
    load_torchvision_resnet50(state_dict, model)
    np.testing.assert_array_equal(
        model.base.layer3[1].conv2.kernel[...], donor.base.layer3[1].conv2.kernel[...]
    )
    assert not np.array_equal(
        model.stages[0].conv_block[0].conv.kernel[...],
        donor.stages[0].conv_block[0].conv.kernel[...],
    )
    del state_dict["layer4.2.bn3.running_mean"]
    with pytest.raises(WeightImportError, match="layer4.2.bn3.running_mean"):
        load_torchvision_resnet50(state_dict, model.base)


def _tar(path, *names):
    with tarfile.open(path, "w:") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))


def test_tar_archives_are_refused_and_the_legacy_format_is_named(tmp_path):
    legacy, other = tmp_path / "legacy.pth", tmp_path / "photos.tar"
    _tar(legacy, "sys_info", "pickle", "storages", "tensors")
    _tar(other, "photo.jpg")
    with pytest.raises(NotATorchCheckpointError) as error:
        check_torch_checkpoint(legacy)
    message = str(error.value)
    for text in (
        "legacy tar format",
        "pinned by their SHA-256",
        "torch.save(state_dict, new_path)",
    ):
        assert text in message, text
    with pytest.raises(NotATorchCheckpointError, match="is a tar archive but not a PyTorch"):
        check_torch_checkpoint(other)


def test_a_file_of_another_network_gets_a_short_message():
    state_dict = {f"encoder.block{i}.weight": np.zeros(3) for i in range(400)}
    with pytest.raises(WeightImportError) as err:
        load_psta_state_dict(tiny_model(), state_dict)
    message = str(err.value)
    assert len(message) < 1500, len(message)
    assert "400 unexpected" in message and "... and 392 more" in message
    assert "another network" in message

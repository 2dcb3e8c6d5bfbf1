"""Configs read each dataset's facts from its builder class; presets apply as documented."""

import pytest

from psta_jax import config_base, datasets


@pytest.mark.parametrize("name", sorted(datasets.BUILDERS))
def test_dataset_config_reads_the_builders_facts(name):
    builder = datasets.builder_class(name)
    config = config_base.dataset_config(name, None)
    assert config.dataset.name == name
    assert config.dataset.protocol == builder.EVAL_PROTOCOL
    assert (config.input.train_sampler, config.input.test_sampler) == ("rrs", "rrs")

    release = config_base.dataset_config(name, "release,tra_only")
    assert release.input.train_sampler == "random_interval"
    assert release.input.test_sampler == builder.RELEASE_TEST_SAMPLER
    assert release.ablation == "tra_only" and not release.model.use_sra


def test_release_test_samplers_are_the_releases():
    samplers = {name: cls.RELEASE_TEST_SAMPLER for name, cls in datasets.BUILDERS.items()}
    # The datasets the release reads; a later one states its choice in its own test.
    release = {
        "duke_video_reid": "dense",
        "ilids_vid": "begin_interval",
        "mars": "begin_interval",
        "prid2011": "begin_interval",
    }
    assert samplers.items() >= release.items()


def test_bad_presets_and_datasets_are_named():
    with pytest.raises(ValueError, match="unknown config preset"):
        config_base.dataset_config("mars", "fulll")
    with pytest.raises(ValueError, match="at most one ablation"):
        config_base.dataset_config("mars", "baseline,global")
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        config_base.dataset_config("market", None)

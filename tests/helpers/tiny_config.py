"""A tiny run on the synthetic dataset, for end-to-end tests through psta_jax.main.

--config=tests/helpers/tiny_config.py:DATA_DIR[,PRESETS]
"""

from psta_jax import config_base
from tests.helpers.tiny import tiny_run_config


def get_config(arg: str):
    data_dir, _, presets = arg.partition(",")
    config = tiny_run_config(data_dir)
    config.ablation = "full"
    return config_base.apply_presets(config, presets)

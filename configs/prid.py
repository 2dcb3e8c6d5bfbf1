"""PSTA on prid2011: the release's recipe (see psta_jax/config_base.py for the presets).

Usage: python -m psta_jax.main --config=configs/prid.py[:PRESETS] --workdir=DIR
PRESETS: one ablation (full, baseline, pyramid_only, adjacent, global, sra_only, tra_only,
no_conv_block, stages0..stages3) and/or 'release' (the release code's frame samplers).

The standard protocol trains and tests each of the 10 splits:
--config.dataset.builder_config=split_K (K = 0..9).
"""

from psta_jax import config_base


def get_config(arg: str | None = None):
    return config_base.dataset_config("prid2011", arg, builder_config="split_0")

"""PSTA on lsvid (LS-VID): the paper's recipe (see psta_jax/config_base.py for the presets).

Usage: python -m psta_jax.main --config=configs/lsvid.py[:PRESETS] --workdir=DIR
PRESETS: one ablation (full, baseline, pyramid_only, adjacent, global, sra_only, tra_only,
no_conv_block, stages0..stages3) and/or 'release' (the release code's frame samplers).

The PSTA paper has one recipe for every dataset and never ran LS-VID, so this is that recipe
unchanged: ResNet-50 from ImageNet, P 8 x K 4 clips of T = 8 frames at 256 x 128, Adam 3.5e-4
with the 500-epoch schedule (an epoch is 842 // 8 = 105 steps), and RRS for training and
testing. RRS is what makes LS-VID's long tracklets (about 200 frames, up to 2,533) work: its
8 chunks span the whole tracklet, one clip per tracklet at test time (200 frames -> frames
0, 25, ..., 175; 1,000 -> 0, 125, ..., 875; tests/datasets/test_lsvid.py). The `release`
preset tests with the release's MARS sampler, `begin_interval`, which only ever sees frames
0..56 of a tracklet of 57 frames or more; `dense` would cost about 25 clips per test
tracklet. Evaluation: protocol `mars` (the queries appended to the gallery, i.e. the whole
test set), as BiCnet-TKS evaluates LS-VID; `--config.dataset.protocol=mars_matlab` gives the
authors' MATLAB numbers (trapezoidal AP, the 4 queries without a cross-camera match count 0).
"""

from psta_jax import config_base


def get_config(arg: str | None = None):
    return config_base.dataset_config("lsvid", arg)

"""`make demo`: PSTA on the synthetic MARS-layout dataset, small enough for a 2-core CPU.

The synthetic dataset is generated into data/synthetic_mars when missing. The network is the
full PSTA design (pyramid of 3 STAM stages with SRA and TRA) on a narrow ResNet-18 and
64x32 frames; the recipe is the release's compressed to a few minutes, with two changes
for a network trained from scratch in 160 steps: a higher learning rate (2e-3) and no random
erasing (the synthetic frames already carry occlusions). The README ("Results") gives its
metrics over five seeds; docs/benchmarks.md ("The demo") the runs behind them.
"""

from psta_jax import config_base


def get_config(arg: str | None = None):
    config = config_base.dataset_config("mars", arg, raw_dir="data/synthetic_mars", synthetic=True)
    config.model.update(depth=18, width=16, feature_dim=128, image_size=(64, 32))
    config.batch.update(identities=8, instances=4)
    config.input.eval_batch_size = 64
    config.input.erasing_prob = 0.0
    config.optimizer.update(learning_rate=2e-3, warmup_epochs=2, milestones=(28, 36))
    config.num_epochs = 40
    config.eval_every_epochs = 20
    config.checkpoint_every_epochs = 10
    config.log_every_steps = 20
    return config

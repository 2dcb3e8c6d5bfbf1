"""Training learns: a small fixed run ends far below chance loss and far above chance mAP, and
each of four faults injected on purpose (a broken gradient, frozen BatchNorm statistics, a
wrong identity sampler, mislabelled batches) makes it miss the same check.

The run is the demo's recipe shrunk to seconds: the tiny PSTA (tests/helpers/tiny.py) at
width 8 on a synthetic MARS of 16 training and 32 test identities, P=8 x K=4 clips, Adam at
1e-2 for STEPS steps. The check (`learned`) asks for both a train cross-entropy below
CE_FRACTION of chance (ln 16) and an mAP above MAP_FACTOR x chance (random features on the
same query/gallery split); the margins sit between the healthy runs and the faulty ones of
docs/benchmarks.md ("The learning check").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psta_jax import config_base, datasets
from psta_jax.datasets import synthetic
from psta_jax.evaluation import evaluate
from psta_jax.input import batch_plans, samplers
from psta_jax.training import loop, metric_writers, steps
from tests.helpers.tiny import tiny_run_config

pytestmark = [pytest.mark.xdist_group("learning"), pytest.mark.slow]

NUM_TRAIN_IDS = 16
STEPS = 120
CE_FRACTION = 0.75  # final train CE below this fraction of ln(NUM_TRAIN_IDS)
MAP_FACTOR = 4.0  # final mAP above this multiple of the chance mAP


@dataclasses.dataclass(frozen=True)
class Outcome:
    final_ce: float  # the last logged train cross-entropy
    mAP: float
    chance_mAP: float

    @property
    def ce_limit(self) -> float:
        return CE_FRACTION * math.log(NUM_TRAIN_IDS)

    @property
    def map_limit(self) -> float:
        return MAP_FACTOR * self.chance_mAP

    def learned(self) -> bool:
        return self.final_ce < self.ce_limit and self.mAP > self.map_limit

    def __str__(self) -> str:
        return (
            f"final train CE {self.final_ce:.3f} (limit {self.ce_limit:.3f}), mAP "
            f"{100 * self.mAP:.2f}% (limit {100 * self.map_limit:.2f}% = {MAP_FACTOR} x chance)"
        )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[str, str]:
    """(data_dir, raw_dir) of the small synthetic MARS."""
    data_dir = str(tmp_path_factory.mktemp("learning_data"))
    raw_dir = os.path.join(data_dir, "synthetic_mars")
    synthetic.generate(
        raw_dir, synthetic.SyntheticConfig(num_train_ids=NUM_TRAIN_IDS, num_test_ids=32)
    )
    return data_dir, raw_dir


def _config(dataset: tuple[str, str], seed: int = 0):
    data_dir, raw_dir = dataset
    config = tiny_run_config(
        data_dir,
        num_train_steps=STEPS,
        eval_every_steps=STEPS,
        checkpoint_every_steps=STEPS,
        log_every_steps=10,
        seed=seed,
    )
    config.dataset.update(raw_dir=raw_dir, synthetic=False)
    config.model.width = 8
    config.batch.update(identities=8, instances=4)
    config.input.erasing_prob = 0.0
    config.optimizer.update(learning_rate=1e-2, warmup_epochs=1, milestones=(10_000,))
    config.num_epochs = 10_000
    return config


def _chance_mAP(config, draws: int = 20) -> float:
    """The mean mAP of random features on the run's query/gallery split."""
    splits = datasets.open_dataset(config_base.dataset_spec(config))
    query, gallery = splits.query, splits.gallery
    rng = np.random.default_rng(0)
    return float(
        np.mean(
            [
                evaluate(
                    rng.standard_normal((len(query.pids), 32)),
                    rng.standard_normal((len(gallery.pids), 32)),
                    query.pids,
                    gallery.pids,
                    query.camids,
                    gallery.camids,
                    protocol=config.dataset.protocol,
                ).mAP
                for _ in range(draws)
            ]
        )
    )


def _train(dataset, workdir, seed: int = 0) -> Outcome:
    config = _config(dataset, seed)
    metrics = loop.train_and_evaluate(config, str(workdir))
    with open(os.path.join(workdir, metric_writers.METRICS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    final_ce = [row["train/ce"] for row in rows if "train/ce" in row][-1]
    return Outcome(final_ce=final_ce, mAP=metrics["mAP"], chance_mAP=_chance_mAP(config))


# ----------------------------------------------------------------------------- the faults


def _backbone_without_gradient(monkeypatch) -> None:
    """A broken gradient: only the classifiers get theirs (a stop_gradient in the wrong
    place), the backbone, the STAM stages and the BN necks get zeros."""
    value_and_grad = nnx.value_and_grad

    def broken(f, **kwargs):
        wrapped = value_and_grad(f, **kwargs)

        def run(*args):
            value, grads = wrapped(*args)
            grads = jax.tree_util.tree_map_with_path(
                lambda path, g: (
                    g if "classifier" in jax.tree_util.keystr(path) else jnp.zeros_like(g)
                ),
                grads,
            )
            return value, grads

        return run

    monkeypatch.setattr(
        steps, "nnx", types.SimpleNamespace(**{**vars(nnx), "value_and_grad": broken})
    )


def _frozen_batch_norm(monkeypatch) -> None:
    """BatchNorm statistics never updated: every step returns the running means and variances
    it was given, so evaluation normalises with their initial values."""
    train_step = steps.train_step

    def frozen(state, batch, **kwargs):
        new_state, metrics = train_step(state, batch, **kwargs)
        return new_state.replace(model_state=state.model_state), metrics

    monkeypatch.setattr(steps, "train_step", frozen)


def _wrong_sampler(monkeypatch) -> None:
    """The P x K sampler draws its clips from any tracklet of the split, not from the
    identities it labels them with."""
    plan_of = batch_plans.train_batch_plan

    def wrong(index, num_frames, config, seed, step):
        plan = plan_of(index, num_frames, config, seed, step)
        rng = np.random.default_rng([seed, 2, step])
        tracklets = rng.choice(len(num_frames), size=len(plan["tracklets"]))
        sampler = samplers.train_sampler(config.sampler)
        plan["tracklets"] = tracklets.astype(np.int64)
        plan["frames"] = np.stack(
            [sampler(int(num_frames[t]), config.seq_len, rng) for t in tracklets]
        )
        return plan

    monkeypatch.setattr(batch_plans, "train_batch_plan", wrong)


def _mislabelled_batches(monkeypatch) -> None:
    """Each identity's K clips carry the label of the next identity in the batch (labels
    shifted by K): clips of one identity still share a label, but not across batches."""
    plan_of = batch_plans.train_batch_plan

    def mislabelled(index, num_frames, config, seed, step):
        plan = plan_of(index, num_frames, config, seed, step)
        plan["labels"] = np.roll(plan["labels"], config.instances_per_identity)
        return plan

    monkeypatch.setattr(batch_plans, "train_batch_plan", mislabelled)


FAULTS = {
    "broken_gradient": _backbone_without_gradient,
    "frozen_batch_norm": _frozen_batch_norm,
    "wrong_sampler": _wrong_sampler,
    "mislabelled_batches": _mislabelled_batches,
}


# ----------------------------------------------------------------------------- the tests


def test_training_learns(dataset, tmp_path):
    outcome = _train(dataset, tmp_path)
    print(f"healthy: {outcome}")
    assert outcome.learned(), f"training stopped learning: {outcome}"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_check_catches_a_fault(fault, dataset, tmp_path, monkeypatch):
    FAULTS[fault](monkeypatch)
    outcome = _train(dataset, tmp_path)
    print(f"{fault}: {outcome}")
    assert not outcome.learned(), f"{fault} was injected, yet the check passed: {outcome}"

"""Training speed in the logs: evaluation and checkpoint time left out; step profiles."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from psta_jax import progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_interval_after_an_evaluation_reports_the_same_rate():
    clock = FakeClock()
    tracker = progress.TrainProgress(num_train_steps=40, clips_per_step=8, clock=clock)
    tracker.start(0)
    reports = {}
    for step in range(1, 41):
        clock.now += 2.0  # a train step takes 2 s
        if step % 10 == 0:
            reports[step] = tracker.report(step)
        if step == 10:
            with tracker.timed("evaluation"):
                clock.now += 300.0
        if step in (10, 20):
            with tracker.timed("checkpoint"):
                clock.now += 30.0
    for step, rates in reports.items():
        assert rates["steps_per_second"] == pytest.approx(0.5), step
        assert rates["clips_per_second"] == pytest.approx(4.0), step
    assert tracker.time_per_part == {"evaluation": 300.0, "checkpoint": 60.0}


def test_an_untimed_pause_does_count():
    """Only what runs inside `timed` is excluded (the control for the test above)."""
    clock = FakeClock()
    tracker = progress.TrainProgress(num_train_steps=4, clips_per_step=1, clock=clock)
    tracker.start(0)
    clock.now += 2.0
    assert tracker.report(1)["steps_per_second"] == pytest.approx(0.5)
    clock.now += 8.0  # e.g. an evaluation outside `timed`
    assert tracker.report(2)["steps_per_second"] == pytest.approx(0.125)


def test_profiler_writes_a_tensorboard_profile_of_the_chosen_steps(tmp_path):
    profiler = progress.StepProfiler(tmp_path, first=2, count=2)
    step_fn = jax.jit(lambda x: x @ x + 1.0)
    x = jnp.ones((32, 32))
    for step in range(1, 6):
        with profiler.step(step):
            x = step_fn(x)
        profiler.step_done(step, x)
        assert profiler.active == (step == 2)
    profiler.stop()
    assert glob.glob(os.path.join(tmp_path, "plugins", "profile", "*", "*.xplane.pb"))


def test_profiler_off_and_bad_settings(tmp_path):
    off = progress.StepProfiler(tmp_path, 0, 0)
    with off.step(1):
        pass
    off.step_done(1, None)
    assert not off.active and not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="profile_steps"):
        progress.StepProfiler(tmp_path, 0, 3)

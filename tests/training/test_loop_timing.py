"""training.loop_timing: the loop's input wait, host CPU and eval/save seconds as scalars."""

import time

import pytest

from psta_jax.training import loop_timing


class _Scalars:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def write_scalars(self, step, scalars):
        self.rows.append((step, dict(scalars)))


@pytest.mark.parametrize("first_step", [1, 3, 4])  # 4: a resumed run's first step is a log step
def test_intervals_time_the_waits_and_leave_timed_blocks_out(first_step):
    writer = _Scalars()
    timings = loop_timing.LoopTimings(writer, every_steps=2)

    def slow_batches():
        while True:
            time.sleep(0.02)
            yield None

    batches = timings.batches(slow_batches())
    for step in range(first_step, first_step + 5):
        next(batches)
        timings(step)
        if step == first_step + 2:
            with timings.timed("eval", step):
                time.sleep(0.2)
    intervals = [(s, r) for s, r in writer.rows if "timing/train_steps_per_sec" in r]
    assert [s for s, _ in intervals] == [
        s for s in range(first_step + 1, first_step + 5) if s % 2 == 0
    ]
    for _, row in intervals:
        assert row["timing/input_wait_ms"] == pytest.approx(20, abs=15)
        assert 0.3 < row["timing/input_wait_fraction"] <= 1  # the eval's 0.2 s is left out
        assert row["timing/train_steps_per_sec"] > 10 and row["timing/host_cpu_percent"] >= 0
    evals = [r["timing/eval_s"] for _, r in writer.rows if "timing/eval_s" in r]
    assert evals == [pytest.approx(0.2, abs=0.1)]

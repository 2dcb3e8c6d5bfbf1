"""Where the training loop's time goes, per log interval, without waiting on the device.

`LoopTimings` is a clu periodic action beside `ReportProgress` (which writes steps_per_sec):
the loop takes its batches through `timings.batches(...)`, which times each `next()` (the
loop blocked on the input pipeline), and wraps evaluations and checkpoint saves in
`timings.timed("eval", step)`. Every `every_steps` steps it writes to the files
(TensorBoard, metrics.jsonl):

  timing/train_steps_per_sec   steps/s of the interval with its evaluations and saves left
                               out (clu's steps_per_sec counts them)
  timing/input_wait_fraction   share of the interval's wall time spent waiting for batches
  timing/input_wait_ms         that wait per step, ms
  timing/host_cpu_percent      this process's CPU time (every thread: tf.data's, XLA's on
                               a CPU backend, the loop's) over the interval's wall time and
                               the cores it may use, %

and, at the step of each evaluation and save, `timing/eval_s` and `timing/checkpoint_s` (the
wall time the loop spent in it; an asynchronous save writes its files after that).

Nothing here waits for the device: steps are dispatched asynchronously, so a wait for input
overlaps the device's work on the steps before it. A fraction near 0 says the pipeline keeps
ahead of the steps; one that grows while steps/s falls says the input is the limit.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator

from clu import metric_writers, periodic_actions


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class LoopTimings(periodic_actions.PeriodicAction):
    """Input wait, host CPU and the cost of evaluations and saves, as scalars (see above)."""

    def __init__(self, writer: metric_writers.MetricWriter, *, every_steps: int):
        super().__init__(every_steps=every_steps)
        self._writer = writer
        self._cores = len(os.sched_getaffinity(0))
        self._waited = 0.0  # seconds blocked on next() since the last write
        self._cpu = _cpu_seconds()

    def batches(self, iterable: Iterable) -> Iterator:
        """`iterable`'s items, timing how long each took to arrive."""
        iterator = iter(iterable)
        while True:
            start = time.monotonic()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self._waited += time.monotonic() - start
            yield item

    @contextlib.contextmanager
    def timed(self, name: str, step: int) -> Iterator[None]:
        """Writes the wall time of the block as timing/<name>_s at `step`; the block's time
        is left out of the interval's input-wait fraction and CPU share."""
        start, cpu = time.monotonic(), _cpu_seconds()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self._writer.write_scalars(step, {f"timing/{name}_s": seconds})
            if self._previous_time is not None:  # the block is not part of the interval
                self._previous_time += seconds
                self._cpu += _cpu_seconds() - cpu

    def __call__(self, step: int, t: float | None = None) -> bool:
        first = self._previous_step is None
        triggered = super().__call__(step, t)
        if first:  # the interval starts here: what came before (the first batch) is not in it
            self._waited, self._cpu = 0.0, _cpu_seconds()
        return triggered

    def _should_trigger(self, step: int, t: float) -> bool:
        # As ReportProgress: the first call (step == _previous_step) starts the interval.
        return step != self._previous_step and super()._should_trigger(step, t)

    def _apply(self, step: int, t: float) -> None:
        wall = max(t - self._previous_time, 1e-9)
        cpu = _cpu_seconds()
        self._writer.write_scalars(
            step,
            {
                "timing/train_steps_per_sec": (step - self._previous_step) / wall,
                "timing/input_wait_fraction": self._waited / wall,
                "timing/input_wait_ms": 1e3 * self._waited / (step - self._previous_step),
                "timing/host_cpu_percent": 100 * (cpu - self._cpu) / (wall * self._cores),
            },
        )

    def _after_apply(self, step: int, t: float) -> None:
        super()._after_apply(step, t)
        self._waited = 0.0
        self._cpu = _cpu_seconds()

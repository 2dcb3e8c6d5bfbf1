"""How fast training runs: steps/s and clips/s over training time only, and step profiles.

Evaluation and checkpoint saves run inside `TrainProgress.timed(name)`: their time is left
out of the rates (and logged apart as a share of the wall time), so the interval that holds
an evaluation reports the same rate as the others. `StepProfiler` writes a TensorBoard
profile (jax.profiler) of a few chosen steps.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
from absl import logging


class TrainProgress:
    """Rates since the previous `report`, excluding time spent inside `timed` blocks.

    Call `start` when the loop begins (after compilation) and `report(step)` once the
    step's results have been fetched from the device, so that the device has finished it.
    """

    def __init__(
        self,
        *,
        num_train_steps: int,
        clips_per_step: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.num_train_steps = num_train_steps
        self.clips_per_step = clips_per_step
        self._clock = clock
        self.time_per_part: dict[str, float] = collections.defaultdict(float)
        self._t0 = self._previous_time = clock()
        self._previous_step = 0
        self._excluded = 0.0

    def start(self, step: int) -> None:
        """Starts measuring at `step` (the last step already done)."""
        self._t0 = self._previous_time = self._clock()
        self._previous_step = step
        self._excluded = 0.0

    @contextlib.contextmanager
    def timed(self, name: str, wait_for: Any = None) -> Iterator[None]:
        """Leaves the time of the block out of the rates. `wait_for` (e.g. the train state) is
        waited on first, so the device's unfinished train steps are not counted as `name`."""
        if wait_for is not None:
            jax.block_until_ready(wait_for)
        start = self._clock()
        try:
            yield
        finally:
            spent = self._clock() - start
            self._excluded += spent
            self.time_per_part[name] += spent

    def report(self, step: int) -> dict[str, float]:
        """{'steps_per_second', 'clips_per_second'} since the previous report (training only)."""
        now = self._clock()
        train_time = max(now - self._previous_time - self._excluded, 1e-9)
        steps = step - self._previous_step
        rates = {
            "steps_per_second": steps / train_time,
            "clips_per_second": steps * self.clips_per_step / train_time,
        }
        logging.info("%s", self._message(step, now, rates["steps_per_second"]))
        self._previous_time, self._previous_step, self._excluded = now, step, 0.0
        return rates

    def _message(self, step: int, now: float, steps_per_sec: float) -> str:
        message = (
            f"step {step}/{self.num_train_steps} ({100 * step / self.num_train_steps:.1f}%), "
            f"{steps_per_sec:.3g} steps/s"
        )
        if steps_per_sec > 0 and step < self.num_train_steps:
            eta = (self.num_train_steps - step) / steps_per_sec
            message += f", training ETA {_format_secs(eta)}"
        total = now - self._t0
        if self.time_per_part and total > 0:
            shares = ", ".join(
                f"{name} {100 * spent / total:.1f}%"
                for name, spent in sorted(self.time_per_part.items())
            )
            message += f" (wall time {_format_secs(total)}: {shares})"
        return message


def _format_secs(secs: float) -> str:
    hours, rest = divmod(int(secs), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class StepProfiler:
    """A TensorBoard profile of steps [first, first + count) written under `logdir`.

    `logdir/plugins/profile/<date>/` gets one `*.xplane.pb` per process; TensorBoard's
    Profile tab (tensorboard-plugin-profile) shows it. `count` 0 turns profiling off.
    """

    def __init__(self, logdir: str | os.PathLike, first: int, count: int):
        if count < 0 or (count > 0 and first < 1):
            raise ValueError(
                f"profile_steps must be (first step >= 1, number of steps >= 0), "
                f"got ({first}, {count})"
            )
        self.logdir = os.fspath(logdir)
        self.first, self.last = first, first + count - 1
        self.active = False

    def step(self, step: int) -> contextlib.AbstractContextManager:
        """Wraps the dispatch of `step`: starts the trace at the first profiled step and marks
        each profiled step for TensorBoard's step view."""
        if step == self.first and self.last >= self.first:
            jax.profiler.start_trace(self.logdir)
            self.active = True
            logging.info("profiling steps %d-%d into %s", self.first, self.last, self.logdir)
        if self.active:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def step_done(self, step: int, outputs: Any) -> None:
        """Stops the trace once the last profiled step's `outputs` are computed."""
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            logging.info("profile written to %s/plugins/profile", self.logdir)

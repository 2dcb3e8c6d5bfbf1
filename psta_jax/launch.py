"""Run N JAX processes on loopback as one multi-process run (console script: psta-launch);
they are stopped together if one fails.

  python -m psta_jax.launch --processes=2 --devices_per_process=2 -- \
      --config=configs/demo.py --workdir=/tmp/run

Each process runs `python -m psta_jax.main <flags after -->` with PSTA_COORDINATOR_ADDRESS,
PSTA_NUM_PROCESSES, PSTA_PROCESS_ID and PSTA_CPU_DEVICES set (see psta_jax.runtime.distributed).
Output lines are prefixed with `[pI]`. When any process exits non-zero (or is killed), the
others are terminated and the launcher exits non-zero, naming the process that died. A
SIGTERM, SIGHUP or SIGINT sent to the launcher (a scheduler's stop, a closed terminal,
Ctrl-C) is forwarded to every process; the launcher waits for them (SIGKILL after
10 s) and exits 128 + the signal's number, so no process outlives it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from absl import flags

from psta_jax.runtime import cli, errors

_GRACE_SECONDS = 10.0
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class _StopRequested(Exception):
    """The launcher received one of `_FORWARDED_SIGNALS`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop_requested(signum: int, frame) -> None:
    del frame
    raise _StopRequested(signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(f"{prefix}{line.decode(errors='replace')}")
        out.flush()
    stream.close()


def _stop(processes: list[subprocess.Popen], signum: int = signal.SIGTERM) -> None:
    """Sends `signum` to the live processes and waits for them; SIGKILL after the grace time."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signum)
    deadline = time.monotonic() + _GRACE_SECONDS
    for proc in processes:
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(
    main_args: Sequence[str],
    *,
    processes: int,
    devices_per_process: int,
    module: str = "psta_jax.main",
    poll_seconds: float = 0.2,
) -> int:
    """Runs the processes to completion; returns 0, or the first failing process's exit code."""
    if processes < 1 or devices_per_process < 1:
        raise ValueError("--processes and --devices_per_process must be >= 1")
    address = f"127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    # The workers run in their own sessions (a terminal's Ctrl-C reaches only the launcher),
    # so the launcher passes a stop on. A signal that arrives while they start is kept and
    # acted on once they all exist.
    handles_signals = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in _FORWARDED_SIGNALS} if handles_signals else {}
    received: list[int] = []
    for signum in previous:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        for index in range(processes):
            env = dict(os.environ)
            env.update(
                PSTA_COORDINATOR_ADDRESS=address,
                PSTA_NUM_PROCESSES=str(processes),
                PSTA_PROCESS_ID=str(index),
                PSTA_CPU_DEVICES=str(devices_per_process),
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *main_args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(proc)
            pump = threading.Thread(
                target=_pump, args=(proc.stdout, f"[p{index}] ", sys.stdout), daemon=True
            )
            pump.start()
            pumps.append(pump)
        for signum in previous:
            signal.signal(signum, _raise_stop_requested)
        if received:
            raise _StopRequested(received[0])
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, code = failed[0]
                how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                sys.stderr.write(
                    f"launch: process {index} {how}; stopping the other "
                    f"{sum(c is None for c in codes)} process(es)\n"
                )
                _stop(procs)
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_seconds)
    except _StopRequested as stop:
        for signum in previous:  # a second signal must not cut the wait short
            signal.signal(signum, signal.SIG_IGN)
        live = sum(p.poll() is None for p in procs)
        sys.stderr.write(
            f"launch: received {signal.Signals(stop.signum).name}; forwarding it to {live} "
            "process(es) and waiting for them\n"
        )
        _stop(procs, stop.signum)
        return 128 + stop.signum
    except BaseException:  # e.g. a process that could not start: stop the ones that did
        _stop(procs)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for pump in pumps:
            pump.join(timeout=1.0)


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_integer("processes", 2, "Number of processes.", flag_values=values, lower_bound=1)
    flags.DEFINE_integer(
        "devices_per_process", 1, "CPU devices of each process.", flag_values=values, lower_bound=1
    )
    flags.DEFINE_string(
        "module", "psta_jax.main", "The module each process runs.", flag_values=values
    )


def _run(values: flags.FlagValues, main_args: Sequence[str]) -> int:
    try:
        found = importlib.util.find_spec(values.module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise errors.ConfigError(
            f"--module {values.module}: no such module importable from {os.getcwd()}"
        )
    code = launch(
        main_args,
        processes=values.processes,
        devices_per_process=values.devices_per_process,
        module=values.module,
    )
    if code:
        raise SystemExit(code)
    return code


main = cli.Command(
    name="psta-launch",
    summary="Run psta_jax.main (or --module) as N processes on loopback, with the flags after "
    "--; stopped together if one fails.",
    define_flags=_define_flags,
    run=_run,
    uses_jax=False,
    uses_tensorflow=False,
    takes_arguments=True,
)

if __name__ == "__main__":
    main.entry()

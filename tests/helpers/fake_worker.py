"""A stand-in for psta_jax.main in launcher tests.

By default process 1 fails and the others hang. With PSTA_FAKE_WORKER_SIGNALS set to a
folder, every process hangs, and one that receives SIGTERM, SIGHUP or SIGINT writes the
signal's number to <folder>/<process id> and exits 128 + that number.
"""

import os
import pathlib
import signal
import sys
import time


def _record_and_exit(signum, frame):
    del frame
    folder = pathlib.Path(os.environ["PSTA_FAKE_WORKER_SIGNALS"])
    (folder / os.environ["PSTA_PROCESS_ID"]).write_text(str(signum))
    sys.exit(128 + signum)


if __name__ == "__main__":
    index = int(os.environ["PSTA_PROCESS_ID"])
    hang_all = "PSTA_FAKE_WORKER_SIGNALS" in os.environ
    if hang_all:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, _record_and_exit)
    print(
        f"worker {index} of {os.environ['PSTA_NUM_PROCESSES']} at "
        f"{os.environ['PSTA_COORDINATOR_ADDRESS']}",
        flush=True,
    )
    if index == 1 and not hang_all:
        time.sleep(0.5)
        sys.exit(3)
    time.sleep(3600)  # like a process blocked in a collective waiting for its dead peer

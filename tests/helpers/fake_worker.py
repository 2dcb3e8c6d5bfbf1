"""A stand-in for psta_jax.main in launcher tests: process 1 fails, the others hang."""

import os
import sys
import time

if __name__ == "__main__":
    index = int(os.environ["PSTA_PROCESS_ID"])
    print(
        f"worker {index} of {os.environ['PSTA_NUM_PROCESSES']} at "
        f"{os.environ['PSTA_COORDINATOR_ADDRESS']}",
        flush=True,
    )
    if index == 1:
        time.sleep(0.5)
        sys.exit(3)
    time.sleep(3600)  # like a process blocked in a collective waiting for its dead peer

"""What a run left on disk: file-tree snapshots (proof that a failure left every earlier file
byte-identical) and the scalars of its TensorBoard event files; a process that holds a
workdir's training lock."""

import glob
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def snapshot(root) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root`."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def tensorboard_scalars(workdir) -> dict[tuple[int, str], float]:
    """{(step, tag): value} of every scalar in the workdir's TensorBoard event files."""
    import tensorflow as tf

    values = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
    return values


def hold_training_lock(folder) -> subprocess.Popen:
    """A process that holds `folder`'s training lock until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from psta_jax.runtime import workdir\n"
         "lock = workdir.training_lock(sys.argv[1])\n"
         "lock.__enter__()\n"
         "print('held', flush=True)\n"
         "time.sleep(600)\n",
         str(folder)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder

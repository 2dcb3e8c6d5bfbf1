"""What a run left on disk: file-tree snapshots (proof that a failure left every earlier file
byte-identical) and the scalars of its TensorBoard event files."""

import glob
import os


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

"""File-tree snapshots: proof that a failure left every earlier file byte-identical."""

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

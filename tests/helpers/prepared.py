"""What a prepared split of a dummy dataset holds, in a form a test can write by hand."""

import tensorflow_datasets as tfds

from psta_jax import datasets
from psta_jax.datasets import fake_raw


def split_rows(builder, split: str) -> list[tuple[int, int, list[int]]]:
    """(pid, camid, the frames' `fake_raw` levels in stored order) per tracklet of `split`."""
    return [
        (
            int(example["pid"]),
            int(example["camid"]),
            [round(fake_raw.decoded_level(frame)) for frame in example["frames"]],
        )
        for example in tfds.as_numpy(datasets.load_split(builder, split))
    ]

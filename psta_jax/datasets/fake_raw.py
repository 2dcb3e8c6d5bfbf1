"""Helpers for writing fake raw datasets (the `dummy_data/` scripts and tests).

A fake frame is a uniform image: its green and blue levels encode its frame number (so a test
can check temporal order after decoding: JPEG keeps a uniform level to within a few units) and
its red level is a per-tracklet tint (so no two tracklets have identical bytes).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable

import numpy as np

from psta_jax.datasets import raw_io

FRAME_SIZE = (8, 4)  # (height, width): tiny, dummy data stays a few KB.


def frame_level(frame_number: int) -> int:
    """Grey level of fake frame `frame_number` (1-based), increasing with the frame number."""
    return min(40 + 20 * frame_number, 255)


def frame_bytes(frame_number: int, image_format: str, tint: int = 0) -> bytes:
    """A uniform (8, 4) frame encoded as 'jpeg' or 'png'."""
    level = frame_level(frame_number)
    pixels = np.full((*FRAME_SIZE, 3), (tint % 256, level, level), np.uint8)
    return raw_io.encode_image(pixels, image_format)


def write_frame(path: str, frame_number: int, image_format: str, tint: int = 0) -> None:
    """Writes a uniform (8, 4) frame at `path` ('jpeg' or 'png'), creating folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(frame_bytes(frame_number, image_format, tint))


def write_text(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def permutation_table(num_rows: int, num_people: int, seed: int = 0) -> np.ndarray:
    """An `ls_set`-style table: each row a permutation of 1..num_people (float64, as MATLAB)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(num_people) + 1 for _ in range(num_rows)]).astype(np.float64)


def reset_output_dir(out: str) -> None:
    """Empties a `dummy_data` folder before rewriting it; refuses to clobber anything else."""
    if os.path.basename(os.path.normpath(out)) == "dummy_data":
        shutil.rmtree(out, ignore_errors=True)
    elif os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty; pick a new folder")
    os.makedirs(out, exist_ok=True)


def decoded_level(encoded: bytes) -> float:
    """Mean green level of an encoded fake frame (compare with `frame_level`)."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        return float(np.asarray(image.convert("RGB"))[..., 1].mean())


def run_cli(write: Callable[[str], None], script: str, description: str | None) -> None:
    """`python -m psta_jax.datasets.<name>.make_dummy_data [--out=DIR]`: rewrites DIR (default:
    dummy_data/ beside `script`) with `write(DIR)`."""
    from absl import flags  # noqa: PLC0415

    from psta_jax.runtime import cli  # noqa: PLC0415

    default = os.path.join(os.path.dirname(os.path.abspath(script)), "dummy_data")

    def define(values: flags.FlagValues, argv) -> None:
        flags.DEFINE_string("out", default, "The output folder.", flag_values=values)

    def run(values: flags.FlagValues) -> None:
        reset_output_dir(values.out)
        write(values.out)

    summary = (description or "").strip().splitlines()[0] if description else "Dummy data."
    cli.Command(
        name="make_dummy_data",
        summary=summary,
        define_flags=define,
        run=run,
        uses_jax=False,
        uses_tensorflow=False,
    ).entry()

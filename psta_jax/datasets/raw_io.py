"""File-level helpers for raw video re-ID datasets: errors, image checks, frame order, .mat I/O.

Nothing here imports TensorFlow or TFDS, so the synthetic-data writer and the dummy-data
scripts stay cheap to import.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.io

from psta_jax.runtime.errors import UserError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A fixed .mat header text, so that files written from the same data are byte-identical
# (scipy would write the current time there).
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by psta_jax"
_MAT_HEADER_BYTES = 116
_CHECK_CHUNK = 256  # Frames per task of `find_bad_frames` (one future per frame costs memory).


class RawDataError(UserError):
    """Base class for problems with a raw dataset on disk."""


class MissingRawDataError(RawDataError, FileNotFoundError):
    """A raw dataset folder or one of its required files is missing."""


class CorruptRawDataError(RawDataError, ValueError):
    """A raw dataset file exists but its content is not what the layout promises."""


def missing(dataset: str, path: os.PathLike | str, what: str, layout: str) -> MissingRawDataError:
    """Builds the error for a missing file or folder, naming the dataset, path and layout."""
    return MissingRawDataError(
        f"{dataset}: {what} not found at {os.fspath(path)}\n"
        f"Expected layout of the {dataset} raw folder:\n{layout.rstrip()}\n"
        "See data/README.md for where to download it."
    )


def require_exists(
    dataset: str, path: os.PathLike | str, what: str, layout: str, *, is_dir: bool
) -> None:
    """Raises `MissingRawDataError` unless `path` is an existing folder (`is_dir`) or file."""
    ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not ok:
        raise missing(dataset, path, what, layout)


def fingerprint(
    root: os.PathLike | str,
    relative_paths: Iterable[str],
    frame_paths: Iterable[os.PathLike | str] = (),
) -> str:
    """SHA-256 over what a prepared dataset is built from.

    That is the contents of the metadata files `relative_paths` (absent files count as
    absent) and the name, size and modification time of every frame in `frame_paths`, so a
    replaced, resized, touched, added or removed frame changes it. Costs one `stat` per frame.
    """
    digest = hashlib.sha256()
    for relative in relative_paths:
        digest.update(relative.encode() + b"\0")
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(b"<absent>")
    prefix = os.path.join(os.fspath(root), "")
    for path in map(os.fspath, frame_paths):
        try:
            stat = os.stat(path)
            facts = f"{stat.st_size} {stat.st_mtime_ns}"
        except FileNotFoundError:
            facts = "<absent>"
        # The path relative to root (the prefix test is cheaper than os.path.relpath).
        name = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
        digest.update(f"{name}\0{facts}\0".encode())
    return digest.hexdigest()


def image_format(data: bytes) -> str | None:
    """Returns 'jpeg' or 'png' from the magic bytes, None for anything else."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def read_image_bytes(dataset: str, path: os.PathLike | str) -> bytes:
    """Reads one encoded frame and checks that it is a JPEG or PNG file (by its magic bytes)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise MissingRawDataError(f"{dataset}: frame file missing: {os.fspath(path)}") from e
    if image_format(data) is None:
        raise CorruptRawDataError(
            f"{dataset}: {os.fspath(path)} is not a JPEG or PNG image "
            f"({len(data)} bytes, starts with {data[:8]!r}); the file is corrupt or truncated"
        )
    return data


def _ends_cleanly(data: bytes, image_format_name: str) -> bool:
    """Whether the encoded file ends with its end marker (JPEG EOI, PNG IEND chunk).

    Decoders accept a JPEG cut short or with garbage after its headers (libjpeg only warns
    and fills the rest with grey), so a missing end marker is what exposes those files.
    Trailing NUL and whitespace padding after the marker is allowed.
    """
    if image_format_name == "jpeg":
        return data.rstrip(b"\0\r\n\t ").endswith(b"\xff\xd9")
    return b"IEND" in data[-16:]


def frame_problem(path: os.PathLike | str) -> str | None:
    """What is wrong with one frame file, or None if it is a complete, decodable JPEG/PNG.

    Reads the file, checks its magic bytes and end marker, and decodes every pixel with PIL.
    """
    from PIL import Image  # Deferred: only needed while preparing a dataset.

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    kind = image_format(data)
    if kind is None:
        return f"is not a JPEG or PNG image ({len(data)} bytes, starts with {data[:8]!r})"
    if not _ends_cleanly(data, kind):
        return (
            f"is truncated or damaged: the {kind.upper()} end marker is missing ({len(data)} bytes)"
        )
    try:
        with Image.open(io.BytesIO(data), formats=[kind.upper()]) as image:
            image.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...) for bad data.
        return f"cannot be decoded ({e})"
    return None


def find_bad_frames(
    paths: Sequence[os.PathLike | str], *, max_workers: int | None = None
) -> dict[str, str]:
    """Decodes every frame of `paths` in parallel; returns {path: problem} for the bad ones.

    Threads suffice: PIL releases the GIL while it decodes and while it reads the file.
    """
    workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
    unique = list(dict.fromkeys(os.fspath(p) for p in paths))
    chunks = [unique[i : i + _CHECK_CHUNK] for i in range(0, len(unique), _CHECK_CHUNK)]

    def check(chunk: list[str]) -> dict[str, str]:
        found = ((path, frame_problem(path)) for path in chunk)
        return {path: problem for path, problem in found if problem is not None}

    bad: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for found in pool.map(check, chunks):
            bad.update(found)
    return bad


def read_lines(path: os.PathLike | str) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def frame_number(file_name: str) -> int:
    """The last run of digits in a file name: 'cam1_person001_00012.png' -> 12, '0007.png' -> 7."""
    match = _LAST_INT.search(os.path.splitext(os.path.basename(file_name))[0])
    if match is None:
        raise CorruptRawDataError(f"no frame number in file name {file_name!r}")
    return int(match.group(1))


def sort_frames_numerically(file_names: Iterable[str]) -> list[str]:
    """Sorts frame files by their frame number (not lexicographically: '10' after '9')."""
    return sorted(file_names, key=lambda name: (frame_number(name), name))


def list_images(folder: os.PathLike | str, extensions: tuple[str, ...]) -> list[str]:
    """Names (not paths) of the files in `folder` with one of `extensions` (lower case, '.png')."""
    return [
        name
        for name in os.listdir(folder)
        if os.path.splitext(name)[1].lower() in extensions and not name.startswith(".")
    ]


def list_subdirs(folder: os.PathLike | str) -> list[str]:
    """Sorted names of the sub-folders of `folder` (hidden ones skipped)."""
    return sorted(
        name
        for name in os.listdir(folder)
        if not name.startswith(".") and os.path.isdir(os.path.join(folder, name))
    )


def load_mat_variable(
    dataset: str, path: os.PathLike | str, variable: str, layout: str, *, ndim: int = 2
) -> np.ndarray:
    """Loads one numeric variable from a MATLAB .mat file as an int64 array with `ndim` dims."""
    require_exists(dataset, path, f"metadata file {os.path.basename(path)!r}", layout, is_dir=False)
    try:
        contents = scipy.io.loadmat(os.fspath(path))
    except Exception as e:  # scipy raises ValueError/TypeError/... on bad files.
        raise CorruptRawDataError(f"{dataset}: cannot read MATLAB file {path}: {e}") from e
    if variable not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise CorruptRawDataError(f"{dataset}: {path} has no variable {variable!r} (found {found})")
    array = np.asarray(contents[variable])
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.number):
        raise CorruptRawDataError(
            f"{dataset}: {path}:{variable} should be a {ndim}-D numeric array, "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    as_int = array.astype(np.int64)
    if not np.array_equal(as_int, array):
        raise CorruptRawDataError(f"{dataset}: {path}:{variable} holds non-integer values")
    return as_int


def write_mat(path: os.PathLike | str, variables: Mapping[str, Any]) -> None:
    """Writes a MATLAB 5 .mat file whose bytes depend only on `variables` (fixed header text)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, dict(variables), format="5", do_compression=False, oned_as="row")
    data = bytearray(buffer.getvalue())
    data[:_MAT_HEADER_BYTES] = _MAT_HEADER.ljust(_MAT_HEADER_BYTES, b" ")
    with open(path, "wb") as f:
        f.write(bytes(data))


def encode_image(pixels: np.ndarray, image_format_name: str, quality: int = 90) -> bytes:
    """Encodes an (H, W, 3) uint8 array as 'jpeg' or 'png' bytes (deterministic for fixed input)."""
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    if image_format_name == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    elif image_format_name == "png":
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    else:
        raise ValueError(f"image_format_name must be 'jpeg' or 'png', got {image_format_name!r}")
    return buffer.getvalue()

"""Embedding files: one tracklet embedding per row with its name, frame count, optional identity
and camera, and the identity of the checkpoint that produced it. `.npz` and `.parquet`.

npz: arrays `embeddings` (N, D) float32, `names` (N,) unicode, `num_frames` (N,) int64,
optionally `pids` / `camids` (N,) int64, and `metadata`, a 0-d unicode array holding JSON.
Parquet: columns `name` string, `num_frames` int64, `embedding` fixed_size_list<float32>[D],
optionally `pid` / `camid` int64; the same JSON under the schema metadata key `psta_jax`.
The JSON holds `format_version`, `normalised`, `checkpoint` ({config_hash, step, path}),
`source` (where the tracklets came from, so frames can be shown again) and `protocol` (the
dataset's evaluation protocol, when known). Both formats read back bit-identical arrays.

`save` writes a temporary file beside the target and renames it into place
(`runtime.atomic_files`): a failure (a full or read-only disk, Ctrl-C) leaves an earlier file
there byte-identical. `load` refuses embeddings that are not finite (NaN or infinite), naming
the first bad row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from psta_jax.runtime import atomic_files
from psta_jax.runtime.workdir import CheckpointIdentity
from psta_jax.serving.errors import ServingInputError

FORMAT_VERSION = 1
SUFFIXES = (".npz", ".parquet")
_PARQUET_METADATA_KEY = b"psta_jax"


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Tracklet embeddings and what is known about each tracklet.

    embeddings: (N, D) float32; normalised: rows were L2-normalised before saving.
    names: (N,) tracklet names; num_frames: (N,) int64 frames in each tracklet.
    pids, camids: (N,) int64 identities and cameras, or None when unknown.
    source: where the tracklets came from ({'kind': 'folder', 'path': ...} or
      {'kind': 'tfds', 'dataset': ..., 'split': ..., ...}); protocol: an evaluation protocol
      name or None.
    """

    embeddings: np.ndarray
    names: np.ndarray
    num_frames: np.ndarray
    checkpoint: CheckpointIdentity
    normalised: bool = False
    pids: np.ndarray | None = None
    camids: np.ndarray | None = None
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    protocol: str | None = None

    def __post_init__(self):
        embeddings = np.asarray(self.embeddings)
        if embeddings.ndim != 2 or embeddings.dtype != np.float32:
            raise ServingInputError(
                f"embeddings: expected a (N, D) float32 array, got "
                f"{embeddings.dtype} {embeddings.shape}"
            )
        count = embeddings.shape[0]
        object.__setattr__(self, "names", np.asarray(self.names, dtype=str))
        object.__setattr__(self, "num_frames", np.asarray(self.num_frames, np.int64))
        for field in ("names", "num_frames", "pids", "camids"):
            value = getattr(self, field)
            if value is None:
                continue
            if field in ("pids", "camids"):
                value = np.asarray(value, np.int64)
                object.__setattr__(self, field, value)
            if value.shape != (count,):
                raise ServingInputError(
                    f"embeddings: {field} has shape {value.shape}; expected "
                    f"({count},), one per embedding"
                )

    @property
    def has_labels(self) -> bool:
        """Identities and cameras are known for every tracklet."""
        return self.pids is not None and self.camids is not None

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "normalised": bool(self.normalised),
            "checkpoint": dataclasses.asdict(self.checkpoint),
            "source": dict(self.source),
            "protocol": self.protocol,
        }


def _check_suffix(path: pathlib.Path) -> str:
    if path.suffix not in SUFFIXES:
        raise ServingInputError(f"{path}: an embeddings file must end in one of {SUFFIXES}")
    return path.suffix


def save(embeddings: Embeddings, path: str | os.PathLike) -> pathlib.Path:
    """Writes `embeddings` to `path` (.npz or .parquet, chosen by the suffix), replacing an
    earlier file only once the new one is complete (`atomic_files.replacing`; a failure is an
    `atomic_files.OutputError`)."""
    path = pathlib.Path(path)
    suffix = _check_suffix(path)
    with atomic_files.replacing(path, "the embeddings file") as temporary:
        _write(embeddings, temporary, suffix)
    return path


def _write(embeddings: Embeddings, path: pathlib.Path, suffix: str) -> None:
    metadata = json.dumps(embeddings.metadata(), sort_keys=True)
    if suffix == ".npz":
        arrays = dict(
            embeddings=embeddings.embeddings,
            names=embeddings.names,
            num_frames=embeddings.num_frames,
            metadata=np.asarray(metadata),
        )
        if embeddings.pids is not None:
            arrays["pids"] = embeddings.pids
        if embeddings.camids is not None:
            arrays["camids"] = embeddings.camids
        with path.open("wb") as file:
            np.savez(file, **arrays)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = embeddings.embeddings.shape[1]
        columns = {
            "name": pa.array(embeddings.names.tolist(), pa.string()),
            "num_frames": pa.array(embeddings.num_frames, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(embeddings.embeddings.reshape(-1), pa.float32()), dim
            ),
        }
        if embeddings.pids is not None:
            columns["pid"] = pa.array(embeddings.pids, pa.int64())
        if embeddings.camids is not None:
            columns["camid"] = pa.array(embeddings.camids, pa.int64())
        table = pa.table(columns).replace_schema_metadata(
            {_PARQUET_METADATA_KEY: metadata.encode()}
        )
        pq.write_table(table, path)


def load(path: str | os.PathLike) -> Embeddings:
    """Reads a file written by `save`; a clear ServingInputError for anything else."""
    path = pathlib.Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise ServingInputError(f"{path}: no such embeddings file")
    try:
        if suffix == ".npz":
            columns, metadata = _read_npz(path)
        else:
            columns, metadata = _read_parquet(path)
    except ServingInputError:
        raise
    except Exception as error:  # any parse failure means: not one of our files
        raise ServingInputError(
            f"{path}: not a readable embeddings file ({type(error).__name__}: {error}); expected "
            "one written by python -m psta_jax.embed"
        ) from error
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ServingInputError(
            f"{path}: embeddings format version "
            f"{metadata.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    _check_finite(path, columns["embeddings"], columns["names"])
    checkpoint = CheckpointIdentity(**metadata["checkpoint"])
    return Embeddings(
        checkpoint=checkpoint,
        normalised=bool(metadata["normalised"]),
        source=metadata.get("source") or {},
        protocol=metadata.get("protocol"),
        **columns,
    )


def _check_finite(path: pathlib.Path, embeddings: np.ndarray, names: np.ndarray) -> None:
    """A ServingInputError naming the first row that holds NaN or an infinite value."""
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        return  # Embeddings reports the wrong shape or type
    bad = ~np.isfinite(embeddings)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    row = int(rows[0])
    kind = "NaN" if np.isnan(embeddings[row]).any() else "an infinite value"
    name = f" ({names[row]})" if row < len(names) else ""
    raise ServingInputError(
        f"{path}: row {row}{name} holds {kind} ({len(rows)} of {len(embeddings)} rows are not "
        "finite); distances to it mean nothing. Re-embed those tracklets (a checkpoint whose "
        "training diverged gives NaN: check its loss) or drop the rows"
    )


def _read_npz(path: pathlib.Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as archive:
        missing = {"embeddings", "names", "num_frames", "metadata"} - set(archive.files)
        if missing:
            raise ServingInputError(
                f"{path}: missing arrays {sorted(missing)}; expected a file "
                "written by python -m psta_jax.embed"
            )
        columns = {
            "embeddings": archive["embeddings"],
            "names": archive["names"],
            "num_frames": archive["num_frames"],
            "pids": archive["pids"] if "pids" in archive.files else None,
            "camids": archive["camids"] if "camids" in archive.files else None,
        }
        metadata = json.loads(str(archive["metadata"]))
    return columns, metadata


def _read_parquet(path: pathlib.Path) -> tuple[dict, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_PARQUET_METADATA_KEY)
    missing = {"name", "num_frames", "embedding"} - set(table.column_names)
    if raw is None or missing:
        raise ServingInputError(
            f"{path}: not written by python -m psta_jax.embed (missing "
            f"{sorted(missing) or 'the psta_jax schema metadata'})"
        )
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    values = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    columns = {
        "embeddings": values.reshape(-1, dim),
        "names": np.asarray(table.column("name").to_pylist(), dtype=str),
        "num_frames": table.column("num_frames").to_numpy(),
        "pids": table.column("pid").to_numpy() if "pid" in table.column_names else None,
        "camids": table.column("camid").to_numpy() if "camid" in table.column_names else None,
    }
    return columns, json.loads(raw)

"""Embedding files: npz and Parquet round trips and clear errors for other files."""

import dataclasses

import numpy as np
import pytest

from psta_jax.serving import embedding_file
from psta_jax.serving.errors import ServingInputError
from tests.serving.helpers import IDENTITY, labelled_embeddings


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
@pytest.mark.parametrize("labelled", [True, False])
def test_round_trip_is_bit_exact(tmp_path, suffix, labelled):
    rng = np.random.default_rng(0)
    original = labelled_embeddings(
        rng,
        [1, 1, 2, 3],
        [0, 1, 0, 1],
        normalised=True,
        source={"kind": "folder", "path": "/x"},
        protocol="mars",
    )
    if not labelled:
        original = dataclasses.replace(original, pids=None, camids=None)
    path = embedding_file.save(original, tmp_path / f"e{suffix}")
    loaded = embedding_file.load(path)
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.embeddings, original.embeddings)
    assert loaded.names.tolist() == original.names.tolist()
    np.testing.assert_array_equal(loaded.num_frames, original.num_frames)
    assert loaded.has_labels == labelled
    if labelled:
        np.testing.assert_array_equal(loaded.pids, original.pids)
        np.testing.assert_array_equal(loaded.camids, original.camids)
    assert loaded.normalised and loaded.checkpoint == IDENTITY
    assert loaded.source == {"kind": "folder", "path": "/x"} and loaded.protocol == "mars"


def test_bad_files_say_what_was_expected(tmp_path):
    with pytest.raises(ServingInputError, match=r"must end in one of \('.npz', '.parquet'\)"):
        embedding_file.load(tmp_path / "e.csv")
    with pytest.raises(ServingInputError, match="no such embeddings file"):
        embedding_file.load(tmp_path / "missing.npz")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ServingInputError, match="not a readable embeddings file"):
        embedding_file.load(tmp_path / "junk.parquet")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ServingInputError, match=r"missing arrays \['embeddings'"):
        embedding_file.load(tmp_path / "other.npz")


def test_rows_must_agree():
    with pytest.raises(ServingInputError, match=r"names has shape \(2,\); expected \(3,\)"):
        embedding_file.Embeddings(
            embeddings=np.zeros((3, 4), np.float32),
            names=["a", "b"],
            num_frames=[1, 1, 1],
            checkpoint=IDENTITY,
        )
    with pytest.raises(ServingInputError, match="float32"):
        embedding_file.Embeddings(
            embeddings=np.zeros((3, 4)),
            names=["a", "b", "c"],
            num_frames=[1, 1, 1],
            checkpoint=IDENTITY,
        )

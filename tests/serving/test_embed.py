"""python -m psta_jax.embed on a tiny trained run: splits and folders embed as evaluation
does, embed -> search gives the evaluator's CMC/mAP exactly, and bad input gets one message."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from psta_jax import embed, search
from psta_jax.serving import embedder, embedding_file, tracklets
from psta_jax.serving.errors import ServingInputError
from psta_jax.training import trained_model
from tests.helpers.tolerances import assert_close_to_scale
from tests.serving.helpers import random_frames, write_tracklet

pytestmark = [
    pytest.mark.xdist_group("serving"),
    pytest.mark.slow,  # trains the tiny run first (tests/serving/conftest.py)
    # The CLIs run in this process, after JAX started: their XLA:CPU flags cannot apply.
    pytest.mark.filterwarnings("ignore:JAX is already running"),
]


def _embed(*args: str) -> embedding_file.Embeddings:
    return embed.main([*args, "--noprogress"])


@pytest.fixture(scope="module")
def split_files(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    files = {"query": out / "query.parquet", "gallery": out / "gallery.npz"}
    for split, path in files.items():
        _embed("--checkpoint", str(trained_run), "--split", f"mars:{split}", "--out", str(path))
    return files


def test_embed_then_search_gives_the_evaluators_metrics_exactly(trained_run, split_files, capsys):
    result = search.main(
        [
            "--gallery",
            str(split_files["gallery"]),
            "--query",
            str(split_files["query"]),
            "--top_k",
            "5",
        ]
    )
    expected = json.loads((trained_run / "results.json").read_text())
    assert result.protocol == expected["protocol"] == "mars"
    assert result.metrics.mAP == expected["mAP"]
    assert result.metrics.cmc.tolist() == expected["cmc"]
    assert result.metrics.num_gallery == expected["num_gallery"]
    query = embedding_file.load(split_files["query"])
    assert query.has_labels and query.protocol == "mars" and not query.normalised
    assert query.checkpoint.step == 2 and query.checkpoint.path == str(trained_run)
    assert query.names[0].startswith("query_")
    assert "R1      R5     R10     R20     mAP" in capsys.readouterr().out


def test_embedding_on_two_devices_matches_one(trained_run, split_files, tmp_path):
    """The batch is sharded over every local device (two CPU devices here)."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    out = tmp_path / "query_2dev.npz"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "psta_jax.embed",
            "--checkpoint",
            str(trained_run),
            "--split",
            "mars:query",
            "--out",
            str(out),
            "--noprogress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "on 2 cpu device(s)" in completed.stderr
    two = embedding_file.load(out)
    one = embedding_file.load(split_files["query"])
    assert two.names.tolist() == one.names.tolist()
    assert_close_to_scale(two.embeddings, one.embeddings)  # two programs, float32


@pytest.fixture(scope="module")
def query_store(trained_run):
    model = trained_model.load_trained_model(trained_run)
    source = tracklets.split_source(embedder.split_dataset(model, "mars", None), "query")
    return model, tracklets.read_split(source)


def _write_store_tracklets(store, positions, root, names):
    """Tracklets of a split as frame folders (the exact encoded bytes)."""
    for position, name in zip(positions, names, strict=True):
        folder = root / name
        folder.mkdir(parents=True)
        start, stop = store.offsets[position], store.offsets[position + 1]
        for index in range(start, stop):
            (folder / f"f{index - start:04d}.jpg").write_bytes(store.frames[index].numpy())


def test_a_folder_embeds_as_the_split_it_came_from(query_store, split_files, tmp_path):
    model, store = query_store
    positions = [0, 3, 5]
    names = [f"{store.pids[p]}_{store.camids[p]}_t{p}" for p in positions]
    _write_store_tracklets(store, positions, tmp_path / "tracklets", names)
    out = tmp_path / "folder.npz"
    folder = _embed(
        "--checkpoint",
        str(model.identity.path),
        "--tracklets",
        str(tmp_path / "tracklets"),
        "--out",
        str(out),
    )
    split = embedding_file.load(split_files["query"])
    assert_close_to_scale(folder.embeddings, split.embeddings[positions], rel=1e-6)
    assert folder.names.tolist() == names
    np.testing.assert_array_equal(folder.pids, store.pids[positions])
    np.testing.assert_array_equal(folder.camids, store.camids[positions])
    np.testing.assert_array_equal(folder.num_frames, store.num_frames[positions])
    assert folder.source == {"kind": "folder", "path": str((tmp_path / "tracklets").resolve())}
    assert folder.checkpoint.same_model(split.checkpoint)

    # The same folder as the query of a search, embedded on the fly.
    on_the_fly = search.main(
        [
            "--gallery",
            str(split_files["gallery"]),
            "--query",
            str(tmp_path / "tracklets"),
            "--checkpoint",
            str(model.identity.path),
            "--top_k",
            "4",
        ]
    )
    from_file = search.main(
        ["--gallery", str(split_files["gallery"]), "--query", str(out), "--top_k", "4"]
    )
    assert [[e.position for e in r] for r in on_the_fly.ranked] == [
        [e.position for e in r] for r in from_file.ranked
    ]


def test_labels_csv_and_normalised_output(query_store, tmp_path):
    model, _ = query_store
    rng = np.random.default_rng(0)
    for name in ("walk_a", "walk_b"):
        write_tracklet(tmp_path / "t" / name, random_frames(rng, 5, size=(64, 32)))
    (tmp_path / "t" / "labels.csv").write_text("tracklet,pid,camera\nwalk_a,7,1\nwalk_b,8,2\n")
    result = embedder.embed_folder(model, tmp_path / "t", l2_normalise=True, show_progress=False)
    assert result.pids.tolist() == [7, 8] and result.camids.tolist() == [1, 2]
    assert result.normalised
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, rtol=1e-6)


def test_short_tracklets_repeat_frames_as_the_sampler_does(query_store, tmp_path):
    model, _ = query_store
    seq_len = model.clip_shape[0]
    frames = random_frames(np.random.default_rng(1), seq_len - 1, size=(64, 32))
    # RRS test clip of L = T - 1 frames: 0, 1, ..., T-2, T-2 (the last frame repeated).
    write_tracklet(tmp_path / "short" / "a", frames)
    write_tracklet(tmp_path / "padded" / "a", np.concatenate([frames, frames[-1:]]))
    write_tracklet(tmp_path / "single" / "a", frames[:1])
    write_tracklet(tmp_path / "single_padded" / "a", np.repeat(frames[:1], seq_len, axis=0))
    got = {
        name: embedder.embed_folder(model, tmp_path / name, show_progress=False)
        for name in ("short", "padded", "single", "single_padded")
    }
    assert got["short"].num_frames.tolist() == [seq_len - 1]
    np.testing.assert_array_equal(got["short"].embeddings, got["padded"].embeddings)
    np.testing.assert_array_equal(got["single"].embeddings, got["single_padded"].embeddings)
    assert got["short"].pids is None  # folder names without <pid>_<camera>_: unknown


def _error_of(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        embed.main([*args, "--noprogress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_folders_get_one_clear_message(trained_run, tmp_path, capsys):
    ckpt = ["--checkpoint", str(trained_run), "--out", str(tmp_path / "e.npz")]
    rng = np.random.default_rng(2)

    (tmp_path / "none").mkdir()
    flat = tmp_path / "flat"
    write_tracklet(flat, random_frames(rng, 1))  # frames directly in the folder
    assert "no tracklet sub-folders" in _error_of(
        capsys, *ckpt, "--tracklets", str(tmp_path / "none")
    )
    assert "holds 1 frames directly" in _error_of(capsys, *ckpt, "--tracklets", str(flat))

    write_tracklet(tmp_path / "empty" / "1_0_ok", random_frames(rng, 2))
    (tmp_path / "empty" / "1_1_nothing").mkdir()
    err = _error_of(capsys, *ckpt, "--tracklets", str(tmp_path / "empty"))
    assert "1 tracklet folder(s) hold no .jpg/.png frames: 1_1_nothing" in err

    write_tracklet(tmp_path / "broken" / "a", random_frames(rng, 2))
    (tmp_path / "broken" / "a" / "frame_002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    err = _error_of(capsys, *ckpt, "--tracklets", str(tmp_path / "broken"))
    assert "frame_002.jpg: unreadable frame" in err and "expected a JPEG or PNG" in err

    write_tracklet(tmp_path / "labels" / "a", random_frames(rng, 2))
    write_tracklet(tmp_path / "labels" / "b", random_frames(rng, 2))
    (tmp_path / "labels" / "labels.csv").write_text("tracklet,pid,camera\na,1,0\n")
    err = _error_of(capsys, *ckpt, "--tracklets", str(tmp_path / "labels"))
    assert "labels.csv: no row for tracklet(s) b" in err
    (tmp_path / "labels" / "labels.csv").write_text("name,pid\na,1\n")
    err = _error_of(capsys, *ckpt, "--tracklets", str(tmp_path / "labels"))
    assert "expected a header with columns tracklet,pid,camera" in err

    err = _error_of(
        capsys,
        "--checkpoint",
        str(trained_run),
        "--tracklets",
        str(tmp_path / "labels"),
        "--out",
        str(tmp_path / "e.csv"),
    )
    assert "expected a file ending in one of ('.npz', '.parquet')" in err
    err = _error_of(capsys, *ckpt, "--split", "mars:validation")
    assert "expected DATASET:SPLIT with SPLIT one of train, query, gallery" in err
    err = _error_of(
        capsys, *ckpt, "--split", "prid2011:query", "--data_dir", str(tmp_path / "no_data")
    )
    assert "--split prid2011:query: " in err and "raw dataset folder not found" in err


def test_bad_checkpoints_get_one_clear_message(trained_run, tmp_path, capsys):
    write_tracklet(tmp_path / "t" / "a", random_frames(np.random.default_rng(3), 2))
    args = ["--tracklets", str(tmp_path / "t"), "--out", str(tmp_path / "e.npz")]
    err = _error_of(capsys, "--checkpoint", str(tmp_path / "nowhere"), *args)
    assert "no checkpoint found at" in err

    other = tmp_path / "other_model"
    shutil.copytree(trained_run / "checkpoints", other / "checkpoints")
    config = json.loads((trained_run / "config.json").read_text())
    config["model"]["feature_dim"] = 24
    (other / "config.json").write_text(json.dumps(config))
    err = _error_of(capsys, "--checkpoint", str(other), *args)
    assert "does not match the model its" in err and "config.json describes" in err

    (other / "config.json").unlink()
    err = _error_of(capsys, "--checkpoint", str(other), *args)
    assert "no config.json at" in err and "training workdir" in err


def test_scan_folder_reads_pid_and_camera_from_names(tmp_path):
    rng = np.random.default_rng(4)
    for name in ("12_3_x", "-1_0_junk", "7_1_y"):
        write_tracklet(tmp_path / name, random_frames(rng, 1), suffix=".jpg")
    folder = tracklets.scan_folder(tmp_path)
    assert folder.names == ("-1_0_junk", "12_3_x", "7_1_y")
    assert folder.pids.tolist() == [-1, 12, 7] and folder.camids.tolist() == [0, 3, 1]
    write_tracklet(tmp_path / "unnamed", random_frames(rng, 1))
    assert tracklets.scan_folder(tmp_path).pids is None
    with pytest.raises(ServingInputError, match="not a folder"):
        tracklets.scan_folder(tmp_path / "12_3_x" / "frame_000.jpg")

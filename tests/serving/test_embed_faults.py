"""Faults of embed and export on a tiny trained run: a full disk (fault injection), Ctrl-C and
SIGTERM mid-run (a real signal to a subprocess), a damaged config.json, and an export over an
older one. Each leaves the earlier output byte-identical and says what happened in one
message, without a traceback."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from psta_jax import embed, export
from psta_jax.serving import embedder, export_artifacts
from tests.conftest import REPO_ROOT
from tests.serving.helpers import random_frames

pytestmark = [
    pytest.mark.xdist_group("serving"),
    pytest.mark.slow,  # trains the tiny run first (tests/serving/conftest.py)
    pytest.mark.filterwarnings("ignore:JAX is already running"),
]


def _fails(capsys, command, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        command.main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _snapshot(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_embed_on_a_full_disk_keeps_the_earlier_file(trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "query.parquet"
    args = ["--checkpoint", str(trained_run), "--split", "mars:query", "--noprogress"]
    embed.main([*args, "--out", str(out)])
    before = out.read_bytes()
    import pyarrow.parquet as pq

    def full_after_some_bytes(table, path):
        with open(path, "wb") as file:
            file.write(b"PAR1 some row groups")
        raise OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full_after_some_bytes)
    err = _fails(capsys, embed, [*args, "--normalise", "--out", str(out)])
    assert f"cannot write the embeddings file {out}: " in err and "No space left" in err
    assert "MiB free" in err and "earlier output there is unchanged" in err
    assert out.read_bytes() == before and os.listdir(tmp_path) == [out.name]


def _start_embed(trained_run, out):
    """psta-embed in a subprocess over the train split, one clip per batch (long enough to
    be stopped mid-run); returns it once its first batches are done."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "psta_jax.embed",
            "--checkpoint",
            str(trained_run),
            "--split",
            "mars:train",
            "--batch_size",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        chunk = process.stderr.read1(4096)  # the progress bar, on stderr
        if not chunk:
            break
        seen += chunk
        done = re.findall(rb"\| *(\d+)/\d+ ", seen)
        if done and int(done[-1]) >= 2:
            return process, seen
    process.kill()
    pytest.fail(f"embed did not start its batches: {seen[-2000:]!r}")


@pytest.mark.parametrize(
    "signal_number, exit_code, message",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "stopped by SIGTERM")],
)
def test_a_stop_signal_mid_run_stops_embed_and_keeps_the_earlier_file(
    trained_run, tmp_path, signal_number, exit_code, message
):
    out = tmp_path / "train.npz"
    out.write_bytes(b"an earlier embeddings file")
    process, seen = _start_embed(trained_run, out)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=120)
    stderr = (seen + stderr).decode(errors="replace")
    assert process.returncode == exit_code, stderr[-3000:]  # not 0, not 139 (a crash)
    assert message in stderr and "Traceback" not in stderr
    assert "Exception ignored" not in stderr  # not swallowed by a library's __del__
    assert b"wrote" not in stdout
    assert out.read_bytes() == b"an earlier embeddings file"
    assert os.listdir(tmp_path) == [out.name]  # no temporary left


def test_a_damaged_config_json_is_one_message(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    text = (trained_run / "config.json").read_text()
    embed_args = ["--checkpoint", str(run), "--split", "mars:query", "--noprogress"]
    embed_args += ["--out", str(tmp_path / "e.npz")]
    export_args = ["--checkpoint", str(run), "--out", str(tmp_path / "export")]

    (run / "config.json").write_text(text[: len(text) // 2])  # truncated
    for command, args in ((embed, embed_args), (export, export_args)):
        err = _fails(capsys, command, args)
        assert f"{run / 'config.json'} is not valid JSON" in err and "Restore it" in err

    config = json.loads(text)
    del config["input"]  # parses, but lacks a section
    (run / "config.json").write_text(json.dumps(config))
    for command, args in ((embed, embed_args), (export, export_args)):
        err = _fails(capsys, command, args)
        assert f"{run / 'config.json'}: not a complete run config (AttributeError" in err
        assert "'input'" in err and "Restore it" in err
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "export").exists()


def _older_export(out):
    """What an earlier export left: its artifacts, listed by its export.json, and a user's
    file beside them."""
    (out / "saved_model" / "variables").mkdir(parents=True)
    (out / "saved_model" / "saved_model.pb").write_bytes(b"older model")
    (out / export_artifacts.EXPORTED_FILE).write_bytes(b"older artifact")
    files = {"jax_exported": export_artifacts.EXPORTED_FILE, "saved_model": "saved_model"}
    (out / "export.json").write_text(json.dumps({"files": files}))
    (out / "README.txt").write_text("the user's notes")


def test_export_on_a_full_disk_keeps_the_earlier_export(trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    _older_export(out)
    before = _snapshot(out)
    import tensorflow as tf

    def full_disk(embed_fn, clip_shape, path, platforms):
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"half a model")
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{path}/saved_model.pb.tmp; No space left on device"
        )

    monkeypatch.setattr(export_artifacts, "save_saved_model", full_disk)
    err = _fails(capsys, export, ["--checkpoint", str(trained_run), "--out", str(out)])
    assert f"cannot write the export in {out}: " in err and "No space left on device" in err
    assert "MiB free" in err and "free some space" in err
    assert _snapshot(out) == before  # byte-identical, no staging folder left


def test_export_replaces_only_what_an_earlier_export_wrote(trained_run, tmp_path, capsys):
    out = tmp_path / "export"
    _older_export(out)
    written = export.main(
        ["--checkpoint", str(trained_run), "--out", str(out), "--platforms", "cpu"]
        + ["--nosaved_model"]
    )
    assert set(written) == {"jax_exported", "metadata"}
    assert sorted(p.name for p in out.iterdir()) == [
        "README.txt",
        export_artifacts.EXPORTED_FILE,
        "export.json",
    ]  # the older saved_model/ is gone: it no longer matches the artifact
    assert (out / "README.txt").read_text() == "the user's notes"
    assert (out / export_artifacts.EXPORTED_FILE).read_bytes() != b"older artifact"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {"jax_exported": export_artifacts.EXPORTED_FILE}
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "export.json").stat().st_mode & 0o777 == 0o666 & ~mask  # as open() makes it
    assert not capsys.readouterr().err


def test_embed_reads_frames_named_1_to_10_in_numeric_order(trained_run, tmp_path):
    """A tracklet named 1.png ... 10.png embeds as the same frames named 01.png ... 10.png."""
    frames = random_frames(np.random.default_rng(9), 10, size=(64, 32))
    for name, width in (("plain", 0), ("padded", 2)):
        folder = tmp_path / name / "walker"
        folder.mkdir(parents=True)
        for number, frame in enumerate(frames, start=1):
            Image.fromarray(frame).save(folder / f"{number:0{width}d}.png")
    model = embedder.load_model(trained_run)
    got = {
        name: embedder.embed_folder(model, tmp_path / name, show_progress=False)
        for name in ("plain", "padded")
    }
    np.testing.assert_array_equal(got["plain"].embeddings, got["padded"].embeddings)

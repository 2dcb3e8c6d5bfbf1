"""Bad input and faults in the serving commands without a trained model: outputs replaced
whole or not at all (full and read-only disks by fault injection: root ignores chmod), stop
signals taken at safe points, search without true matches, bad embeddings, frames and
labels. The cases that need a trained run are in test_embed_faults.py."""

import errno
import os
import pathlib
import signal

import numpy as np
import pytest
from PIL import Image

from psta_jax import embed, export, search
from psta_jax.runtime import atomic_files, errors
from psta_jax.serving import embedding_file, ranking, report_page, tracklets
from psta_jax.serving.errors import ServingInputError
from tests.serving.helpers import labelled_embeddings, random_frames, write_tracklet

# The CLIs run in this process, after JAX started: their XLA:CPU flags cannot apply.
pytestmark = pytest.mark.filterwarnings("ignore:JAX is already running")


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _fails(capsys, command, args, code=1) -> str:
    with pytest.raises(SystemExit) as exit_info:
        command.main(args)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _embeddings(seed=0, pids=(1, 2, 3), camids=(0, 1, 0), **fields):
    return labelled_embeddings(np.random.default_rng(seed), list(pids), list(camids), **fields)


# ----------------------------------------------------------------------------- embeddings files


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_a_full_disk_leaves_the_earlier_embeddings_file_byte_identical(
    tmp_path, monkeypatch, suffix
):
    path = tmp_path / f"e{suffix}"
    embedding_file.save(_embeddings(0), path)
    before = path.read_bytes()

    def half_then_full(target, *args, **kwargs):  # the first bytes land, then the disk is full
        if hasattr(target, "write"):
            target.write(b"PK\x03\x04 partial")
        else:
            pathlib.Path(target).write_bytes(b"PAR1 partial")
        _full_disk()

    if suffix == ".npz":
        monkeypatch.setattr(np, "savez", half_then_full)
    else:
        import pyarrow.parquet as pq

        monkeypatch.setattr(pq, "write_table", lambda table, target: half_then_full(target))
    with pytest.raises(atomic_files.OutputError) as error:
        embedding_file.save(_embeddings(1), path)
    message = str(error.value)
    assert f"cannot write the embeddings file {path}" in message
    assert "No space left on device" in message and "MiB free" in message
    assert "free some space" in message and "unchanged" in message
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # the temporary is gone
    assert embedding_file.load(path).embeddings.tolist() == _embeddings(0).embeddings.tolist()


def test_embeddings_file_over_a_folder_is_one_message(tmp_path):
    (tmp_path / "e.npz").mkdir()
    with pytest.raises(atomic_files.OutputError, match="is an existing folder; expected a file"):
        embedding_file.save(_embeddings(0), tmp_path / "e.npz")


def test_embed_out_that_is_a_folder_or_read_only_fails_before_embedding(
    tmp_path, monkeypatch, capsys
):
    args = ["--checkpoint", str(tmp_path / "no_checkpoint"), "--split", "mars:query"]
    (tmp_path / "e.npz").mkdir()
    err = _fails(capsys, embed, [*args, "--out", str(tmp_path / "e.npz")])
    assert f"--out {tmp_path / 'e.npz'} is an existing folder; expected a file path" in err
    (tmp_path / "file").write_text("x")
    err = _fails(capsys, embed, [*args, "--out", str(tmp_path / "file" / "e.npz")])
    assert f"{tmp_path / 'file'} is a file, not a folder" in err

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", read_only)
    err = _fails(capsys, embed, [*args, "--out", str(tmp_path / "new.npz")])
    assert "cannot write --out" in err and "Read-only file system" in err
    assert "choose a writable --out" in err and "MiB free" in err
    assert "no checkpoint found" not in err  # checked before the checkpoint is opened


def test_export_out_that_is_a_file_or_holds_others_files_is_one_message(tmp_path, capsys):
    args = ["--checkpoint", str(tmp_path / "no_checkpoint"), "--platforms", "cpu"]
    (tmp_path / "file").write_text("x")
    err = _fails(capsys, export, [*args, "--out", str(tmp_path / "file")])
    assert "is an existing file; expected a folder" in err
    (tmp_path / "out" / "saved_model").mkdir(parents=True)  # no export.json claims it
    err = _fails(capsys, export, [*args, "--out", str(tmp_path / "out")])
    assert "saved_model is there but no export.json of an earlier export lists it" in err
    (tmp_path / "out" / "export.json").write_text('{"files": ')  # not ours (or truncated)
    err = _fails(capsys, export, [*args, "--out", str(tmp_path / "out")])
    assert "export.json is not an export.json written by psta-export" in err
    assert (tmp_path / "out" / "saved_model").is_dir()


# ----------------------------------------------------------------------------- stop signals


def test_stop_signals_are_raised_at_safe_points_only(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    path = tmp_path / "out.bin"
    path.write_bytes(b"earlier")
    with atomic_files.deferred_stop_signals():
        os.kill(os.getpid(), signal.SIGINT)  # recorded: nothing raised here
        assert atomic_files.stop_requested()
        with pytest.raises(KeyboardInterrupt):
            atomic_files.raise_if_stopped()
        assert not atomic_files.stop_requested()  # raised once
        with pytest.raises(errors.Terminated) as stopped:
            with atomic_files.replacing(path, "the output") as temporary:
                temporary.write_bytes(b"new and complete")
                os.kill(os.getpid(), signal.SIGTERM)  # while writing: no rename
        assert stopped.value.exit_code == errors.TERMINATED_EXIT_CODE == 143
        assert "stopped by SIGTERM" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is before
    assert path.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(KeyboardInterrupt):  # recorded but not raised inside: raised at the end
        with atomic_files.deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)


# ----------------------------------------------------------------------------- search


def _folder_pair(tmp_path, q_pids=(1, 2), g_pids=(1, 2, 3)):
    rng = np.random.default_rng(5)
    files = []
    for part, pids, cams in (("q", q_pids, (0, 1)), ("g", g_pids, (1, 0, 1))):
        root = tmp_path / f"{part}_frames"
        items = labelled_embeddings(
            rng, list(pids), list(cams)[: len(pids)], source={"kind": "folder", "path": str(root)}
        )
        for name in items.names:
            write_tracklet(root / name, random_frames(rng, 2))
        path = tmp_path / f"{part}.npz"
        embedding_file.save(items, path)
        files.append(path)
    return files


def test_search_page_on_a_full_disk_keeps_the_earlier_page(tmp_path, monkeypatch, capsys):
    query, gallery = _folder_pair(tmp_path)
    out = tmp_path / "out"
    args = ["--query", str(query), "--gallery", str(gallery), "--top_k", "2", "--out", str(out)]
    search.main(args)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    assert "index.html" in before and "sheets/query_00001.png" in before

    real_csv = report_page.write_rankings_csv

    def csv_then_full(query, result, path):
        real_csv(query, result, path)
        _full_disk()

    monkeypatch.setattr(report_page, "write_rankings_csv", csv_then_full)
    err = _fails(capsys, search, [*args, "--max_sheets", "1"])
    assert f"cannot write the search page in {out}: No space left on device" in err
    assert "MiB free" in err
    assert _snapshot(out) == before  # byte-identical, no staging folder left

    monkeypatch.setattr(report_page, "write_rankings_csv", real_csv)
    search.main([*args, "--max_sheets", "1"])
    after = _snapshot(out)
    assert "sheets/query_00001.png" not in after  # the earlier search's extra sheet is gone
    assert after["notes.txt"] == b"mine" and "sheets/query_00000.png" in after
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html",
        "notes.txt",
        "rankings.csv",
        "sheets",
    ]


def test_search_out_that_is_a_file_is_one_message(tmp_path, capsys):
    query, gallery = _folder_pair(tmp_path)
    err = _fails(
        capsys, search, ["--query", str(query), "--gallery", str(gallery), "--out", str(query)]
    )
    assert "is an existing file; expected a folder" in err


def test_search_without_true_matches_prints_rankings_and_says_why_no_metrics(tmp_path, capsys):
    query, gallery = _folder_pair(tmp_path, q_pids=(101, 102))  # new identities
    out = tmp_path / "out"
    result = search.main(
        ["--query", str(query), "--gallery", str(gallery), "--top_k", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert result.metrics is None and len(result.ranked) == 2
    assert "query 0: 101_0_0 pid 101 cam 0" in printed and "     1  " in printed
    assert "no CMC/mAP: no query has a true match in the gallery" in printed
    assert "mAP" not in printed.replace("no CMC/mAP", "")
    assert "no query has a true match" in (out / "index.html").read_text()
    # One query with a true match is enough for metrics.
    q, g = (embedding_file.load(p) for p in _folder_pair(tmp_path / "some", q_pids=(101, 2)))
    assert ranking.search(q, g, ranking.SearchOptions()).metrics.num_valid_queries == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_search_refuses_non_finite_embeddings_naming_the_row(tmp_path, capsys, bad):
    items = _embeddings(2, pids=(1, 2, 3, 4), camids=(0, 1, 0, 1))
    items.embeddings[2, 5] = bad
    items.embeddings[3, 0] = bad
    embedding_file.save(items, tmp_path / "g.parquet")
    embedding_file.save(_embeddings(3), tmp_path / "q.npz")
    err = _fails(
        capsys,
        search,
        ["--query", str(tmp_path / "q.npz"), "--gallery", str(tmp_path / "g.parquet")],
    )
    kind = "NaN" if np.isnan(bad) else "an infinite value"
    assert f"{tmp_path / 'g.parquet'}: row 2 ({items.names[2]}) holds {kind}" in err
    assert "(2 of 4 rows are not finite)" in err


def test_zero_frames_per_tracklet_is_a_usage_error(tmp_path, capsys):
    query, gallery = _folder_pair(tmp_path)
    args = ["--query", str(query), "--gallery", str(gallery), "--out", str(tmp_path / "o")]
    err = _fails(capsys, search, [*args, "--frames_per_tracklet", "0"], code=2)
    assert "--frames_per_tracklet=0: 0 is not a positive integer" in err
    q, g = embedding_file.load(query), embedding_file.load(gallery)
    result = ranking.search(q, g, ranking.SearchOptions())
    with pytest.raises(ServingInputError, match="frames per tracklet must be at least 1, got 0"):
        report_page.write_report(q, g, result, tmp_path / "o", frames_per_tracklet=0)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- frames and labels


def test_frames_sort_numerically(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "a"
    folder.mkdir()
    for number in (1, 2, 3, 10, 11, 20):
        Image.fromarray(random_frames(rng, 1)[0]).save(folder / f"{number}.jpg")
    Image.fromarray(random_frames(rng, 1)[0]).save(folder / "f9_b.jpg")
    Image.fromarray(random_frames(rng, 1)[0]).save(folder / "f10_a.jpg")
    scanned = tracklets.scan_folder(tmp_path)
    names = [p.name for p in scanned.frame_paths[0]]
    assert names == [
        "1.jpg",
        "2.jpg",
        "3.jpg",
        "10.jpg",
        "11.jpg",
        "20.jpg",
        "f9_b.jpg",
        "f10_a.jpg",
    ]
    assert sorted(["x10", "x9", "x09"], key=tracklets.natural_key) == ["x09", "x9", "x10"]


@pytest.mark.parametrize("real_format", ["WEBP", "BMP"])
def test_a_frame_in_another_format_named_jpg_is_named(tmp_path, real_format):
    rng = np.random.default_rng(7)
    write_tracklet(tmp_path / "a", random_frames(rng, 2), suffix=".jpg")
    Image.fromarray(random_frames(rng, 1)[0]).save(tmp_path / "a" / "frame_009.jpg", real_format)
    with pytest.raises(ServingInputError) as error:
        tracklets.read_store(tracklets.scan_folder(tmp_path))
    message = str(error.value)
    assert str(tmp_path.resolve() / "a" / "frame_009.jpg") in message
    assert f"a {real_format} image, not a JPEG or PNG image" in message and "convert it" in message


def test_labels_csv_with_a_byte_order_mark_and_duplicate_rows(tmp_path):
    rng = np.random.default_rng(8)
    for name in ("walk_a", "walk_b"):
        write_tracklet(tmp_path / name, random_frames(rng, 1))
    labels = tmp_path / "labels.csv"
    text = "tracklet,pid,camera\nwalk_a,7,1\nwalk_b,8,2\nwalk_a,7,1\n"  # identical duplicate
    labels.write_text(text, encoding="utf-8-sig")  # what spreadsheet programs write
    scanned = tracklets.scan_folder(tmp_path)
    assert scanned.pids.tolist() == [7, 8] and scanned.camids.tolist() == [1, 2]
    labels.write_text(text + "walk_b,9,2\n", encoding="utf-8-sig")
    with pytest.raises(ServingInputError) as error:
        tracklets.scan_folder(tmp_path)
    assert (
        f"{labels}: tracklet 'walk_b' has two rows that disagree: line 3 (pid 8, camera 2) "
        "and line 5 (pid 9, camera 2)"
    ) in str(error.value)

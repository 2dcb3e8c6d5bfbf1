"""psta_jax.search on given embeddings: rankings, the evaluator's metrics, sheets and page."""

import dataclasses
import html.parser
import subprocess
import sys

import numpy as np
import pytest

from psta_jax import evaluation, inspection, search
from psta_jax.serving import embedding_file, ranking, report_page
from psta_jax.serving.embedding_file import CheckpointIdentity
from psta_jax.serving.errors import ServingInputError
from tests.conftest import REPO_ROOT
from tests.serving.helpers import labelled_embeddings, random_frames, write_tracklet

# search.main runs in this process, after JAX started: its XLA:CPU flags cannot apply.
pytestmark = pytest.mark.filterwarnings("ignore:JAX is already running")
Q_PIDS, Q_CAMS = [1, 2, 3, 4], [0, 1, 2, 0]
G_PIDS, G_CAMS = [1, 1, 2, 2, 3, 3, 4, 5, -1, 0], [0, 1, 0, 2, 1, 0, 0, 1, 2, 3]


def _pair(seed=0, **fields):
    rng = np.random.default_rng(seed)
    pids = np.asarray(Q_PIDS + G_PIDS)
    both = labelled_embeddings(rng, pids, Q_CAMS + G_CAMS, **fields)
    split = len(Q_PIDS)

    def part(rows):
        return dataclasses.replace(
            both,
            embeddings=both.embeddings[rows],
            names=both.names[rows],
            num_frames=both.num_frames[rows],
            pids=both.pids[rows],
            camids=both.camids[rows],
        )

    return part(slice(0, split)), part(slice(split, None))


@pytest.mark.parametrize("protocol", ["mars", "duke"])
@pytest.mark.parametrize(
    "distance, rerank", [("cosine", False), ("euclidean", False), ("cosine", True)]
)
def test_metrics_are_the_evaluators_and_lists_follow_its_rule(protocol, distance, rerank):
    query, gallery = _pair()
    options = ranking.SearchOptions(distance=distance, rerank=rerank, protocol=protocol, top_k=20)
    result = ranking.search(query, gallery, options)
    expected = evaluation.evaluate(
        query.embeddings,
        gallery.embeddings,
        query.pids,
        gallery.pids,
        query.camids,
        gallery.camids,
        protocol=protocol,
        distance=distance,
        rerank=rerank,
    )
    np.testing.assert_array_equal(result.metrics.cmc, expected.cmc)
    assert result.metrics.mAP == expected.mAP
    appended = evaluation.get_protocol(protocol).append_query_to_gallery
    assert len(result.names) == (len(Q_PIDS) if appended else 0) + len(G_PIDS) - 1
    assert -1 not in result.gallery.pids.tolist()  # junk dropped
    for row, entries in enumerate(result.ranked):
        order, matches = inspection.rank_gallery(
            result.distances[row],
            query.pids[row],
            query.camids[row],
            result.gallery.pids,
            result.gallery.camids,
            top_k=20,
        )
        np.testing.assert_array_equal(result.top_indices[row], order)
        assert [e.match for e in entries] == matches.tolist()
        assert [e.distance for e in entries] == sorted(e.distance for e in entries)
        shown = evaluation.reported_distance(result.distances[row][order], distance)
        np.testing.assert_allclose([e.distance for e in entries], shown, rtol=1e-6)
        if distance == "cosine":  # printed as 1 - cos: a distance, never negative
            assert all(-1e-6 <= e.distance <= 2 + 1e-6 for e in entries)


def test_exclude_same_camera_hides_the_querys_camera():
    query, gallery = _pair()
    plain = ranking.search(query, gallery, ranking.SearchOptions(top_k=20))
    hidden = ranking.search(
        query, gallery, ranking.SearchOptions(top_k=20, exclude_same_camera=True)
    )
    for row, entries in enumerate(hidden.ranked):
        assert all(e.camid != query.camids[row] for e in entries)
        assert len(entries) < len(plain.ranked[row])
    assert hidden.metrics.mAP == plain.metrics.mAP  # metrics follow the protocol only


def test_unlabelled_files_rank_without_metrics():
    query, gallery = _pair()
    query = dataclasses.replace(query, pids=None, camids=None)
    result = ranking.search(query, gallery, ranking.SearchOptions(top_k=3))
    assert result.metrics is None and result.protocol == "duke"
    assert all(e.match is None for entries in result.ranked for e in entries)
    assert all(len(entries) == 3 for entries in result.ranked)
    text = ranking.format_rankings(query, result)
    assert text.startswith(f"distance: 1 - cosine similarity\nquery 0: {query.names[0]} (5 frames)")


def test_incompatible_inputs_say_why():
    query, gallery = _pair()
    other = dataclasses.replace(gallery, checkpoint=CheckpointIdentity("ffff", 9))
    with pytest.raises(ServingInputError, match="different checkpoints"):
        ranking.search(query, other, ranking.SearchOptions())
    normalised = dataclasses.replace(gallery, normalised=True)
    with pytest.raises(ServingInputError, match="both files L2-normalised or both not"):
        ranking.search(query, normalised, ranking.SearchOptions(distance="euclidean"))
    no_cams = dataclasses.replace(gallery, camids=None)
    with pytest.raises(ServingInputError, match="exclude_same_camera needs the camera"):
        ranking.search(query, no_cams, ranking.SearchOptions(exclude_same_camera=True))
    with pytest.raises(ServingInputError, match="top-k must be at least 1"):
        ranking.SearchOptions(top_k=0)


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag in ("script", "link") or (tag == "a" and "://" in attrs.get("href", "")):
            self.links.append(attrs)


def _folder_pair(tmp_path):
    """Query and gallery files whose tracklets are real frame folders."""
    rng = np.random.default_rng(1)
    roots = {name: tmp_path / name for name in ("query_frames", "gallery_frames")}
    query, gallery = _pair()
    files = []
    for items, root in ((query, roots["query_frames"]), (gallery, roots["gallery_frames"])):
        for name in items.names:
            write_tracklet(root / name, random_frames(rng, 3))
        files.append(dataclasses.replace(items, source={"kind": "folder", "path": str(root)}))
    return files


def test_cli_prints_rankings_and_metrics_and_writes_the_page(tmp_path, capsys):
    query, gallery = _folder_pair(tmp_path)
    embedding_file.save(query, tmp_path / "q.parquet")
    embedding_file.save(gallery, tmp_path / "g.npz")
    out = tmp_path / "out"
    result = search.main(
        [
            "--gallery",
            str(tmp_path / "g.npz"),
            "--query",
            str(tmp_path / "q.parquet"),
            "--top_k",
            "3",
            "--protocol",
            "mars",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert f"query 0: {query.names[0]} pid 1 cam 0 (5 frames)" in printed
    assert evaluation.format_report(result.metrics) in printed
    parser = _Images()
    parser.feed((out / report_page.PAGE).read_text())
    sheets = sorted(p.relative_to(out).as_posix() for p in (out / "sheets").glob("*.png"))
    assert parser.sources == sheets and len(sheets) == len(Q_PIDS)
    assert parser.links == []  # self-contained: no scripts, stylesheets or outside links
    for source in parser.sources:
        assert (out / source).read_bytes()[:4] == b"\x89PNG"
    rows = (out / report_page.RANKINGS).read_text().splitlines()
    assert rows[0] == "query,rank,gallery,distance,pid,camera,match"
    assert len(rows) == 1 + 3 * len(Q_PIDS)


def test_cli_errors_are_one_message_without_traceback(tmp_path):
    query, gallery = _pair()
    embedding_file.save(gallery, tmp_path / "g.npz")
    (tmp_path / "folder").mkdir()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "psta_jax.search",
            "--gallery",
            str(tmp_path / "g.npz"),
            "--query",
            str(tmp_path / "folder"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert completed.returncode == 1
    assert "is a folder: pass --checkpoint" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_unlabelled_search_draws_grey_sheets(tmp_path):
    query, gallery = _folder_pair(tmp_path)
    query = dataclasses.replace(query, pids=None, camids=None)
    result = ranking.search(query, gallery, ranking.SearchOptions(top_k=2))
    page = report_page.write_report(query, gallery, result, tmp_path / "out", max_sheets=1)
    text = page.read_text()
    assert text.count("<img ") == 1 and 'class="match"' not in text and "<pre>" not in text
    assert (tmp_path / "out" / report_page.sheet_name(0)).read_bytes()[:4] == b"\x89PNG"
    fig = inspection.plot_retrieval(
        [np.zeros((4, 2, 3), np.uint8)], [[np.zeros((4, 2, 3), np.uint8)]], result.ranked[0][:1]
    )
    label = fig.axes[1].get_ylabel()  # row 0 the query, row 1 the first ranked (1 column)
    assert label.startswith("#1\nd=") and "pid" not in label

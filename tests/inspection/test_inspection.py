"""psta_jax.inspection: pure helpers, then two tiny trained runs through the CLI
(python -m psta_jax.inspection) and the notebook."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import nbclient
import nbformat
import numpy as np
import pytest
from flax import nnx
from matplotlib.figure import Figure
from PIL import Image

from psta_jax import config_base, evaluation, inspection
from psta_jax.models import build_model
from psta_jax.training import loop
from tests.conftest import REPO_ROOT
from tests.helpers.tiny import tiny_run_config

NOTEBOOK = REPO_ROOT / "notebooks" / "ablation_inspection.ipynb"
PRESETS = ("full", "baseline")
FIGURES = ("attention", "retrieval", "tsne")
NUMERIC_COLUMNS = ("mAP", "Rank-1", "Speed (clips/s)", "Params (M)", "GFLOPs")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- pure helpers


def test_every_exported_name_loads_from_its_module():
    # The package loads its modules on first use; a name its mapped module lacks fails here.
    for name in inspection.__all__:
        assert getattr(inspection, name).__module__.startswith("psta_jax.inspection."), name
    assert set(inspection.__all__) <= set(dir(inspection))
    with pytest.raises(AttributeError, match="no attribute 'no_such_figure'"):
        inspection.no_such_figure  # noqa: B018


def test_pyramid_maps_follow_the_frames_each_stage_input_covers():
    seq_len = 8
    stage0 = np.arange(4 * 2, dtype=float).reshape(4, 2, 1, 1)  # pairs (0,1) (2,3) (4,5) (6,7)
    np.testing.assert_array_equal(
        inspection.maps_per_frame("pyramid", 0, stage0, seq_len)[:, 0, 0], np.arange(8)
    )
    stage1 = np.asarray([10.0, 11.0, 12.0, 13.0]).reshape(2, 2, 1, 1)  # inputs of 2 frames
    np.testing.assert_array_equal(
        inspection.maps_per_frame("pyramid", 1, stage1, seq_len)[:, 0, 0],
        [10, 10, 11, 11, 12, 12, 13, 13],
    )
    with pytest.raises(ValueError, match="pyramid stage 1 of T=8 has 2 pairs"):
        inspection.maps_per_frame("pyramid", 1, stage0, seq_len)


def test_adjacent_and_global_maps_per_frame():
    # adjacent pairs (t, t+1): frame 1 is second in pair 0 (value 1) and first in pair 1 (2).
    adjacent = np.asarray([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]).reshape(3, 2, 1, 1)
    np.testing.assert_allclose(
        inspection.maps_per_frame("adjacent", 0, adjacent, 4)[:, 0, 0], [0, 1.5, 3.5, 5]
    )
    global_pairs = np.asarray([[0.0, 9.0], [1.0, 9.0]]).reshape(2, 2, 1, 1)
    np.testing.assert_array_equal(
        inspection.maps_per_frame("global", 0, global_pairs, 2)[:, 0, 0], [0, 1]
    )
    with pytest.raises(ValueError, match="pair maps"):
        inspection.maps_per_frame("global", 0, np.zeros((2, 3, 1, 1)), 2)


def test_rank_gallery_skips_same_camera_matches_and_marks_true_ones():
    distances = np.asarray([0.0, 0.1, 0.2, 0.3, 0.4])
    g_pids = np.asarray([7, 3, 7, 0, 7])
    g_camids = np.asarray([1, 2, 2, 1, 3])
    order, matches = inspection.rank_gallery(distances, 7, 1, g_pids, g_camids, top_k=3)
    np.testing.assert_array_equal(order, [1, 2, 3])  # index 0: same pid, same camera
    np.testing.assert_array_equal(matches, [False, True, False])
    with pytest.raises(ValueError, match="one shape"):
        inspection.rank_gallery(distances[:2], 7, 1, g_pids, g_camids, top_k=3)


def test_choose_identities_takes_the_most_seen_real_identities():
    pids = np.asarray([0, 0, 0, 5, 5, 5, 2, 9, 9, -1, 4, 4])  # 9 and 4 tie: smaller pid first
    np.testing.assert_array_equal(inspection.choose_identities(pids, 2), [4, 5])
    np.testing.assert_array_equal(inspection.choose_identities(pids, 3), [4, 5, 9])
    with pytest.raises(ValueError, match="no identity"):
        inspection.choose_identities(np.asarray([0, -1]), 2)


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("full", dict(aggregation="P", sra=True, tra=True, conv_block=True, stages=3)),
        ("baseline", dict(aggregation="-", sra=None, tra=None, conv_block=None, stages=0)),
        ("stages0", dict(aggregation="-", sra=None, tra=None, conv_block=None, stages=0)),
        ("pyramid_only", dict(aggregation="P", sra=False, tra=False, conv_block=True, stages=3)),
        ("adjacent", dict(aggregation="A", sra=True, tra=True, conv_block=True, stages=1)),
        ("global", dict(aggregation="G", sra=True, tra=True, conv_block=True, stages=1)),
        ("tra_only", dict(aggregation="P", sra=False, tra=True, conv_block=True, stages=3)),
        ("no_conv_block", dict(aggregation="P", sra=True, tra=True, conv_block=False, stages=3)),
        ("stages2", dict(aggregation="P", sra=True, tra=True, conv_block=True, stages=2)),
    ],
)
def test_structure_columns_of_every_ablation(preset, expected):
    config = config_base.dataset_config("mars", preset)
    assert inspection.structure(config.model) == expected


def _row(name, **overrides):
    values = dict(
        run=name,
        ablation="full",
        aggregation="P",
        sra=True,
        tra=False,
        conv_block=None,
        stages=3,
        mAP=85.84,
        rank1=91.5,
        clips_per_second=78.04,
        params=35_420_000,
        gflops_per_clip=73.7,
        batch_size=1,
        checkpoint_step=10,
    )
    values.update(overrides)
    return inspection.TableRow(**values)


def test_table_markdown_and_csv(tmp_path):
    rows = [_row("full"), _row("baseline", aggregation="-", sra=None, tra=None, mAP=math.nan)]
    written = inspection.write_table(rows, tmp_path / "out")
    parsed = inspection.parse_table_markdown(written["markdown"].read_text())
    assert [r["Run"] for r in parsed] == ["full", "baseline"]
    assert parsed[0]["SRA"] == "✓" and parsed[0]["TRA"] == "×" and parsed[0]["Res"] == "-"
    assert parsed[0]["mAP"] == "85.8" and parsed[0]["Params (M)"] == "35.42"
    assert parsed[1]["mAP"] == "nan"
    with written["csv"].open() as file:
        table = list(csv.DictReader(file))
    assert [r["run"] for r in table] == ["full", "baseline"]
    assert int(table[0]["params"]) == 35_420_000 and table[1]["sra"] == ""


def test_xla_flops_reads_the_compiled_program():
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((4, 8)), jnp.ones((8, 16))).compile()
    assert inspection.xla_flops(compiled.cost_analysis()) == 2 * 4 * 8 * 16
    assert inspection.xla_flops([{"flops": 3.0}, {"flops": 4.0}]) == 7.0
    with pytest.raises(RuntimeError, match="no FLOPs"):
        inspection.xla_flops({"bytes accessed": 10.0})


def test_figures_return_a_figure_and_save_a_png(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 16, 8, 3), dtype=np.uint8)
    maps = inspection.AttentionMaps(
        frames=frames,
        activation=rng.random((4, 2, 1)),
        stages=({"sra": rng.random((4, 2, 1)), "tra": rng.random((4, 2, 1))},),
    )
    entries = [
        inspection.RetrievalEntry(
            rank=1, split="gallery", position=0, pid=3, camid=1, distance=-0.9, match=True
        ),
        inspection.RetrievalEntry(
            rank=2, split="query", position=4, pid=5, camid=0, distance=-0.5, match=False
        ),
    ]
    points = rng.standard_normal((6, 2))
    figures = {
        "attention": lambda p: inspection.plot_attention(maps, title="t", path=p),
        "retrieval": lambda p: inspection.plot_retrieval(
            list(frames), [frames[:2], frames[:3]], entries, path=p
        ),
        "tsne": lambda p: inspection.plot_tsne(points, np.asarray([1, 1, 2, 2, 3, 3]), path=p),
    }
    for name, draw in figures.items():
        path = tmp_path / "figures" / f"{name}.png"
        fig = draw(path)
        assert isinstance(fig, Figure)
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert inspection.figure_png(fig)[:8] == PNG_MAGIC
    assert len(figures["attention"](None).axes) == 4 * 4  # frames, activation, SRA, TRA rows


def test_tsne_points_are_finite_and_validated():
    features = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    points = inspection.tsne_points(features)
    assert points.shape == (12, 2) and np.isfinite(points).all()
    with pytest.raises(ValueError, match="at least 4 points"):
        inspection.tsne_points(features[:3])


def test_missing_workdir_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        inspection.load_run(tmp_path)


# ----------------------------------------------------------------------------- trained runs


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> list[str]:
    """Two tiny runs (full PSTA and the baseline) on one synthetic dataset."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for preset in PRESETS:
        config = config_base.apply_presets(tiny_run_config(data_dir, num_train_steps=2), preset)
        workdir = str(root / preset)
        loop.train_and_evaluate(config, workdir)
        paths.append(workdir)
    return paths


def _numbers(row: dict[str, str]) -> dict[str, float]:
    return {column: float(row[column]) for column in NUMERIC_COLUMNS}


def _check_table_rows(rows: list[dict[str, str]]) -> None:
    assert [r["Run"] for r in rows] == list(PRESETS)
    assert [r["AS"] for r in rows] == ["P", "-"]
    assert [r["Stages"] for r in rows] == ["2", "0"]
    for row in rows:
        numbers = _numbers(row)
        assert all(math.isfinite(v) for v in numbers.values()), row
        assert all(numbers[c] > 0 for c in ("Speed (clips/s)", "Params (M)", "GFLOPs")), row


@pytest.mark.xdist_group("inspect_e2e")
@pytest.mark.slow
def test_features_restore_the_runs_results_and_attention_maps(workdirs):
    run = inspection.load_run(workdirs[0])
    assert run.step == 2 and run.aggregation == "pyramid"
    feats = run.features
    result = evaluation.evaluate(
        feats["query"]["features"],
        feats["gallery"]["features"],
        feats["query"]["pids"],
        feats["gallery"]["pids"],
        feats["query"]["camids"],
        feats["gallery"]["camids"],
        protocol=run.trained.eval_settings.protocol,
        distance=run.trained.eval_settings.distance,
    )
    assert result.mAP == pytest.approx(run.results["mAP"], abs=1e-6)

    query = inspection.default_query(run)
    clip = inspection.tracklet_clip(run, run.splits.query, query)
    maps = inspection.clip_attention(run, clip)
    seq_len, map_size = run.trained.clip_shape[0], (2, 1)  # 32x16 frames, backbone stride 16
    assert maps.frames.shape == (seq_len, 32, 16, 3) and maps.frames.dtype == np.uint8
    assert maps.activation.shape == (seq_len, *map_size)
    assert [sorted(stage) for stage in maps.stages] == [["sra", "tra"]] * 2
    for stage in maps.stages:
        for values in stage.values():  # sigmoid outputs
            assert values.shape == (seq_len, *map_size)
            assert np.all((values >= 0) & (values <= 1))
    # The last stage weighs two maps, each covering half the clip.
    last = maps.stages[-1]["sra"]
    np.testing.assert_array_equal(last[0], last[1])
    np.testing.assert_array_equal(last[2], last[3])

    entries = inspection.retrieve(run, query, top_k=4)
    assert [e.rank for e in entries] == [1, 2, 3, 4]
    assert [e.distance for e in entries] == sorted(e.distance for e in entries)
    q_pid, q_cam = run.splits.query.pids[query], run.splits.query.camids[query]
    assert not any(e.pid == q_pid and e.camid == q_cam for e in entries)


@pytest.mark.xdist_group("inspect_e2e")
@pytest.mark.slow
def test_cli_writes_the_table_and_every_figure(workdirs, tmp_path):
    out = tmp_path / "inspection"
    relative = [os.path.relpath(w, REPO_ROOT) for w in workdirs]  # as `make demo` workdirs are
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "psta_jax.inspection",
            f"--workdirs={','.join(relative)}",
            f"--out={out}",
            "--repeats=1",
            "--top_k=3",
            "--identities=6",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    _check_table_rows(inspection.parse_table_markdown((out / "ablation_table.md").read_text()))
    with (out / "ablation_table.csv").open() as file:
        table = {row["run"]: row for row in csv.DictReader(file)}
    assert list(table) == list(PRESETS)
    for preset, workdir in zip(PRESETS, workdirs, strict=True):
        # Parameters are counted on the restored model, not taken from a list.
        config = json.loads(pathlib.Path(workdir, "config.json").read_text())
        model = build_model(config["model"], config["num_classes"], nnx.Rngs(0))
        expected = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert int(table[preset]["params"]) == expected
        results = json.loads(pathlib.Path(workdir, "results.json").read_text())
        assert float(table[preset]["mAP"]) == pytest.approx(100 * results["mAP"])
    # Two STAM stages cost compute the baseline does not spend.
    assert float(table["full"]["gflops_per_clip"]) > float(table["baseline"]["gflops_per_clip"])

    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC  # both runs' learning curves
    for preset in PRESETS:
        for figure in FIGURES:
            path = out / f"{preset}_{figure}.png"
            assert path.read_bytes()[:8] == PNG_MAGIC, path
            with Image.open(path) as image:
                assert min(image.size) >= 200, (path, image.size)


def _kernel_spec_dir(root) -> str:
    """A 'python3' kernel spec running this interpreter (a fresh clone registers none)."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "psta-jax test kernel",
                "language": "python",
            }
        )
    )
    return str(root)


@pytest.mark.xdist_group("inspect_e2e")
@pytest.mark.slow
def test_notebook_runs_headless_on_the_runs(workdirs, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", _kernel_spec_dir(tmp_path / "jupyter"))
    monkeypatch.setenv("PSTA_INSPECT_WORKDIRS", os.pathsep.join(workdirs))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "commit it without outputs"

    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == len(FIGURES) * len(PRESETS) + 1  # and the learning curves
    tables = [
        out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {})
    ]
    assert len(tables) == 1
    _check_table_rows(inspection.parse_table_markdown(tables[0]))

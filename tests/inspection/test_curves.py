"""psta_jax.inspection.curves: learning curves from fake workdirs (metrics.jsonl and
config.json only), and `python -m psta_jax.inspection --curves_only`."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection

from psta_jax import inspection
from psta_jax.inspection import __main__ as inspect_cli
from psta_jax.runtime.errors import UserError
from psta_jax.runtime.workdir import RunConfigError
from tests.conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANEL_TITLES = [
    "train loss",
    "cross-entropy",
    "triplet",
    "learning rate",
    "eval mAP (%)",
    "eval Rank-1 (%)",
]


def _config(seed: int, *, aggregation: str = "pyramid", num_classes: int = 10) -> dict:
    return {
        "batch": {"identities": 4, "instances": 2},
        "model": {"aggregation": aggregation, "depth": 10},
        "num_classes": num_classes,
        "num_epochs": 3,
        "seed": seed,
    }


def _train(step: int, loss: float, lr: float = 1e-3) -> dict:
    return {
        "step": step,
        "train/ce": loss - 1,
        "train/loss": loss,
        "train/triplet": 1.0,
        "train/learning_rate": lr,
    }


def _workdir(folder: pathlib.Path, config: dict, rows: list, *, raw: str = "") -> pathlib.Path:
    """A fake workdir: config.json and metrics.jsonl (`rows` as JSON lines, then `raw`)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / "metrics.jsonl").write_text(lines + raw)
    return folder


@pytest.fixture
def runs(tmp_path) -> list[pathlib.Path]:
    """Two seeds of one config (logged steps differ: seed 1 stopped before step 6) and one
    run of another config."""
    return [
        _workdir(
            tmp_path / "full_s0",
            _config(0),
            [
                _train(2, 5.0),
                {"step": 2, "steps_per_sec": 3.0},
                _train(4, 4.0),
                {"step": 4, "eval/mAP": 0.20, "eval/rank1": 0.30},
                _train(6, 3.0),
            ],
        ),
        _workdir(
            tmp_path / "full_s1",
            _config(1),
            [_train(2, 7.0), _train(4, 2.0), {"step": 4, "eval/mAP": 0.40, "eval/rank1": 0.50}],
        ),
        _workdir(
            tmp_path / "baseline",
            _config(0, aggregation="none"),
            [_train(2, 6.0), _train(4, 5.0), {"step": 4, "eval/mAP": 0.10, "eval/rank1": 0.15}],
        ),
    ]


# ----------------------------------------------------------------------------- metrics.jsonl


def test_read_metrics_keeps_the_later_line_of_a_repeated_step(tmp_path):
    workdir = _workdir(
        tmp_path / "run",
        _config(0),
        [
            _train(2, 5.0),
            _train(4, 4.0),
            {"step": 4, "uptime": 10.0},
            _train(2, 4.5),  # a resumed run redid steps 2 and 4
            _train(4, 3.5),
            {"step": 6, "train/loss": float("nan")},
        ],
        raw="\n",
    )
    metrics = inspection.read_metrics(workdir)
    assert sorted(metrics) == [
        "train/ce",
        "train/learning_rate",
        "train/loss",
        "train/triplet",
        "uptime",
    ]
    steps, values = metrics["train/loss"]
    np.testing.assert_array_equal(steps, [2, 4, 6])
    np.testing.assert_array_equal(values[:2], [4.5, 3.5])
    assert math.isnan(values[2])  # kept, not dropped
    assert steps.dtype == np.int64 and values.dtype == np.float64
    np.testing.assert_array_equal(metrics["train/ce"].steps, [2, 4])
    np.testing.assert_array_equal(metrics["uptime"].values, [10.0])


def test_a_last_line_being_written_is_skipped(tmp_path):
    workdir = _workdir(tmp_path / "run", _config(0), [_train(2, 5.0)], raw='{"step": 4, "tra')
    np.testing.assert_array_equal(inspection.read_metrics(workdir)["train/loss"].steps, [2])


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{'step': 4}", "is not JSON"),
        ("[4, 1.0]", "not an object"),
        ('{"train/loss": 1.0}', "integer 'step'"),
        ('{"step": true, "train/loss": 1.0}', "integer 'step'"),
        ('{"step": -2, "train/loss": 1.0}', "integer 'step'"),
        ('{"step": 4, "train/loss": "low"}', "'train/loss' is 'low', not a number"),
    ],
)
def test_a_malformed_line_names_the_file_and_the_line(tmp_path, bad, words):
    workdir = _workdir(tmp_path / "run", _config(0), [_train(2, 5.0)], raw=f"\n{bad}\n")
    with pytest.raises(inspection.MetricsError) as error:
        inspection.read_metrics(workdir)
    assert isinstance(error.value, UserError)
    message = str(error.value)
    assert message.startswith(f"{workdir / 'metrics.jsonl'}, line 3")
    assert words in message and "repair or delete that line" in message


def test_a_workdir_without_metrics_says_what_was_expected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config(0)))
    with pytest.raises(inspection.MetricsError, match=f"no metrics.jsonl in {tmp_path}"):
        inspection.read_metrics(tmp_path)
    assert inspection.with_metrics([tmp_path]) == []


# ----------------------------------------------------------------------------- seeds


def test_aggregate_seeds_on_the_steps_every_seed_logged():
    series = [
        inspection.Series(np.asarray([2, 4, 6]), np.asarray([1.0, 2.0, 3.0])),
        inspection.Series(np.asarray([2, 4]), np.asarray([3.0, 6.0])),
        inspection.Series(np.asarray([0, 2, 4, 6]), np.asarray([9.0, 5.0, 1.0, 0.0])),
    ]
    band = inspection.aggregate_seeds(series)
    np.testing.assert_array_equal(band.steps, [2, 4])
    np.testing.assert_allclose(band.mean, [3.0, 3.0])
    np.testing.assert_array_equal(band.low, [1.0, 1.0])
    np.testing.assert_array_equal(band.high, [5.0, 6.0])

    alone = inspection.aggregate_seeds(series[:1])
    for values in (alone.mean, alone.low, alone.high):
        np.testing.assert_array_equal(values, [1.0, 2.0, 3.0])

    with_nan = inspection.Series(np.asarray([2, 4]), np.asarray([np.nan, 1.0]))
    band = inspection.aggregate_seeds([series[1], with_nan])
    assert math.isnan(band.mean[0]) and band.mean[1] == 3.5

    disjoint = inspection.aggregate_seeds([series[1], inspection.Series(np.asarray([3]), [1.0])])
    assert band.steps.dtype == np.int64 and disjoint.steps.shape == (0,)


def test_aggregate_seeds_rejects_what_it_cannot_align():
    with pytest.raises(ValueError, match="at least one"):
        inspection.aggregate_seeds([])
    with pytest.raises(ValueError, match="ascending unique steps"):
        inspection.aggregate_seeds([inspection.Series(np.asarray([4, 2]), np.asarray([1.0, 2.0]))])


def test_group_runs_by_config_but_the_seed(runs, tmp_path):
    groups = inspection.group_runs(runs)
    assert [g.label for g in groups] == ["full (2 seeds)", "baseline"]
    assert [g.workdirs for g in groups] == [(str(runs[0]), str(runs[1])), (str(runs[2]),)]
    assert [g.seeds for g in groups] == [(0, 1), (0,)]
    assert [g.steps_per_epoch for g in groups] == [2, 2]  # 10 identities, 4 per batch

    # Bare seed folders are named by their parent; a repeated seed makes runs, not seeds.
    seeds = [_workdir(tmp_path / "demo_seeds" / f"seed{s}", _config(s), []) for s in (0, 1)]
    again = _workdir(tmp_path / "demo_seeds" / "seed0_again", _config(0), [])
    alone = _workdir(tmp_path / "other" / "seed7", _config(7, num_classes=12), [])
    labels = [g.label for g in inspection.group_runs([*seeds, alone])]
    assert labels == ["demo_seeds (2 seeds)", "other/seed7"]
    assert inspection.group_runs([*seeds, again])[0].label == "demo_seeds (3 runs)"

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunConfigError, match="no config.json at"):
        inspection.group_runs([runs[0], tmp_path / "empty"])


def test_steps_per_epoch_is_the_samplers():
    from psta_jax.input import batch_plans

    for num_classes, identities in [(625, 8), (32, 8), (10, 4), (4, 4)]:
        config = {"num_classes": num_classes, "batch": {"identities": identities}}
        expected = batch_plans.steps_per_epoch(num_classes, identities)
        assert inspection.steps_per_epoch(config) == expected
    assert inspection.steps_per_epoch({"num_classes": 3, "batch": {"identities": 4}}) is None
    assert inspection.steps_per_epoch({"num_classes": 32}) is None
    assert inspection.steps_per_epoch({"batch": {"identities": 8}}) is None


# ----------------------------------------------------------------------------- the figure


def test_curves_figure_draws_each_group_in_every_panel(runs, tmp_path):
    path = tmp_path / "out" / "curves.png"
    fig = inspection.curves_figure([str(r) for r in runs], path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes] == PANEL_TITLES
    for ax in fig.axes:
        assert len(ax.lines) == 2, ax.get_title()  # one line per group
        # Only the group of two seeds has a band (a bar where it was evaluated once).
        bands = [c for c in ax.collections if isinstance(c, (PolyCollection, LineCollection))]
        assert len(bands) == 1, ax.get_title()
        assert len(ax.child_axes) == 1  # epochs on top: both configs have 2 steps per epoch
    loss, learning_rate, mAP = fig.axes[0], fig.axes[3], fig.axes[4]
    # The seeds' mean on their common steps; the lone run as logged.
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [2, 4])
    np.testing.assert_allclose(loss.lines[0].get_ydata(), [6.0, 3.0])
    np.testing.assert_allclose(loss.lines[1].get_ydata(), [6.0, 5.0])
    np.testing.assert_allclose(mAP.lines[0].get_ydata(), [30.0])  # percent
    band = loss.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(2.0) and band[:, 1].max() == pytest.approx(7.0)
    assert learning_rate.get_yscale() == "log"
    legend = [text.get_text() for text in loss.get_legend().get_texts()]
    assert legend == ["full (2 seeds)", "baseline"]
    colours = [line.get_color() for line in loss.lines]
    assert colours[0] != colours[1] and mAP.lines[1].get_color() == colours[1]


def test_runs_of_different_epochs_get_no_epoch_axis(runs, tmp_path):
    other = _workdir(tmp_path / "wide", _config(0, num_classes=40), [_train(2, 1.0)])
    fig = inspection.curves_figure([runs[2], other])  # 2 and 10 steps per epoch
    assert all(not ax.child_axes for ax in fig.axes)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2, 2, 1, 1]  # 'wide' never evaluated
    alone = inspection.curves_figure(other)
    assert [t.get_text() for t in alone.axes[4].texts] == ["not logged"]
    assert alone.axes[0].get_legend().get_title().get_text() == ""  # no band, no band note


# ----------------------------------------------------------------------------- the command


def test_cli_curves_only_loads_neither_models_nor_jax(runs, tmp_path):
    out = tmp_path / "inspect"
    probe = (
        "import sys\n"
        "from psta_jax.inspection.__main__ import main\n"
        f"main(['--workdirs={','.join(str(r) for r in runs)}', '--out={out}', '--curves_only'])\n"
        "print(sorted({'jax', 'tensorflow', 'flax', 'orbax'} & set(sys.modules)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines() == [str(out / "curves.png"), "[]"]
    assert sorted(p.name for p in out.iterdir()) == ["curves.png"]
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("damage", ["malformed", "missing"])
def test_cli_curves_only_reports_a_bad_metrics_file_in_one_message(runs, tmp_path, capsys, damage):
    metrics = runs[1] / "metrics.jsonl"
    if damage == "malformed":
        metrics.write_text(metrics.read_text() + "not json\n" + json.dumps(_train(6, 1.0)) + "\n")
        expected = f"error: {metrics}, line 4 is not JSON"
    else:
        metrics.unlink()
        expected = f"error: no metrics.jsonl in {runs[1]}"
    argv = [f"--workdirs={','.join(str(r) for r in runs)}", f"--out={tmp_path / 'out'}"]
    with pytest.raises(SystemExit) as exit_info:
        inspect_cli.main([*argv, "--curves_only"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(expected), err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "curves.png").exists()


def test_the_full_inspection_draws_the_curves_of_workdirs_with_metrics(runs, tmp_path):
    (runs[1] / "metrics.jsonl").unlink()  # as a converted release checkpoint has none
    written = inspect_cli.draw_curves(runs, tmp_path / "out", required=False)
    assert written == {"curves": tmp_path / "out" / "curves.png"}
    assert written["curves"].read_bytes()[:8] == PNG_MAGIC
    assert inspect_cli.draw_curves([runs[1]], tmp_path / "none", required=False) == {}
    assert not (tmp_path / "none").exists()
    with pytest.raises(inspection.MetricsError, match="no metrics.jsonl"):
        inspect_cli.draw_curves(runs, tmp_path / "strict")

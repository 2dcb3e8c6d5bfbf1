"""The benchmark scripts still run (`make bench`): the train-step one on the demo network."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_train_step_benchmark_runs_and_prints_its_table(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/train_step.py",
            "--model=demo",
            "--steps=1",
            "--dtypes=float32",
            f"--profile_dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("float32")]
    assert len(rows) == 1, result.stdout + result.stderr
    assert rows[0][1] == "4" and float(rows[0][5]) > 0  # P=2 x K=2 clips on the CPU, clips/s
    assert "host peak RSS" in result.stdout
    assert list(tmp_path.glob("float32/**/*.xplane.pb")), "no profile written"


def test_batch_norm_statistics_benchmark_times_two_different_programs():
    """It raises if the one-pass switch did not change the traced program."""
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/batch_norm_statistics.py",
            "--model=demo",
            "--baselines=",
            "--repeats=1",
            "--steps_per_call=1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("one-pass", "two-pass"))
    }
    assert set(rows) == {"one-pass", "two-pass"}, result.stdout + result.stderr
    assert all(float(row[1]) > 0 for row in rows.values())


def _xla_options(*variants: str) -> subprocess.CompletedProcess:
    """xla_options.py on the demo network's eval; arguments starting with -- pass as they are."""
    return subprocess.run(
        [
            sys.executable,
            "benchmarks/xla_options.py",
            "--model=demo",
            "--program=eval",
            "--eval_batch=2",
            "--repeats=1",
            *(v if v.startswith("--") else f"--variant={v}" for v in variants),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _table_rows(result: subprocess.CompletedProcess, *names: str) -> dict[str, list[str]]:
    """{variant: its row's fields} of the printed table, after checking the run succeeded
    and its table has exactly the rows of `names`."""
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    table = [line.split() for line in lines[header + 1 :] if not line.startswith("base/it:")]
    rows = {fields[0]: fields for fields in table}
    assert sorted(rows) == sorted(names) and len(table) == len(names), result.stdout
    return rows


def test_xla_options_benchmark_times_each_variant_beside_base():
    result = _xla_options("default-scheduler:xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT")
    rows = _table_rows(result, "base", "default-scheduler")
    assert all(float(row[1]) > 0 for row in rows.values())  # clips/s
    assert rows["base"][4] == "1.000x" and float(rows["default-scheduler"][5]) == 0.0


def test_xla_options_benchmark_drops_refused_options_and_marks_ones_with_base_hlo():
    """An unknown option value is refused by XLA and dropped before timing; the process's own
    scheduler, asked for again, compiles to base's HLO and is timed with a mark, since options
    can act below the HLO (e.g. GPU command buffers)."""
    same = "same:xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
    unknown = "unknown:xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_FASTEST"
    result = _xla_options(same, unknown)
    rows = _table_rows(result, "base", "same")  # not "unknown"
    assert "dropped unknown: did not compile" in result.stdout
    assert rows["same"][-2:] == ["(same", "HLO)"] and "HLO)" not in rows["base"]


def test_xla_options_benchmark_fails_when_every_variant_is_refused():
    result = _xla_options("unknown:xla_no_such_option=true")
    assert result.returncode != 0
    assert "No such compile option: 'xla_no_such_option'" in result.stdout
    assert "no variant left to compare with base: unknown dropped" in result.stderr


def test_xla_options_benchmark_compares_with_the_release_on_its_network_only():
    """The release baseline runs the release's network, so it is refused beside the demo's."""
    result = _xla_options(
        "same:xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "--baseline=release"
    )
    assert result.returncode == 2
    assert "--baseline=release compares the release's network: use --model=release" in (
        result.stderr
    )


def test_xla_options_benchmark_times_config_variants_and_names_a_missing_field():
    result = _xla_options("--config_variant=one-stage:model.num_stages=1")
    rows = _table_rows(result, "base", "one-stage")
    assert rows["one-stage"][-1] == "model.num_stages=1"
    assert float(rows["one-stage"][5]) > 0  # one stage fewer: other embeddings

    result = _xla_options("--config_variant=typo:model.num_stage=1")
    assert result.returncode == 2
    assert "--config_variant typo: config field model.num_stage: the config has no such field" in (
        result.stderr
    )


def test_cpu_peak_names_the_cpu_and_counts_its_vector_lanes(tmp_path):
    """model_throughput's header says which CPU a run had: its ratios differ between hosts."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import model_throughput  # noqa: PLC0415 (a script, importable from its folder)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    cpuinfo = tmp_path / "cpuinfo"
    processor = (
        "model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n"
        "cpu MHz\t\t: {mhz}\nflags\t\t: fpu avx fma avx2\n\n"
    )
    cpuinfo.write_text(processor.format(mhz="2450.000") + processor.format(mhz="2400.000"))
    peak, note = model_throughput.cpu_peak_gflops(2, str(cpuinfo))
    assert abs(peak - 2 * 2 * 8 * 2 * 2.45) < 1e-9  # the fastest core's clock, AVX2's 8 lanes
    assert note.startswith("AMD EPYC, family 25 model 1: 2 cores x 2 FMA x 8 fp32 lanes")
    assert model_throughput.cpu_peak_gflops(2, str(tmp_path / "missing")) == (
        pytest.approx(float("nan"), nan_ok=True),
        "unknown CPU",
    )


def test_train_loop_benchmark_prints_every_field_positive(tmp_path):
    """train_loop.py on the tiny model and a tiny synthetic dataset: the loop, the step
    alone, evaluation and checkpoint costs, every value of its table printed and positive."""
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/train_loop.py",
            "--model=tiny",
            "--train_ids=8",
            "--test_ids=8",
            "--frame_size=64,32",
            "--identities=4",
            "--instances=2",
            "--warmup_steps=2",
            "--steps=4",
            "--log_every=2",
            "--step_alone_steps=2",
            f"--data_dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("measure ")))
    table = dict(line.rsplit(maxsplit=1) for line in lines[header + 1 :])
    expected = {
        "loop clips/s",
        "step alone clips/s",
        "loop / step alone",
        "same, per CPU-second",
        "host CPU % (loop)",
        "host CPU % (step alone)",
        "input wait % of loop time",
        "input wait ms per step",
        "input pipeline alone clips/s",
        "input CPU cores per 100 clips/s",
        "evaluation s",
        "checkpoint s (loop blocked)",
        "checkpoint s (save to disk)",
    }
    assert {name.strip() for name in table} == expected, result.stdout + result.stderr
    assert all(float(value) > 0 for value in table.values()), result.stdout

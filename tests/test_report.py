"""Tests of benchmarks.report: JSON records, summaries by hand, the table, plots, report.md."""

from __future__ import annotations

import itertools
import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from avalanche_spp.metrics import all_metrics, metrics_after_each_task
from benchmarks import plots, records
from benchmarks.plots import (
    plot_accuracy_matrices,
    plot_accuracy_over_tasks,
    plot_lambda_sweep,
    plot_metrics_over_tasks,
)
from benchmarks.records import (
    build_record,
    package_versions,
    read_json,
    summarize,
    validate_record,
    write_json,
)
from benchmarks.report import markdown_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _record(
    method, seed, *, acc, bwt=-0.1, fwt=None, smt=0.0025, total=10.0, strength=None, benchmark="split_digits"
):
    """A complete record whose metrics are given (summarize reads them, it does not recompute)."""
    p = [[0.9, None], [0.8, 0.7]]
    return {
        "method": method,
        "benchmark": benchmark,
        "seed": seed,
        "strength": strength,
        "config": {"epochs": 1, "method": method},
        "versions": {"python": "3.11.7"},
        "accuracy_matrix": p,
        "joint_accuracies": None,
        "metrics": {"acc": acc, "bwt": bwt, "fwt": fwt, "smt": smt},
        "metrics_after_each_task": metrics_after_each_task([[0.9, NAN], [0.8, 0.7]]),
        "wall_time_s": {"train": total * 0.8, "importance": total * 0.1, "total": total},
    }


def _records():
    return [
        # given out of table order on purpose
        _record("spp", 0, acc=0.8, fwt=-0.02, total=11.0, strength=10.0),
        _record("spp", 1, acc=0.9, fwt=-0.04, total=13.0, strength=10.0),
        _record("spp", 2, acc=0.7, fwt=None, total=12.0, strength=10.0),
        _record("finetune", 0, acc=0.6, total=10.0),
        _record("finetune", 1, acc=0.5, total=12.0),
        _record("ewc", 0, acc=0.75, total=20.0, strength=100.0),
        _record("my_method", 0, acc=0.5, total=5.5),
    ]


def test_package_versions(monkeypatch):
    versions = package_versions()
    assert list(versions) == ["python", "torch", "torchvision", "avalanche-lib", "numpy", "avalanche-spp"]
    assert versions["python"] == platform.python_version()
    assert versions["numpy"] == np.__version__
    real_version = metadata.version

    def fake_version(name):
        if name == "torchvision":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", fake_version)
    assert package_versions()["torchvision"] == "not installed"


def test_write_json_round_trip_and_conversions(tmp_path):
    path = tmp_path / "sub" / "run.json"  # the folder does not exist yet
    obj = {
        "matrix": np.array([[0.5, NAN], [0.25, 1.0]]),
        "n": np.int64(3),
        "t": (1, 2),
        "x": np.float32(0.5),
        "where": tmp_path,
    }
    assert write_json(path, obj) == path
    assert read_json(path) == {
        "matrix": [[0.5, None], [0.25, 1.0]],
        "n": 3,
        "t": [1, 2],
        "x": 0.5,
        "where": str(tmp_path),
    }
    assert "NaN" not in path.read_text()


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "run.json"
    write_json(path, {"version": 1})
    write_json(path, {"version": 2})  # replaces
    assert read_json(path) == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left
    # a failure half-way leaves the old file whole and no temporary file
    with pytest.raises(TypeError):
        write_json(path, {"version": 3, "bad": object()})
    with pytest.raises(ValueError, match=r"obj\['bad'\] is inf"):
        write_json(path, {"version": 3, "bad": math.inf})
    assert read_json(path) == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_build_record_metrics_follow_the_matrix(tmp_path):
    p = np.array([[0.9, NAN, NAN], [0.8, 0.7, NAN], [0.6, 0.5, 0.8]])
    joint = [0.95, 0.75, 0.85]
    record = build_record(
        method="spp",
        benchmark="split_digits",
        seed=3,
        strength=2.5,
        config={"epochs": 1},
        accuracy_matrix=p,
        joint_accuracies=joint,
        wall_time_s={"train": 1.0, "importance": 0.5, "total": 1.5},
        versions={"python": "x"},
    )
    assert set(record) == set(records.RECORD_KEYS)
    assert record["accuracy_matrix"] == [[0.9, None, None], [0.8, 0.7, None], [0.6, 0.5, 0.8]]
    assert record["metrics"] == pytest.approx(all_metrics(p, joint))
    assert record["metrics"]["bwt"] == pytest.approx(-0.25)  # ((0.6-0.9) + (0.5-0.7)) / 2
    assert record["metrics_after_each_task"]["acc"] == pytest.approx([0.9, 0.75, 1.9 / 3])
    write_json(tmp_path / "r.json", record)
    assert read_json(tmp_path / "r.json") == record
    assert (
        build_record(
            method="finetune",
            benchmark="b",
            seed=0,
            strength=None,
            config={},
            accuracy_matrix=p,
            joint_accuracies=None,
            wall_time_s={"train": 1.0, "importance": 0.0, "total": 1.0},
        )["versions"]
        == package_versions()
    )


def test_validate_record_errors():
    record = _record("spp", 0, acc=0.5)
    del record["wall_time_s"]
    with pytest.raises(ValueError, match=r"'spp', seed 0 lacks \['wall_time_s'\]"):
        validate_record(record)
    record = _record("spp", 0, acc=0.5)
    record["wall_time_s"]["total"] = -1.0
    with pytest.raises(ValueError, match=r"wall_time_s\['total'\] must be seconds >= 0"):
        validate_record(record)
    record = _record("spp", 0, acc=0.5)
    del record["metrics"]["smt"]
    with pytest.raises(ValueError, match=r"'metrics' lacks \['smt'\]"):
        validate_record(record)
    record = _record("spp", 0, acc=0.5)
    record["accuracy_matrix"] = [[0.5, 0.5]]
    with pytest.raises(ValueError, match="must be square"):
        validate_record(record)


def test_summarize_by_hand():
    summary = summarize(_records())
    assert [row["method"] for row in summary] == ["finetune", "ewc", "spp", "my_method"]
    finetune, ewc, spp, mine = summary
    # spp ACC 0.8, 0.9, 0.7: mean 0.8, sample std sqrt((0 + 0.01 + 0.01) / 2) = 0.1
    assert spp["n_seeds"] == 3 and spp["seeds"] == [0, 1, 2]
    assert spp["metrics"]["acc"] == pytest.approx({"mean": 0.8, "std": 0.1, "n": 3})
    # spp FWT known for 2 seeds: -0.02, -0.04: mean -0.03, std sqrt(2 * 0.01**2 / 1) = 0.01414...
    assert spp["metrics"]["fwt"] == pytest.approx({"mean": -0.03, "std": math.sqrt(2e-4), "n": 2})
    assert spp["strengths"] == [10.0]
    # finetune ACC 0.6, 0.5: mean 0.55, std sqrt(2 * 0.05**2) = 0.0707...; FWT None everywhere
    assert finetune["metrics"]["acc"] == pytest.approx({"mean": 0.55, "std": math.sqrt(0.005), "n": 2})
    assert finetune["metrics"]["fwt"] == {"mean": None, "std": None, "n": 0}
    assert finetune["strengths"] == [None]
    # one seed: std 0
    assert ewc["metrics"]["acc"] == {"mean": 0.75, "std": 0.0, "n": 1}
    # wall time total: finetune 10, 12 -> 11 (std sqrt(2)); spp 11, 13, 12 -> 12 (std 1)
    assert finetune["wall_time_s"]["total"] == pytest.approx({"mean": 11.0, "std": math.sqrt(2), "n": 2})
    assert spp["wall_time_s"]["total"] == pytest.approx({"mean": 12.0, "std": 1.0, "n": 3})
    assert spp["wall_time_s"]["importance"]["mean"] == pytest.approx(1.2)
    assert finetune["x_finetune"] == pytest.approx(1.0)
    assert spp["x_finetune"] == pytest.approx(12 / 11)
    assert ewc["x_finetune"] == pytest.approx(20 / 11)
    assert mine["x_finetune"] == pytest.approx(0.5)


def test_summarize_without_finetune_and_errors():
    no_finetune = [r for r in _records() if r["method"] != "finetune"]
    assert all(row["x_finetune"] is None for row in summarize(no_finetune))
    with pytest.raises(ValueError, match="no run records"):
        summarize([])
    with pytest.raises(ValueError, match=r"several records for seed\(s\) \[1\]"):
        summarize(_records() + [_record("spp", 1, acc=0.1)])
    with pytest.raises(ValueError, match="several benchmarks"):
        summarize(_records() + [_record("spp", 9, acc=0.1, benchmark="split_fmnist")])


def test_markdown_table():
    table = markdown_table(summarize(_records()))
    lines = table.splitlines()
    assert lines[0] == (
        "| Method | strength | ACC (%) | BWT (%) | FWT (%) | SMT (%²) | "
        "wall time (s) | x finetune | n seeds |"
    )
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| finetune", "| ewc", "| spp", "| my_method"]
    spp = lines[4]
    assert "| spp | 10 | 80.00 ± 10.00 |" in spp
    assert "| -3.00 ± 1.41 (n=2) |" in spp  # FWT on 2 of 3 seeds
    assert "| 25.00 ± 0.00 |" in spp  # SMT 0.0025 = (5 %)**2 = 25 %²
    assert "| 12.0 ± 1.0 | 1.09 | 3 |" in spp
    finetune = lines[2]
    assert finetune.startswith("| finetune | n/a | 55.00 ± 7.07 | -10.00 ± 0.00 | n/a |")
    assert "| 1.00 | 2 |" in finetune
    no_finetune = markdown_table(summarize([_record("ewc", 0, acc=0.5, strength=1.0)]))
    assert no_finetune.splitlines()[2].endswith("| 10.0 ± 0.0 | n/a | 1 |")
    assert "50.0 ± 0.0" in markdown_table(summarize(_records()), digits=1)


def _png(path):
    assert path.exists()
    return path.read_bytes()[:8] == PNG_MAGIC


def _sweep():
    return [
        {"lam": 100.0, "acc": 0.7, "bwt": -0.01, "fwt": -0.2},
        {"lam": 0.0, "acc": 0.6, "bwt": -0.3, "fwt": 0.0},
        {"lam": 1.0, "acc": 0.8, "bwt": -0.1, "fwt": None, "acc_std": 0.01, "bwt_std": 0.02, "fwt_std": None},
    ]


def test_plots_write_pngs(tmp_path):
    records = _records()
    assert _png(plot_accuracy_over_tasks(records, tmp_path / "a.png"))
    assert _png(plot_metrics_over_tasks(records, tmp_path / "m.png"))
    assert _png(plot_accuracy_matrices(records, tmp_path / "h.png"))
    assert _png(plot_lambda_sweep(_sweep(), tmp_path / "s.png"))
    only_positive = [row for row in _sweep() if row["lam"] > 0]
    assert _png(plot_lambda_sweep(only_positive, tmp_path / "s2.png"))


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match=r"sweep_rows\[0\]\['lam'\] must be a finite strength"):
        plot_lambda_sweep([{"lam": -1.0, "acc": 0.5, "bwt": 0.0, "fwt": 0.0}], tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"sweep_rows\[0\] lacks \['fwt'\]"):
        plot_lambda_sweep([{"lam": 1.0, "acc": 0.5, "bwt": 0.0}], tmp_path / "s.png")
    with pytest.raises(ValueError, match="sweep_rows is empty"):
        plot_lambda_sweep([], tmp_path / "s.png")
    longer = _record("spp", 5, acc=0.5)
    longer["metrics_after_each_task"] = metrics_after_each_task(np.tril(np.full((3, 3), 0.5)))
    with pytest.raises(ValueError, match=r"'spp'.*lengths \[2, 3\] across seeds"):
        plot_accuracy_over_tasks(_records() + [longer], tmp_path / "a.png")
    bigger = _record("spp", 5, acc=0.5)
    bigger["accuracy_matrix"] = np.tril(np.full((3, 3), 0.5)).tolist()
    with pytest.raises(ValueError, match=r"'spp': accuracy matrices of shapes"):
        plot_accuracy_matrices(_records() + [bigger], tmp_path / "h.png")
    assert not any(tmp_path.iterdir())


def test_mean_matrix_over_seeds():
    a = _record("spp", 0, acc=0.5)
    b = _record("spp", 1, acc=0.5)
    a["accuracy_matrix"] = [[0.9, None], [0.8, 0.6]]
    b["accuracy_matrix"] = [[0.7, 0.2], [0.6, 0.4]]
    mean = plots._mean_matrix([a, b], "spp")
    # percent; the cell only seed 1 measured keeps its value
    np.testing.assert_allclose(mean, [[80.0, 20.0], [70.0, 50.0]])


def test_write_report_writes_every_promised_file(tmp_path):
    records = _records()
    out = tmp_path / "report"
    path = write_report(
        out,
        records,
        title="Split digits, 1 epoch",
        sweep_rows=_sweep(),
        notes="Made by a test.",
        command="python -m benchmarks.run --seeds 3",
    )
    assert path == out / "report.md"
    pngs = ["accuracy_over_tasks.png", "metrics_over_tasks.png", "accuracy_matrices.png", "lambda_sweep.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(pngs + ["report.md", "summary.json"])
    for name in pngs:
        assert _png(out / name), name
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Split digits, 1 epoch\n")
    assert "Made by a test." in text
    assert "python -m benchmarks.run --seeds 3" in text
    for name in pngs:
        assert f"]({name})" in text  # embedded with a relative link
    assert markdown_table(summarize(records)) in text
    assert "- `spp`: 10\n" in text and "- `ewc`: 100\n" in text and "- `finetune`: n/a\n" in text
    assert "| 1 | 80.00 ± 1.00 | -10.00 ± 2.00 | n/a |" in text  # sweep table, sorted by lam
    assert text.index("| 0 | 60.00") < text.index("| 1 | 80.00") < text.index("| 100 | 70.00")
    assert '"epochs": 1' in text  # shared configuration
    assert '- `method`: ["spp", "finetune", "ewc", "my_method"]' in text  # differing setting
    saved = json.loads((out / "summary.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(summarize(records)))
    assert [row["lam"] for row in saved["sweep"]] == [0.0, 1.0, 100.0]


def test_write_report_without_sweep(tmp_path):
    path = write_report(tmp_path, _records()[:3], title="T")
    assert not (tmp_path / "lambda_sweep.png").exists()
    text = path.read_text(encoding="utf-8")
    assert "lambda_sweep.png" not in text and "Strength sweep" not in text
    spp_row = next(line for line in text.splitlines() if line.startswith("| spp |"))
    assert spp_row.endswith("| 12.0 ± 1.0 | n/a | 3 |")  # no finetune run: no ratio


def test_variant_table_reads_comparison_folders(tmp_path, capsys):
    from benchmarks import run as run_cli
    from benchmarks import table as table_cli

    out = tmp_path / "variant"
    argv = [
        "--benchmark", "split_digits", "--methods", "spp", "--seeds", "2", "--epochs", "1", "--hidden", "16",
        "--lr", "0.1", "--train-limit", "50", "--grid", "spp=10,100", "--out", str(out), "--quiet",
        "--threads", "1",
    ]  # fmt: skip
    assert run_cli.main(argv) == 0
    capsys.readouterr()
    tuning = out / "tuning" / "spp_summary.json"
    summary = json.loads(tuning.read_text())
    summary["rows"].append({"strength": 1000.0, "status": "diverged", "acc": None})
    tuning.write_text(json.dumps(summary))

    assert table_cli.main(["--out", str(tmp_path / "t.md"), f"plain={out}"]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("spp_seed*.json"))]
    assert row["acc"]["mean"] == pytest.approx(np.mean([r["metrics"]["acc"] for r in runs]))
    assert row["largest_trained"] == 100.0 and row["smallest_diverged"] == 1000.0
    assert row["omega_max"] == pytest.approx(np.mean([r["spp_importance"]["max"] for r in runs]))
    text = (tmp_path / "t.md").read_text()
    made_by = f"<!-- made by: python -m benchmarks.table --out {tmp_path / 't.md'} plain={out} -->"
    assert text.splitlines()[0] == made_by
    assert text.splitlines()[3].startswith("| plain | ") and "1000" in text
    assert capsys.readouterr().out == text
    with pytest.raises(SystemExit) as exit_info:
        table_cli.main(["--out", str(tmp_path / "u.md"), f"x={tmp_path / 'nothing'}"])
    assert exit_info.value.code == 2


def test_fill_tables_regenerates_measured_tables_and_docs_are_in_sync(tmp_path):
    from benchmarks import docs_tables

    records = [_record("finetune", 0, acc=0.875), _record("spp", 0, acc=0.905, strength=100.0)]
    write_report(tmp_path / "results" / "cmp", records, title="t")
    (tmp_path / "results" / "table.md").write_text("| a |\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n<!-- summary: results/cmp -->\nstale 99.99\n<!-- end -->\n"
        "<!-- include: results/table.md -->\nold\n<!-- end -->\nend\n"
    )
    assert docs_tables.main(["--check", str(doc)]) == 1
    assert docs_tables.main([str(doc)]) == 0
    text = doc.read_text()
    assert "99.99" not in text and "| a |" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| spp | 100 | 90.50 ± 0.00 |" in text  # the record's ACC, in percent
    assert docs_tables.main(["--check", str(doc)]) == 0
    doc.write_text("<!-- summary: results/missing -->\n<!-- end -->\n")
    assert docs_tables.main([str(doc)]) == 2
    # the project's own documents hold the tables of the results kept in docs/results
    root = Path(__file__).parents[1]
    project_docs = [str(p) for p in (root / "docs").glob("*.md")] + [str(root / "README.md")]
    assert docs_tables.main(["--check", *project_docs]) == 0


# ------------------------------------------------------------ report.md against the run JSON files
def _results_table(report_md: Path) -> dict[str, dict[str, str]]:
    """The rows of report.md's results table, by method, as ``{column header: cell}``."""
    lines = report_md.read_text().split("## Results", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def _mean_std(values: list[float]) -> tuple[float, float]:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


def _assert_report_matches_runs(folder: Path) -> None:
    """Every number of the results table, recomputed from runs/*.json alone (not summary.json)."""
    by_method: dict[str, list[dict]] = {}
    for path in sorted((folder / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        by_method.setdefault(record["method"], []).append(record)
    table = _results_table(folder / "report.md")
    assert set(table) == set(by_method)
    columns = {
        "ACC (%)": ("acc", 100),
        "BWT (%)": ("bwt", 100),
        "FWT (%)": ("fwt", 100),
        "SMT (%²)": ("smt", 1e4),
    }
    for method, runs_of in by_method.items():
        row = table[method]
        assert int(row["n seeds"]) == len(runs_of), method
        strengths = sorted({r["strength"] for r in runs_of if r["strength"] is not None})
        assert row["strength"] == (", ".join(f"{s:g}" for s in strengths) or "n/a"), method
        for header, (key, scale) in columns.items():
            values = [r["metrics"][key] * scale for r in runs_of if r["metrics"][key] is not None]
            if not values:
                assert row[header] == "n/a", (method, header)
                continue
            mean, std = _mean_std(values)
            shown = row[header].split(" (n=")[0]
            assert shown == f"{mean:.2f} ± {std:.2f}", (method, header, shown, mean, std)
        mean, std = _mean_std([r["wall_time_s"]["total"] for r in runs_of])
        assert row["wall time (s)"] == f"{mean:.1f} ± {std:.1f}", method


def test_kept_report_numbers_equal_their_run_json_files():
    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "split_digits"
    _assert_report_matches_runs(folder)


def test_a_fresh_run_writes_the_numbers_of_its_run_json_files_into_report_md(tmp_path):
    from benchmarks import run as run_cli

    out = tmp_path / "run"
    argv = ["--methods", "finetune,spp,joint", "--seeds", "2", "--epochs", "1", "--no-tune", "--quiet",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert run_cli.main(argv) == 0
    _assert_report_matches_runs(out)
    # the check can fail: one changed number in a run file is a mismatch
    path = out / "runs" / "spp_seed1.json"
    record = json.loads(path.read_text())
    record["metrics"]["acc"] -= 0.01
    path.write_text(json.dumps(record))
    with pytest.raises(AssertionError):
        _assert_report_matches_runs(out)

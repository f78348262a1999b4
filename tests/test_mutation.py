"""benchmarks.mutation: reading mutmut's results and scoring them (mutmut itself is not run here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import mutation


def _meta(folder, module: str, codes: dict) -> None:
    path = folder / (module.replace(".", "/") + ".py.meta")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_scores_count_timeouts_as_killed_and_leave_equivalents_out(tmp_path):
    _meta(tmp_path, "pkg.a", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0, "pkg.a.x_f__mutmut_3": 0,
                              "pkg.a.x_f__mutmut_4": 36, "pkg.a.x_f__mutmut_5": 33})  # fmt: skip
    _meta(tmp_path, "pkg.b", {"pkg.b.x_g__mutmut_1": 1})
    results = mutation.collect(tmp_path)
    assert results["pkg.a"]["pkg.a.x_f__mutmut_4"] == "timeout"
    equivalent = {"pkg.a.x_f__mutmut_2": "same value", "pkg.b.x_g__mutmut_1": "listed but killed"}
    summary = mutation.score(results, equivalent)
    a = summary["modules"]["pkg.a"]
    assert (a["mutants"], a["killed"], a["timeout"], a["survived"], a["equivalent"], a["no_tests"]) == (
        5, 1, 1, 1, 1, 1,
    )  # fmt: skip
    assert a["score"] == pytest.approx(2 / 4)  # (killed + timeout) / (mutants - equivalent)
    assert summary["total"]["score"] == pytest.approx(3 / 5)
    assert summary["unexplained_survivors"] == ["pkg.a.x_f__mutmut_3"]
    assert summary["stale_equivalents"] == ["pkg.b.x_g__mutmut_1"]
    text = mutation.markdown(
        summary
        | {"command": "c", "wall_time_min": 1.0, "max_children": 2, "mutmut_version": "3", "git_commit": "x"},
        equivalent,
    )
    assert "| pkg.a | 5 | 1 | 1 | 1 | 1 | 1 | 50.0 | 40.0 |" in text
    assert "`pkg.a.x_f__mutmut_2`: same value" in text and "Stale entries" in text


def test_report_without_results_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m benchmarks.mutation`"):
        mutation.collect(tmp_path)


def _not_installed(name):
    raise mutation.metadata.PackageNotFoundError(name)


def test_a_report_rebuilt_without_mutmut_says_it_is_not_installed(tmp_path, monkeypatch):
    _meta(tmp_path / "mutants", "pkg.a", {"pkg.a.x_f__mutmut_1": 1})
    monkeypatch.setattr(mutation, "REPO", tmp_path)
    monkeypatch.setattr(mutation.metadata, "version", _not_installed)
    assert mutation.main(["--report-only", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert summary["mutmut_version"].startswith("not installed")


def test_report_only_keeps_what_describes_the_run_it_reports(tmp_path, monkeypatch):
    _meta(tmp_path / "mutants", "pkg.a", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0})
    monkeypatch.setattr(mutation, "REPO", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "equivalent.json").write_text(json.dumps({"pkg.a.x_f__mutmut_2": "same value"}))
    run = {"command": "python -m benchmarks.mutation --max-children 1", "max_children": 1,
           "wall_time_min": 32.1, "git_commit": "abc1234", "mutmut_version": "3.8.1"}  # fmt: skip
    (out / "scores.json").write_text(json.dumps(run))
    monkeypatch.setattr(mutation.metadata, "version", _not_installed)  # CI installs no mutmut
    assert mutation.main(["--report-only", "--out", str(out)]) == 0
    summary = json.loads((out / "scores.json").read_text())
    assert {key: summary[key] for key in run} == run
    assert summary["total"]["score"] == 1.0
    assert "(32.1 min on 1 worker; mutmut" in (out / "scores.md").read_text()

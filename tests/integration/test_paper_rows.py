"""Paper rows (``experiment=<row>``): every row composes at the paper's scale and plans at ``scale=cpu`` with its own
student; a row runs end to end on the GLUE path from a ``save_to_disk`` folder made here (never the hub), and the
report prints the paper's numbers beside the measured ones with the row's caveats."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from helpers import FILLER, WORDS, tiny_overrides

from slimnlp.config import compose_config, group_options
from slimnlp.train import _planned, with_scale

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "integration"), str(REPO / "tests")])}
ROWS = [o for o in group_options("experiment") if compose_config([f"experiment={o}"]).get("paper")]


def test_the_paper_rows_are_there():
    assert {"pkd_6L_mnli", "pkd_3L_mnli", "tinybert_4L_mnli", "tinybert_6L_mnli", "theseus_6L_mnli",
            "magnitude_10pct_mnli", "magnitude_3pct_mnli", "movement_10pct_mnli", "movement_3pct_mnli",
            "distilbert_6L_mnli", "minilm_6x384_mnli", "ternarybert_mnli", "q8bert_sst2",
            "soft_movement_10pct_mnli", "soft_movement_3pct_mnli"} <= set(ROWS)


def row_overrides(row: str) -> list[str]:
    """A row on the command line, with the value it leaves to the user filled in: soft movement's lambda, which the
    rows cannot fix (the paper's is in the authors' sheet)."""
    technique = compose_config([f"experiment={row}"]).technique
    left_to_user = technique.get("variant") == "soft" and technique.get("regularization") is None
    return [f"experiment={row}", *(["technique.regularization=400"] if left_to_user else [])]


@pytest.mark.parametrize("row", ROWS)
def test_a_row_is_the_papers_setting_and_scales_to_the_embedded_default(row):
    paper_scale = compose_config([f"experiment={row}"])
    paper = paper_scale.paper
    assert paper_scale.data.task_name == paper.task and paper.task.startswith("glue_")
    assert paper_scale.teacher.name == "bert_base"
    assert paper_scale.teacher.finetune.max_train_samples is None  # the papers' teachers saw all of MNLI
    assert 0.5 < paper.metrics["test/acc"] < 1 and paper.source and paper.split
    cpu = _planned(with_scale([*row_overrides(row), "scale=cpu"]))  # composed and planned, as a run would be
    assert cpu.data.task_name == "tweet_sentiment" and cpu.teacher.name == "minilm_l6"
    assert cpu.trainer.max_steps == 500 and cpu.technique._target_ == paper_scale.technique._target_
    teacher_layers, paper_layers = 6, paper_scale.student.get("num_layers")
    if paper_layers:  # a student cut from the teacher keeps the paper's depth ratio, rounded up
        assert cpu.student.num_layers == -(-paper_layers * teacher_layers // 12)


def test_a_soft_movement_row_without_lambda_stops_in_one_line_naming_it():
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=soft_movement_3pct_mnli", "scale=cpu"],
                            env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: technique.regularization=None is invalid: lambda")


def test_scale_without_a_paper_row_fails_in_one_line():
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "scale=cpu"], env=ENV, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: scale='cpu' is invalid: a paper row to scale")


def learnable_mnli(path: Path, seed: int = 0) -> Path:
    """An MNLI-shaped DatasetDict (premise, hypothesis, ClassLabel, matched and mismatched validation) whose label
    is carried by cue words in the premise: learnable in a few steps, saved with save_to_disk."""
    rng = random.Random(seed)
    names = ["entailment", "neutral", "contradiction"]
    cues = dict(zip(names, WORDS.values()))
    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=names), "idx": Value("int32")})

    def split(n: int) -> Dataset:
        labels = [i % 3 for i in range(n)]
        premises = [" ".join(rng.sample(FILLER, 4) + rng.sample(cues[names[y]], 2)) for y in labels]
        return Dataset.from_dict({"premise": premises, "hypothesis": [" ".join(rng.sample(FILLER, 3)) for _ in labels],
                                  "label": labels, "idx": list(range(n))}, features=features)

    DatasetDict({"train": split(240), "validation_matched": split(45),
                 "validation_mismatched": split(45)}).save_to_disk(str(path))
    return path


def test_a_paper_row_runs_on_the_glue_path_and_the_report_shows_the_paper_beside(tiny_setup, tmp_path):
    root, corpus, teacher = tiny_setup
    mnli = learnable_mnli(tmp_path / "mnli")
    run_dir = tmp_path / "run"
    tiny = [o for o in tiny_overrides(root, corpus, teacher) if not o.startswith(("data=", "data.source.path",
                                                                                  "data.task_name"))]
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=pkd_3L_mnli", *tiny, f"data.source.path={mnli}",
         "data.max_length=24", "teacher.finetune.max_train_samples=null", "trainer.max_epochs=3",
         f"hydra.run.dir={run_dir}"],
        env=ENV, capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "glue_mnli" and results["technique"] == "pkd"
    assert {"test/acc", "test_mm/acc"} <= set(results["metrics"])  # matched and mismatched dev sets
    assert results["config"]["paper"]["label"] == "BERT3-PKD"
    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "slimnlp.report", str(run_dir), "--columns", "test/acc,test_mm/acc",
                             "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (out / "report.md").read_text()
    paper_line = next(line for line in table.splitlines() if "BERT3-PKD (paper)" in line)
    assert "0.7670" in paper_line or "76.70" in paper_line, paper_line
    assert "GLUE test" in table and "Sun et al. 2019" in table  # the split caveat and the source

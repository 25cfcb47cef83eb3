"""Small data out of the box: the drug reviews (540 training examples) at the default recipe, three seeds, and
BBC News before and after the small-data rule (``min_steps``), each a plain ``python train.py`` run.

    python experiments/small_data.py [--cells drug_seed42 bbc_new ...] [--out DIR]

Cells:
- ``drug_seed{42,43,44}``: ``python train.py data=drug_reviews technique=kd student=2L [seed=...]``, the issue's
  command with no other override (one teacher, fine-tuned once at the default recipe, three student seeds);
- ``drug_old_budget``: the same with the rule off for teacher and student (``min_steps=0
  teacher.finetune.min_steps=0``): the budget before the rule (2 epochs = 34 steps), which the teacher gate
  is expected to refuse;
- ``drug_teacher_lr{1e-4,2e-4}``: the teacher at a higher LR than the default 5e-5, same steps (the student
  barely trains: ``trainer.max_steps=1``; only the teacher's numbers are read);
- ``bbc_new`` / ``bbc_old``: ``data=bbc_news technique=kd student=2L`` with and without the rule
  (~1,780 training examples: 112 steps in 2 epochs, raised to 250).
Results are read from each run's results.json (and the teacher's, under ``outputs/teachers``); a run that ends
with an error line shows that line. The table is written to experiments/small_data.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULE_OFF = ["min_steps=0", "teacher.finetune.min_steps=0"]
DRUG = ["data=drug_reviews", "technique=kd", "student=2L"]
BBC = ["data=bbc_news", "technique=kd", "student=2L"]
CELLS: dict[str, list[str]] = {
    "drug_seed42": DRUG,
    "drug_seed43": [*DRUG, "seed=43"],
    "drug_seed44": [*DRUG, "seed=44"],
    "drug_old_budget": [*DRUG, *RULE_OFF],
    "bbc_new": BBC,
    "bbc_old": [*BBC, *RULE_OFF],
    "drug_teacher_lr1e-4": [*DRUG, "teacher.finetune.lr=1e-4", "trainer.max_steps=1"],
    "drug_teacher_lr2e-4": [*DRUG, "teacher.finetune.lr=2e-4", "trainer.max_steps=1"],
}
COLUMNS = [
    ("teacher val acc", "teacher:val/acc"),
    ("teacher test acc", "teacher/test/acc"),
    ("teacher test F1", "teacher/test/f1"),
    ("student test acc", "test/acc"),
    ("student test F1", "test/f1"),
    ("majority (test)", "test/majority_acc"),
    ("agreement", "fidelity/agreement"),
    ("teacher steps", "teacher:train/optimizer_steps"),
    ("student steps", "train/optimizer_steps"),
]


def run_cell(name: str, overrides: list[str], out_root: Path, extra: list[str]) -> dict:
    run_dir = out_root / name
    results, error = run_dir / "results.json", run_dir / "error.txt"
    if not results.exists() and not error.exists():
        cmd = [
            sys.executable,
            str(REPO / "train.py"),
            *overrides,
            *extra,
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ]
        print("$ python train.py", " ".join(overrides), flush=True)
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            error.write_text((done.stderr.strip().splitlines() or ["failed"])[-1] + "\n")
    if error.exists():
        return {"error": error.read_text().strip()}
    res = json.loads(results.read_text())
    teacher = json.loads((Path(res["artifacts"]["teacher_dir"]) / "results.json").read_text())["metrics"]
    return {
        "metrics": {**res["metrics"], **{f"teacher:{k}": v for k, v in teacher.items()}},
        "warnings": res.get("warnings", []),
    }


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| cell | " + " | ".join(c for c, _ in COLUMNS) + " | warnings |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | {row['error']} |" + " |" * len(COLUMNS))
            continue
        m = row["metrics"]
        cells = [(f"{m[k]:.0f}" if "steps" in k else f"{m[k]:.4f}") if k in m else "–" for _, k in COLUMNS]
        lines.append(
            f"| {name} | " + " | ".join(cells) + " | " + ("; ".join(row["warnings"]) or "none") + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiments" / "small_data")
    parser.add_argument("--output-root", type=Path, help="paths.output_root of every run (its teacher cache)")
    args = parser.parse_args()
    extra = [f"paths.output_root={args.output_root}"] if args.output_root else []
    for name in args.cells:
        run_cell(name, CELLS[name], args.out, extra)
        # rewritten as cells finish, with every cell that has run so far (also in earlier invocations)
        finished = [
            n
            for n in CELLS
            if (args.out / n / "results.json").exists() or (args.out / n / "error.txt").exists()
        ]
        text = "# Small data at the default recipe\n\n" + table(
            {n: run_cell(n, CELLS[n], args.out, extra) for n in finished}
        )
        (REPO / "experiments" / "small_data.md").write_text(text + "\n")
        print(text, flush=True)


if __name__ == "__main__":
    main()

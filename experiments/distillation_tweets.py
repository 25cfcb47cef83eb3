"""Distillation methods side by side on the embedded default data, at one fixed budget.

    python experiments/distillation_tweets.py [--students 4L 2L] [--techniques finetune kd ...] [--dry-run]

Every cell is one `python train.py` run with the same data subset, seed, optimizer, epochs and teacher
(the cached fine-tuned MiniLM-L6). Two-stage methods (tinybert, theseus) run `trainer.max_epochs` per
stage. The table (markdown) is written to experiments/distillation_tweets.md from the runs' results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# min_steps=0: the table's budget is its own (63 steps per cell), not raised by the small-data rule.
BUDGET = ["data.max_train_samples=2000", "trainer.max_epochs=1", "min_steps=0", "seed=42",
          "trainer.enable_progress_bar=false"]
TECHNIQUES = ["finetune", "kd", "pkd", "distilbert", "minilm", "tinybert", "theseus"]
STUDENTS = ["4L", "2L"]
EXTRA_CELLS = [("tinybert", "tinybert_4L")]  # TinyBERT's own 4x312 shape: the learnable-projection path
COLUMNS = [
    ("test acc", "test/acc", "{:.4f}"),
    ("test macro-F1", "test/f1", "{:.4f}"),
    ("agreement", "fidelity/agreement", "{:.4f}"),
    ("speed-up", "eff/speedup", "{:.2f}x"),
    ("params (M)", "eff/params", "{:.1f}"),
    ("run (s)", "time/run_s", "{:.0f}"),
]


def run_cell(technique: str, student: str, out_root: Path) -> dict | None:
    run_dir = out_root / f"{technique}_{student}"
    results = run_dir / "results.json"
    if results.exists():
        return json.loads(results.read_text())
    cmd = [sys.executable, str(REPO / "train.py"), f"technique={technique}", f"student={student}", *BUDGET,
           f"hydra.run.dir={run_dir}"]
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"  -> not run: {reason}", flush=True)
        (run_dir / "error.txt").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(reason + "\n")
        return None
    return json.loads(results.read_text())


def table(rows: dict[tuple[str, str], dict | None], out_root: Path) -> str:
    lines = ["| student | technique | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for (technique, student), res in rows.items():
        if res is None:
            reason = (out_root / f"{technique}_{student}" / "error.txt").read_text().strip()
            lines.append(f"| {student} | {technique} | n/a: {reason} |" + " |" * (len(COLUMNS) - 1))
            continue
        m = res["metrics"]
        cells = [fmt.format(m[key] / (1e6 if key == "eff/params" else 1)) if key in m else "–"
                 for _, key, fmt in COLUMNS]
        lines.append(f"| {student} | {technique} | " + " | ".join(cells) + " |")
    teacher = next((r for r in rows.values() if r), None)
    if teacher:
        tm = teacher["metrics"]
        lines.append(f"\nTeacher ({teacher['teacher']}, fine-tuned): test acc {tm['teacher/test/acc']:.4f}, "
                     f"macro-F1 {tm.get('teacher/test/f1', float('nan')):.4f}, "
                     f"{tm['teacher/eff/params'] / 1e6:.1f}M params.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--techniques", nargs="+", default=TECHNIQUES)
    parser.add_argument("--students", nargs="+", default=STUDENTS)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiments" / "distillation_tweets")
    args = parser.parse_args()
    cells = [(t, s) for s in args.students for t in args.techniques]
    cells += [cell for cell in EXTRA_CELLS if cell[0] in args.techniques]
    rows = {cell: run_cell(*cell, args.out) for cell in cells}
    text = "# Distillation on tweet_sentiment\n\nBudget: " + " ".join(BUDGET) + "\n\n" + table(rows, args.out)
    (REPO / "experiments" / "distillation_tweets.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""kd and finetune for the 2- and 4-layer students on the embedded default, three seeds each, every measurement
on, then the report: the table and plots the README embeds.

    python experiments/measurement_suite.py [--out DIR] [--seeds 0 1 2] [--report-only]

It is one Hydra multirun, as a user would repeat a run (``python train.py -m ... seed=0,1,2``), with the
drug reviews as the out-of-distribution set (same label names as the tweets):

    python train.py -m technique=kd,finetune student=2L,4L seed=0,1,2 eval.ood=[drug_reviews] \\
        hydra.sweep.dir=DIR

Then

    python -m slimnlp.report DIR --group-by technique,student --baseline technique=finetune \\
        --elue-baseline technique=finetune --elue-baseline kind=teacher --out experiments/measurement_suite

writes ``report.md``, ``report.csv`` and the PNGs there; a second report with ``--columns`` (OOD, attacks, KL,
memory, ONNX Runtime, energy) goes to ``experiments/measurement_suite/beyond_accuracy``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The second table: what the default columns leave out (one metric per line reads better than an f-string).
BEYOND_ACCURACY = ",".join([  # noqa: FLY002
    "test/acc", "ood/drug_reviews/acc", "robust/typo/acc", "robust/typo/success_rate", "robust/word/acc",
    "robust/word/success_rate", "fidelity/kl", "eff/peak_mem_mb", "eff/ort/latency_ms_b32",
    "eff/ort/speedup_b32", "energy/train_kwh", "energy/infer_kwh_per_1k",
])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiments" / "measurement_suite")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    args = parser.parse_args()
    if not args.report_only:
        sweep = [
            sys.executable, str(REPO / "train.py"), "-m",
            "technique=kd,finetune", "student=2L,4L", "seed=" + ",".join(map(str, args.seeds)),
            "eval.ood=[drug_reviews]", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={args.out}",
        ]
        print("$", " ".join(sweep[1:]), flush=True)
        subprocess.run(sweep, cwd=REPO, check=False)
    report = [
        sys.executable, "-m", "slimnlp.report", str(args.out), "--group-by", "technique,student",
        "--baseline", "technique=finetune",
    ]
    tables = {
        "": ["--elue-baseline", "technique=finetune", "--elue-baseline", "kind=teacher"],
        "beyond_accuracy": ["--columns", BEYOND_ACCURACY],
    }
    for folder, extra in tables.items():
        command = [*report, *extra, "--out", str(REPO / "experiments" / "measurement_suite" / folder)]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=REPO, check=True)


if __name__ == "__main__":
    main()

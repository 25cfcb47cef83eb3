"""Magnitude vs movement vs soft movement pruning at 50%, 10% and 3% of the encoder weights remaining, with and
without KD, on the embedded default (4,000 tweets, the MiniLM-L6 teacher), every cell at the same budget —
Sanh et al. 2020's Table 1 setting at this project's scale.

    python experiments/pruning_sparsity.py [--cells NAME ...] [--epochs 6] [--out DIR] [--report-only]

Every cell is one plain run, ``python train.py student=6L technique=<method> technique.sparsity=<s>
technique.distill=<kd> trainer.max_epochs=<epochs> seed=<seed>``: the whole pretrained MiniLM fine-pruned
with the default cubic ramp. Three seeds for the with-KD cells at 10% and 3% remaining (the paper's
setting), one seed elsewhere. Soft movement has no sparsity target: its cells use the L1 weight λ listed in
``SOFT_LAMBDA`` and the table shows the sparsity each run came to. A finished cell (its ``results.json``) is
never re-run, so the table fills over several sessions; ``--report-only`` rebuilds it from what exists.
The report goes to ``experiments/pruning_sparsity/e<epochs>/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPARSITIES = {"50": 0.5, "10": 0.9, "3": 0.97}  # % remaining -> fraction removed
SOFT_LAMBDA = {"50": 1.0, "10": 10.0, "3": 50.0}  # first guesses, not yet calibrated; the measured sparsity is reported
METHODS = ("magnitude", "movement", "soft")
GROUP_BY = "technique,technique.variant,technique.sparsity,technique.regularization,technique.distill"


def cells() -> dict[str, list[str]]:
    found = {}
    for method in METHODS:
        for remaining, sparsity in SPARSITIES.items():
            for kd in (True, False):
                seeds = (0, 1, 2) if kd and remaining in ("10", "3") else (0,)
                if method == "magnitude":
                    technique = ["technique=magnitude_pruning", f"technique.sparsity={sparsity}"]
                elif method == "movement":
                    technique = ["technique=movement_pruning", f"technique.sparsity={sparsity}"]
                else:
                    technique = ["technique=movement_pruning", "technique.variant=soft",
                                 f"technique.regularization={SOFT_LAMBDA[remaining]}"]
                for seed in seeds:
                    name = f"{method}_{remaining}pct_{'kd' if kd else 'nokd'}_s{seed}"
                    found[name] = [*technique, f"technique.distill={str(kd).lower()}", f"seed={seed}"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", help="cell names (default: all); see --list")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiments" / "pruning_sparsity")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    table = cells()
    if args.list:
        print("\n".join(table))
        return
    if not args.report_only:
        for name in args.cells or table:
            run_dir = args.out / f"e{args.epochs}" / name
            if (run_dir / "results.json").exists():
                continue
            command = [sys.executable, str(REPO / "train.py"), "student=6L", *table[name],
                       f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
                       f"hydra.run.dir={run_dir}"]
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, cwd=REPO, check=False)
    report = [sys.executable, "-m", "slimnlp.report", str(args.out / f"e{args.epochs}"),
              "--group-by", GROUP_BY,
              "--columns", "test/acc,test/f1,compress/sparsity,eff/disk_bytes,eff/latency_ms_b32,eff/speedup_b32",
              "--out", str(REPO / "experiments" / "pruning_sparsity" / f"e{args.epochs}")]
    print("$", " ".join(report[1:]), flush=True)
    subprocess.run(report, cwd=REPO, check=False)


if __name__ == "__main__":
    main()

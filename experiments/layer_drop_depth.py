"""LayerDrop's claim at this project's scale: one student trained with LayerDrop, then cut to 6, 4, 3 and 2
layers without retraining, against the same student trained without it (rate 0) and cut the same way.

    python experiments/layer_drop_depth.py [--rates 0.2 0.0] [--seed 0] [--out DIR] [--report-only]

Each rate is one training run, ``python train.py student=6L technique=layer_drop technique.rate=<p> seed=<s>
<COMMON>`` (the whole pretrained MiniLM-L6 fine-tuned with the teacher's soft loss, the default budget), and
each depth below 6 one post-training run on its saved student, ``python train.py technique=drop_layers
student=path student.path=<that run> technique.depth=<d> <COMMON>`` (Every Other: 4 keeps layers 0,1,3,4;
3 keeps 0,2,4; 2 keeps 0,3). Same data, split, seed and optimizer steps for both rates; one seed (the
table says so). Speed-ups are each run's own ``eff/speedup_b32``: the saved student against the 6-layer
teacher, measured interleaved in one process. ``COMMON`` leaves out ONNX Runtime, robustness and energy,
which the table does not show. Finished runs (their ``results.json``) are not re-run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPTHS = (4, 3, 2)
COMMON = ["measure.runtimes=[torch]", "eval.robustness.attacks=[]", "energy.enabled=false",
          "trainer.enable_progress_bar=false"]


def run(run_dir: Path, *overrides: str) -> None:
    if (run_dir / "results.json").exists():
        return
    command = [sys.executable, str(REPO / "train.py"), *overrides, *COMMON, f"hydra.run.dir={run_dir}"]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=False)


def table(out: Path, rates: list[str], seed: int) -> str:
    lines = ["| LayerDrop rate | layers | test acc | FLOPs vs teacher | speed-up b32 | disk MB |",
             "|---|---|---|---|---|---|"]
    for rate in rates:
        for depth in (6, *DEPTHS):
            name = f"rate{rate}_s{seed}" + ("" if depth == 6 else f"_depth{depth}")
            path = out / name / "results.json"
            if not path.exists():
                lines.append(f"| {rate} | {depth} | (not run) | | | |")
                continue
            m = json.loads(path.read_text())["metrics"]
            lines.append(f"| {rate} | {depth} | {m['test/acc']:.4f} | {m['eff/flops'] / m['teacher/eff/flops']:.3f} "
                         f"| {m['eff/speedup_b32']:.2f}× | {m['eff/disk_bytes'] / 1e6:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", nargs="+", default=["0.2", "0.0"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiments" / "layer_drop_depth")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        for rate in args.rates:
            trained = args.out / f"rate{rate}_s{args.seed}"
            run(trained, "student=6L", "technique=layer_drop", f"technique.rate={rate}", f"seed={args.seed}")
            for depth in DEPTHS:
                run(args.out / f"{trained.name}_depth{depth}", "technique=drop_layers", "student=path",
                    f"student.path={trained}", f"technique.depth={depth}", f"seed={args.seed}")
    report = table(args.out, args.rates, args.seed)
    target = REPO / "experiments" / "layer_drop_depth" / "report.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()

"""Re-time a finished run's saved student against its teacher, away from the run: the in-run latency is 20
interleaved rounds taken once, at the end of training, and on a shared 2-core machine one busy moment moves it.

    python benchmarks/saved_speedup.py RUN_DIR [--trials 3] [--repeats 30] [--batch 32] [--threads 2]

Both models load through ``slimnlp.load_student`` from the run's ``results.json`` artifacts (the student folder,
and the fine-tuned teacher's, a plain HF folder it loads with ``from_pretrained``) and are timed in interleaved
rounds (``slimnlp.metrics.latency``) on ``--batch`` rows of ``data.max_length`` random token ids: a BERT forward
pass costs the same whatever the ids, so the shape is all that matters. Each trial prints the p50 speed-up and
its share of the FLOPs ratio the run measured (``teacher/eff/flops`` over ``eff/flops``); the script exits with
status 1 when the median trial falls below 0.9 of it (issue #9's bar for materialized head and FFN pruning).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import common  # noqa: F401  (offline variables)
import torch

from slimnlp.artifacts import load_student
from slimnlp.metrics.latency import inference_call, interleaved_times_ms, percentiles, torch_threads

REQUIRED = 0.9  # of the FLOPs ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = json.loads((args.run_dir / "results.json").read_text())
    metrics = results["metrics"]
    flops_ratio = metrics["teacher/eff/flops"] / metrics["eff/flops"]
    teacher = load_student(results["artifacts"]["teacher_dir"])  # a plain HF folder: from_pretrained
    student = load_student(args.run_dir)
    length = results["config"]["data"]["max_length"]
    inputs = {"input_ids": torch.randint(1000, 20000, (args.batch, length))}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    calls = {"teacher": inference_call(teacher, inputs), "student": inference_call(student, inputs)}
    print(f"{args.run_dir.name}: batch {args.batch} x {length} tokens, {args.threads} threads, {args.trials} trials of "
          f"{args.repeats} interleaved rounds; FLOPs ratio {flops_ratio:.2f}x")
    shares = []
    with torch_threads(args.threads):
        for trial in range(args.trials):
            times = interleaved_times_ms(calls, args.repeats, warmup=3)
            p50 = {name: percentiles(t)["p50"] for name, t in times.items()}
            speedup = p50["teacher"] / p50["student"]
            shares.append(speedup / flops_ratio)
            print(f"trial {trial}: teacher {p50['teacher']:.1f} ms, student {p50['student']:.1f} ms, "
                  f"speed-up {speedup:.2f}x = {shares[-1]:.2f} of the FLOPs ratio")
    median = statistics.median(shares)
    print(f"median {median:.2f} of the FLOPs ratio: " + ("PASS" if median >= REQUIRED else f"FAIL (< {REQUIRED})"))
    return 0 if median >= REQUIRED else 1


if __name__ == "__main__":
    sys.exit(main())

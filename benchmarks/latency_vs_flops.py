"""Does the latency measurement see the model, or the harness? The measured speed-up of a 2-layer cut of the
MiniLM-L6 teacher against its FLOPs ratio, at batch 32 (and batch 1), with slimnlp's own measurement code.

    python benchmarks/latency_vs_flops.py [--layers 2] [--seq-len 64] [--threads 2] [--repeats 30]

Real tweets padded to ``--seq-len`` tokens, the real teacher (6x384) and its ``--layers``-layer skip cut,
timed in interleaved rounds after warm-up at a fixed thread count (``slimnlp.metrics.latency``), FLOPs
counted by ``slimnlp.metrics.flops``. A measurement that loses more than 10% of the FLOPs ratio to
overhead (tokenizer, Python, logging, thread start-up) is measuring the harness: the script exits with
status 1 when the batch-32 speed-up is below 0.9x the FLOPs ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from common import minilm, minilm_tokenizer

from slimnlp.batch import model_inputs
from slimnlp.data import TextClassificationDataModule
from slimnlp.data.sources import TweetSentiment
from slimnlp.metrics.flops import flops_per_example
from slimnlp.metrics.latency import interleaved_times_ms, percentiles, torch_threads
from slimnlp.models.students import layer_subset

REQUIRED = 0.9  # of the FLOPs ratio, at batch 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slimnlp-bench-"))
    dm = TextClassificationDataModule(
        TweetSentiment(), minilm_tokenizer(), task_name="tweet_sentiment", max_length=args.seq_len,
        max_train_samples=64, max_eval_samples=64, cache_dir=str(work / "data"),
    )
    dm.prepare_data()
    dm.setup()
    teacher = minilm().eval()
    student = layer_subset(teacher, num_labels=3, num_layers=args.layers).eval()
    models = {"teacher": teacher, "student": student}
    ratio_flops = flops_per_example(teacher, dm.fixed_length_batch(1)) / flops_per_example(
        student, dm.fixed_length_batch(1)
    )
    print(f"MiniLM-L6 vs its {args.layers}-layer cut, {args.seq_len} tokens, {args.threads} threads, "
          f"{args.repeats} interleaved rounds; FLOPs ratio {ratio_flops:.2f}x")
    ok = True
    with torch_threads(args.threads):
        for size in (1, 32):
            inputs = model_inputs(dm.fixed_length_batch(size))

            def call(model, inputs=inputs):
                with torch.inference_mode():
                    return model(**inputs)

            times = interleaved_times_ms(
                {name: (lambda m=m: call(m)) for name, m in models.items()}, args.repeats, warmup=3
            )
            p50 = {name: percentiles(t)["p50"] for name, t in times.items()}
            speedup = p50["teacher"] / p50["student"]
            share = speedup / ratio_flops
            print(f"batch {size:>2}: teacher {p50['teacher']:7.1f} ms, student {p50['student']:7.1f} ms, "
                  f"speed-up {speedup:.2f}x = {share:.2f} of the FLOPs ratio")
            if size == 32 and share < REQUIRED:
                ok = False
    print("PASS" if ok else f"FAIL: batch-32 speed-up below {REQUIRED} of the FLOPs ratio")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

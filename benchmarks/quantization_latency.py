"""Which INT8 backend is faster on this CPU, and what do the low-bit artifacts cost at inference? The MiniLM-L6
teacher in fp32 against every quantized form slimnlp saves, timed side by side in one process.

    python benchmarks/quantization_latency.py [--seq-len 64] [--threads 2] [--repeats 20]

Real tweets padded to ``--seq-len`` tokens; every model is the same MiniLM-L6 with its encoder Linears replaced
as the techniques replace them (latency does not depend on what the weights learned): ``torch_ao`` (fbgemm
int8, ``ptq_dynamic``'s default and ``qat`` 8-bit), ``torchao`` (torchao's Int8Tensor), 4-bit group-wise,
ternary and BinaryBERT's two sign planes (``dequant``: packed on disk, fp32 at run time) and GOBO. Timed in interleaved rounds after warm-up at a
fixed thread count (``slimnlp.metrics.latency``), each at batch 1 and 32; ONNX Runtime's fp32 graph and its
dynamic-INT8 graph (``measure.runtimes=[onnxruntime_int8]``) are timed the same way in a second group.

Exits with status 1 when no INT8 backend is faster than fp32 at batch 32: the issue's bar for the INT8 artifact.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

from common import minilm, minilm_tokenizer
from torch import nn

from slimnlp.artifacts import artifact_bytes, save_student
from slimnlp.batch import model_inputs
from slimnlp.data import TextClassificationDataModule
from slimnlp.data.sources import TweetSentiment
from slimnlp.metrics.latency import inference_call, interleaved_times_ms, percentiles, torch_threads
from slimnlp.metrics.onnx_runtime import OrtClassifier, export_onnx
from slimnlp.models.structure import prunable_modules
from slimnlp.models.surgery import replace_module
from slimnlp.modules.binary import BinaryLinear, SplitBinaryLinear
from slimnlp.modules.codebook import CodebookLinear
from slimnlp.modules.quantization import QuantizedLinear, twn_ternarize
from slimnlp.techniques.ptq_dynamic import torch_ao_int8, torchao_int8


def converted(model: nn.Module, convert) -> nn.Module:
    out = copy.deepcopy(model)
    for path, linear in prunable_modules(out, ["encoder"]):
        replace_module(out, path, convert(linear))
    return out.eval()


def ternary(linear: nn.Linear) -> QuantizedLinear:
    codes, alpha = twn_ternarize(linear.weight)
    return QuantizedLinear.from_codes(codes, alpha, linear.bias, bits=2, granularity="per_tensor", kernel="dequant",
                                      activation_bits=8)


def ort_call(runtime: OrtClassifier, batch):
    feeds = runtime.feeds(batch)
    return lambda: runtime.logits(feeds)


FORMS = {
    "int8 torch_ao (fbgemm)": torch_ao_int8,
    "int8 torchao": torchao_int8,
    "4-bit group-128 (dequant, act 8)": lambda l: QuantizedLinear.from_linear(
        l, bits=4, granularity="group", group_size=128, kernel="dequant", activation_bits=8),
    "ternary (dequant, act 8)": ternary,
    "gobo 3-bit": CodebookLinear.from_linear,
    "binary TWS (dequant, act 8)": lambda l: BinaryLinear.from_split(
        SplitBinaryLinear.from_linear(l, split=True, activation_bits=8)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slimnlp-bench-"))
    tokenizer = minilm_tokenizer()
    dm = TextClassificationDataModule(TweetSentiment(), tokenizer, task_name="tweet_sentiment",
                                      max_length=args.seq_len, max_train_samples=64, max_eval_samples=64,
                                      cache_dir=str(work / "data"))
    dm.prepare_data()
    dm.setup()
    fp32 = minilm().eval()
    models = {"fp32": fp32, **{name: converted(fp32, convert) for name, convert in FORMS.items()}}
    disk = {name: artifact_bytes(save_student(m, work / f"m{i}")) for i, (name, m) in enumerate(models.items())}
    onnx = export_onnx(fp32, dm.fixed_length_batch(32), work / "fp32.onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx), str(work / "int8.onnx"), weight_type=QuantType.QInt8)
    ort = {"ORT fp32": OrtClassifier(onnx, args.threads), "ORT int8": OrtClassifier(work / "int8.onnx", args.threads)}
    print(f"MiniLM-L6, seq {args.seq_len}, {args.threads} threads, median of {args.repeats} interleaved rounds")
    print(f"{'model':34s} {'disk MB':>8s} {'b1 ms':>8s} {'b32 ms':>8s} {'x b1':>6s} {'x b32':>6s}")
    medians: dict[int, dict[str, float]] = {}
    with torch_threads(args.threads):
        for size in (1, 32):
            batch = dm.fixed_length_batch(size)
            # Two groups: ONNX Runtime's threads spin for a while after each run (its default), which slowed
            # whichever torch model came next when both were interleaved in one group.
            calls = {name: inference_call(m, model_inputs(batch)) for name, m in models.items()}
            times = interleaved_times_ms(calls, repeats=args.repeats, warmup=3)
            ort_calls = {name: ort_call(rt, batch) for name, rt in ort.items()}
            times |= interleaved_times_ms(ort_calls, repeats=args.repeats, warmup=3)
            medians[size] = {name: percentiles(t)["p50"] for name, t in times.items()}
    for name in [*models, *ort]:
        base = "ORT fp32" if name.startswith("ORT") else "fp32"
        b1, b32 = medians[1][name], medians[32][name]
        graph = "int8.onnx*" if name == "ORT int8" else "fp32.onnx*"  # with its external data file
        size = disk.get(name, sum(f.stat().st_size for f in work.glob(graph)))
        print(f"{name:34s} {size / 1e6:8.1f} {b1:8.2f} {b32:8.1f} {medians[1][base] / b1:5.2f}x "
              f"{medians[32][base] / b32:5.2f}x")
    fastest = max(medians[32]["fp32"] / medians[32][n] for n in ("int8 torch_ao (fbgemm)", "int8 torchao"))
    print(f"fastest INT8 backend at batch 32: {fastest:.2f}x fp32")
    return 0 if fastest > 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

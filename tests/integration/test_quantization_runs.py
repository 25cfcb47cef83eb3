"""Quantization through train.py on the tiny setup: integer artifacts that are smaller for the quantized layers,
reload through ``load_student`` to the model that was tested, and one-line errors before training."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_tiny
from safetensors.torch import load_file

from slimnlp.artifacts import WEIGHTS_NAME, load_student
from slimnlp.errors import ConfigError
from slimnlp.modules.binary import BinaryLinear
from slimnlp.modules.codebook import CodebookLinear
from slimnlp.modules.quantization import QuantizedEmbedding, QuantizedLinear, unpack

ENCODER_LINEARS = 4 * 6  # the tiny teacher's 4 layers: Q, K, V, attention output, FFN in and out


def quantized_bytes(student_dir) -> tuple[int, int]:
    """(bytes of the integer codes and scales, fp32 bytes of the weights they replace) in the saved file."""
    state = load_file(str(student_dir / WEIGHTS_NAME))
    model = load_student(student_dir)
    stored = fp32 = 0
    for path, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            for key in ("codes", "scale"):
                tensor = state[f"{path}.{key}"]
                stored += tensor.numel() * tensor.element_size()
            fp32 += 4 * module.num_weights
    return stored, fp32


def reloaded_logits(student_dir, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 2000, (4, 12), generator=torch.Generator().manual_seed(seed))
    first, second = load_student(student_dir), load_student(student_dir)
    with torch.no_grad():
        return first(input_ids=ids).logits, second(input_ids=ids).logits


@pytest.mark.parametrize("backend", ["torch_ao", "torchao"])
def test_dynamic_int8_saves_an_int8_artifact_that_reloads_exactly(tiny_setup, backend):
    name = f"ptq_{backend}"
    results = run_tiny(tiny_setup, name, "technique=ptq_dynamic", f"technique.backend={backend}",
                       "student=4L", "student.init_from=finetuned")
    m = results["metrics"]
    student_dir = tiny_setup[0] / "outputs" / "runs" / name / "student"
    assert m["compress/quantized_layers"] == ENCODER_LINEARS
    assert m["train/optimizer_steps"] == 0  # post-training: nothing was trained
    stored, fp32 = quantized_bytes(student_dir)
    assert fp32 / stored >= 3.0  # int8 codes + one fp32 scale per output unit
    assert m["compress/quantized_weight_compression"] == pytest.approx(fp32 / stored)
    assert m["eff/disk_bytes"] < m["teacher/eff/disk_bytes"]
    assert m["eff/params"] == m["teacher/eff/params"]  # quantization changes widths, not counts
    kernels = {mod.kernel for mod in load_student(student_dir).modules() if isinstance(mod, QuantizedLinear)}
    assert kernels == {"fbgemm" if backend == "torch_ao" else "torchao"}
    a, b = reloaded_logits(student_dir)
    assert torch.equal(a, b)
    # int8 of the fine-tuned teacher itself: predictions stay the teacher's on (nearly) every test example
    assert m["fidelity/agreement"] >= 0.9


def test_int8_embeddings_shrink_the_whole_artifact(tiny_setup):
    results = run_tiny(tiny_setup, "ptq_emb", "technique=ptq_dynamic", "technique.targets=[encoder,embeddings]",
                       "student=4L", "student.init_from=finetuned")
    m = results["metrics"]
    student_dir = tiny_setup[0] / "outputs" / "runs" / "ptq_emb" / "student"
    assert m["compress/quantized_embeddings"] == 3  # word, position, token type
    assert m["eff/disk_compression"] >= 2.5  # the tiny model is mostly its embedding table (+ tokenizer files)
    assert m["eff/params"] == m["teacher/eff/params"]
    assert m["eff/params_nonembedding"] == m["teacher/eff/params_nonembedding"]
    a, b = reloaded_logits(student_dir)
    assert torch.equal(a, b)
    assert m["fidelity/agreement"] >= 0.9


@pytest.mark.parametrize(
    ("bits", "granularity", "kernel", "bytes_per_fp32_byte"),
    # codes: bits/8 bytes per weight; scales: one fp32 per row of >= 32 inputs, per matrix, or per 16 weights
    [(8, "per_channel", "fbgemm", 0.25 + 1 / 32), (8, "per_tensor", "fbgemm", 0.251), (4, "group", "dequant", (0.5 + 0.25) / 4),
     (2, "group", "dequant", (0.25 + 0.25) / 4)],
)
def test_qat_trains_and_saves_packed_integer_weights(tiny_setup, bits, granularity, kernel, bytes_per_fp32_byte):
    name = f"qat_{bits}_{granularity}"
    results = run_tiny(tiny_setup, name, "technique=qat", f"technique.bits={bits}",
                       f"technique.granularity={granularity}", "technique.group_size=16", "student=4L",
                       "student.init_from=finetuned", "trainer.max_epochs=2")
    m = results["metrics"]
    student_dir = tiny_setup[0] / "outputs" / "runs" / name / "student"
    model = load_student(student_dir)
    layers = [mod for mod in model.modules() if isinstance(mod, QuantizedLinear)]
    assert len(layers) == ENCODER_LINEARS and {q.bits for q in layers} == {bits} and {q.kernel for q in layers} == {kernel}
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert all(int(q.int_codes().min()) >= lo and int(q.int_codes().max()) <= hi for q in layers)
    stored, fp32 = quantized_bytes(student_dir)
    assert stored / fp32 <= bytes_per_fp32_byte
    assert m["compress/weight_bits"] == bits
    assert m["train/optimizer_steps"] > 0 and m["test/acc"] > 0.4  # three balanced classes: chance is 1/3
    a, b = reloaded_logits(student_dir)
    assert torch.equal(a, b)


def test_round_to_nearest_saves_the_codes_qat_would_export_untrained(tiny_setup):
    results = run_tiny(tiny_setup, "rtn4", "technique=ptq_weight", "technique.bits=4", "technique.granularity=group",
                       "technique.group_size=16", "student=4L", "student.init_from=finetuned")
    m = results["metrics"]
    student_dir = tiny_setup[0] / "outputs" / "runs" / "rtn4" / "student"
    layers = [mod for mod in load_student(student_dir).modules() if isinstance(mod, QuantizedLinear)]
    assert len(layers) == ENCODER_LINEARS and {(q.bits, q.kernel) for q in layers} == {(4, "dequant")}
    assert m["train/optimizer_steps"] == 0 and m["compress/weight_bits"] == 4
    stored, fp32 = quantized_bytes(student_dir)
    assert stored / fp32 == pytest.approx((0.5 + 0.25) / 4)


def test_ternary_stores_twn_codes_two_bits_each(tiny_setup):
    results = run_tiny(tiny_setup, "ternary", "technique=ternary", "student=4L", "student.init_from=finetuned",
                       "trainer.max_epochs=2")
    student_dir = tiny_setup[0] / "outputs" / "runs" / "ternary" / "student"
    layers = [mod for mod in load_student(student_dir).modules() if isinstance(mod, QuantizedLinear)]
    assert len(layers) == ENCODER_LINEARS
    assert all(set(q.int_codes().unique().tolist()) <= {-1, 0, 1} for q in layers)
    assert all(q.scale.numel() == 1 for q in layers)  # one alpha per matrix (TWN, layer-wise)
    stored, fp32 = quantized_bytes(student_dir)
    assert stored * 14 <= fp32
    m = results["metrics"]
    assert m["test/acc"] > 0.4


def test_ternary_with_embeddings_trains_the_word_table_ternary_as_the_papers_2_2_8(tiny_setup):
    results = run_tiny(tiny_setup, "ternary_emb", "technique=ternary", "technique.targets=[encoder,embeddings]",
                       "student=4L", "student.init_from=finetuned", "trainer.max_epochs=2")
    m = results["metrics"]
    student_dir = tiny_setup[0] / "outputs" / "runs" / "ternary_emb" / "student"
    model = load_student(student_dir)
    tables = {path.rsplit(".", 1)[-1]: mod for path, mod in model.named_modules() if isinstance(mod, QuantizedEmbedding)}
    assert {name: t.bits for name, t in tables.items()} == {
        "word_embeddings": 2, "position_embeddings": 8, "token_type_embeddings": 8}
    word = tables["word_embeddings"]
    assert set(unpack(word.codes, 2, word.embedding_dim).unique().tolist()) <= {-1, 0, 1}
    assert word.scale.shape == (word.num_embeddings, 1)  # one alpha per row (TWN, row-wise)
    saved = load_file(str(student_dir / WEIGHTS_NAME))  # four codes to a byte: a quarter of an int8 table's bytes
    codes = next(t for key, t in saved.items() if key.endswith("word_embeddings.codes"))
    assert codes.dtype == torch.uint8 and codes.numel() == word.num_embeddings * -(-word.embedding_dim // 4)
    assert m["compress/ternary_embeddings"] == 1 and m["compress/quantized_embeddings"] == 3
    # The tiny model is mostly its word table: at 2 bits + a scale per row the artifact is under half the teacher's.
    assert m["eff/disk_bytes"] < 0.5 * m["teacher/eff/disk_bytes"]
    assert m["test/acc"] > 0.4
    a, b = reloaded_logits(student_dir)
    assert torch.equal(a, b)


def binary_layers(student_dir) -> list[BinaryLinear]:
    return [mod for mod in load_student(student_dir).modules() if isinstance(mod, BinaryLinear)]


def test_binary_bert_trains_ternary_then_splits_into_two_sign_planes(tiny_setup):
    results = run_tiny(tiny_setup, "binary", "technique=binary", "student=4L", "student.init_from=finetuned",
                       "technique.ternary_epochs=1", "technique.binary_epochs=1", "technique.ternary_lr=1e-3",
                       "technique.binary_lr=1e-3")
    run_dir = tiny_setup[0] / "outputs" / "runs" / "binary"
    # four stages, each with its own optimizer; the last one is the run's result
    done = {p.parent.name: json.loads(p.read_text())["steps"] for p in (run_dir / "stages").glob("*/done.json")}
    assert set(done) == {"ternary_intermediate", "ternary_prediction", "binary_intermediate"}
    m = results["metrics"]
    assert m["train/optimizer_steps"] == 4 * done["ternary_intermediate"] > 0
    layers = binary_layers(run_dir / "student")
    assert len(layers) == ENCODER_LINEARS == m["compress/quantized_layers"]
    assert {q.planes for q in layers} == {2} and m["compress/weight_bits"] == 2
    # two sign bits per weight: 16x smaller than fp32, less the two scales
    assert 15 < m["compress/quantized_weight_compression"] <= 16
    levels = {len(q.dense_weight().unique()) for q in layers}
    assert max(levels) == 4  # fine-tuning moved the two planes apart: ±α1 ± α2, no longer ternary
    a, b = reloaded_logits(run_dir / "student")
    assert torch.equal(a, b)
    assert m["test/acc"] > 0.4


def test_binary_without_splitting_binarizes_the_float_weights_directly(tiny_setup):
    results = run_tiny(tiny_setup, "binary_bwn", "technique=binary", "technique.split=false", "technique.kd=joint",
                       "student=4L", "student.init_from=finetuned", "technique.binary_epochs=1",
                       "technique.binary_lr=null")
    run_dir = tiny_setup[0] / "outputs" / "runs" / "binary_bwn"
    assert not (run_dir / "stages").exists()  # one stage: no ternary phase, joint KD
    layers = binary_layers(run_dir / "student")
    assert {q.planes for q in layers} == {1}
    assert {len(q.dense_weight().unique()) for q in layers} == {2}
    assert 30 < results["metrics"]["compress/quantized_weight_compression"] <= 32


def test_gobo_codes_the_encoder_to_three_bits_with_few_outliers(tiny_setup):
    results = run_tiny(tiny_setup, "gobo", "technique=gobo", "student=4L", "student.init_from=finetuned")
    m = results["metrics"]
    student_dir = tiny_setup[0] / "outputs" / "runs" / "gobo" / "student"
    layers = [mod for mod in load_student(student_dir).modules() if isinstance(mod, CodebookLinear)]
    assert len(layers) == ENCODER_LINEARS == m["compress/quantized_layers"]
    assert 0 < m["compress/outlier_fraction"] < 0.01  # a Gaussian's tails beyond log-density -4
    assert m["compress/quantized_weight_compression"] > 8  # 3 bits + outliers (8 bytes each) vs 32 bits
    assert m["eff/params"] == m["teacher/eff/params"] and m["train/optimizer_steps"] == 0
    a, b = reloaded_logits(student_dir)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["technique=qat", "technique.bits=3"], r"technique\.bits.*3.*one of \[8, 4, 2\]"),
     (["technique=qat", "technique.granularity=group", "technique.group_size=24"],
      r"technique\.group_size.*24.*divisor of student\.hidden_size = 32"),
     (["technique=qat", "technique.granularity=per_row"], r"technique\.granularity.*per_row"),
     (["technique=ptq_dynamic", "technique.backend=onnx"], r"technique\.backend.*onnx"),
     (["technique=gobo", "technique.bits=0"], r"technique\.bits.*0"),
     (["technique=ptq_weight", "technique.bits=16"], r"technique\.bits.*16"),
     (["technique=gobo", "technique.targets=[embeddings]"], r"technique\.targets.*Linears only"),
     (["technique=qat", "technique.bits=4", "technique.kernel=fbgemm"], r"technique\.kernel.*fbgemm"),
     (["technique=binary", "technique.kd=three_stage"], r"technique\.kd.*three_stage.*two_stage"),
     (["technique=binary", "technique.phase=ternary"], r"technique\.phase.*ternary.*\['both', 'binary'\]"),
     (["technique=binary", "technique.binary_lr=0"], r"technique\.binary_lr.*0.*> 0")],
)
def test_bad_quantization_settings_fail_in_one_line_before_training(tiny_setup, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        run_tiny(tiny_setup, "quant_bad", *overrides, "student=4L")
    assert "\n" not in str(err.value)


def test_quantizing_a_quantized_student_is_refused(tiny_setup):
    run_tiny(tiny_setup, "ptq_first", "technique=ptq_dynamic", "student=4L", "student.init_from=finetuned")
    first = tiny_setup[0] / "outputs" / "runs" / "ptq_first" / "student"
    with pytest.raises(ConfigError, match=r"student.*already quantized") as err:
        run_tiny(tiny_setup, "ptq_twice", "technique=qat", "student=path", f"student.path={first}")
    assert "\n" not in str(err.value)

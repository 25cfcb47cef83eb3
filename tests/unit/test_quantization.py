"""The quantization primitives: rounding error, the straight-through gradient, scale shapes, packing, agreement
with torchao's fake quantizer, the three kernels, TWN, and artifacts that reload exactly and are small."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from slimnlp.artifacts import WEIGHTS_NAME, load_student, save_student
from slimnlp.models.structure import prunable_modules
from slimnlp.models.surgery import replace_module
from slimnlp.modules.quantization import (
    FakeQuantLinear,
    FakeTernaryEmbedding,
    QuantizedEmbedding,
    QuantizedLinear,
    code_range,
    dequantize,
    fake_quantize,
    pack,
    quantize,
    scale_shape,
    symmetric_scale,
    twn_ternarize,
    unpack,
)


def weight(out: int = 24, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, width, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize(("granularity", "group_size"), [("per_tensor", None), ("per_channel", None), ("group", 16)])
def test_round_trip_errs_by_at_most_half_a_step(bits, granularity, group_size):
    w = weight()
    scale = symmetric_scale(w, bits, granularity, group_size)
    codes = quantize(w, scale, bits)
    step = scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1).expand_as(w)
    error = (dequantize(codes, scale) - w).abs()
    qmin, qmax = code_range(bits)
    inside = (w / step >= qmin) & (w / step <= qmax)  # the block maximum maps to qmax + 1/2 on the positive side
    assert bool((error[inside] <= step[inside] / 2 + 1e-7).all())
    assert bool((error <= step + 1e-7).all())  # the clipped positive extreme is still within one step
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax


def test_ste_is_the_identity_inside_the_range_and_zero_where_it_clips():
    x = torch.tensor([-3.0, -0.4, 0.0, 0.26, 0.9, 5.0], requires_grad=True)
    scale = torch.tensor(0.1)
    y = fake_quantize(x, scale, bits=4)  # codes -8..7: the range is [-0.8, 0.7]
    assert torch.allclose(y.detach(), torch.tensor([-0.8, -0.4, 0.0, 0.3, 0.7, 0.7]))
    y.backward(torch.arange(1.0, 7.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0, 0.0]


def test_scales_have_one_entry_per_block():
    assert scale_shape(24, 64, "per_tensor", None) == (1, 1)
    assert scale_shape(24, 64, "per_channel", None) == (24, 1)
    assert scale_shape(24, 64, "group", 16) == (24, 4)
    w = weight()
    assert tuple(symmetric_scale(w, 4, "group", 16).shape) == (24, 4)
    assert torch.allclose(symmetric_scale(w, 8, "per_channel"), w.abs().amax(1, keepdim=True) / 127.5)
    with pytest.raises(ValueError, match="group_size 24 does not divide"):
        symmetric_scale(w, 4, "group", 24)


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("width", [64, 30])  # 30: the last byte of each row is padded
def test_packed_codes_unpack_to_the_quantized_values_exactly(bits, width):
    w = weight(width=width)
    codes = quantize(w, symmetric_scale(w, bits, "per_channel"), bits)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (24, -(-width * bits // 8))
    assert torch.equal(unpack(packed, bits, width), codes)
    every = torch.arange(*code_range(bits)).repeat(24, 8)[:, :width].to(torch.int8)  # every code value
    assert torch.equal(unpack(pack(every, bits), bits, width), every)


@pytest.mark.parametrize(("bits", "dtype"), [(8, torch.int8), (4, torch.int4), (2, torch.int2)])
@pytest.mark.parametrize("group_size", [None, 16])
def test_the_codes_are_the_ones_torchao_fake_quantized_with(bits, dtype, group_size):
    """Conversion after torchao QAT recomputes the codes here: they must be the training's, ties included."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer

    if group_size:
        config = IntxFakeQuantizeConfig(dtype, group_size=group_size, is_symmetric=True)
    else:
        config = IntxFakeQuantizeConfig(dtype, "per_channel", is_symmetric=True)
    w = weight(width=64, seed=3)
    granularity = "group" if group_size else "per_channel"
    scale = symmetric_scale(w, bits, granularity, group_size)
    assert torch.equal(IntxFakeQuantizer(config)(w), dequantize(quantize(w, scale, bits), scale))


@pytest.mark.parametrize(
    ("kernel", "bits", "granularity", "group_size"),
    [("fbgemm", 8, "per_tensor", None), ("fbgemm", 8, "per_channel", None), ("torchao", 8, "per_channel", None),
     ("dequant", 4, "group", 16), ("dequant", 2, "group", 16)],
)
def test_every_kernel_computes_the_quantized_linear(kernel, bits, granularity, group_size):
    torch.manual_seed(0)
    linear = nn.Linear(64, 24)
    q = QuantizedLinear.from_linear(linear, bits=bits, granularity=granularity, group_size=group_size, kernel=kernel)
    x = torch.randn(3, 5, 64)
    exact = nn.functional.linear(x, q.dense_weight(), linear.bias)  # the quantized weights, float math
    with torch.no_grad():
        assert (q(x) - exact).abs().max() < 0.05  # int8 kernels also round the activations
        if bits == 8:
            assert (q(x) - linear(x)).abs().max() < 0.05
    if kernel == "dequant":
        assert torch.allclose(q(x), exact, atol=1e-6)


def test_twn_keeps_the_large_weights_with_their_mean_magnitude():
    w = torch.tensor([[0.1, -0.9, 0.0, 0.5], [-0.05, 0.2, -0.6, 0.02]])
    codes, alpha = twn_ternarize(w)
    assert alpha.shape == (1, 1)  # one α for the matrix (TernaryBERT's Linears)
    delta = 0.7 * w.abs().mean()
    assert codes.tolist() == (torch.sign(w) * (w.abs() > delta)).tolist()
    assert float(alpha) == pytest.approx(float(w.abs()[w.abs() > delta].mean()))


def test_row_wise_twn_has_one_threshold_and_alpha_per_row_as_ternarybert_embeddings():
    w = torch.tensor([[0.1, -0.9, 0.0, 0.5], [-0.05, 0.2, -0.6, 0.02], [0.0, 0.0, 0.0, 0.0]])
    codes, alpha = twn_ternarize(w, per_row=True)
    assert alpha.shape == (3, 1)
    for row in range(2):  # the reference's TwnQuantizer(layerwise=False): Δ = 0.7·mean|w_r|, α = mean kept |w_r|
        kept = w[row].abs() > 0.7 * w[row].abs().mean()
        assert codes[row].tolist() == (torch.sign(w[row]) * kept).tolist()
        assert float(alpha[row]) == pytest.approx(float(w[row].abs()[kept].mean()))
    assert codes[2].abs().sum() == 0 and torch.isfinite(alpha).all()  # an all-zero row (padding) stays zero


def test_a_ternary_embedding_trains_its_table_and_exports_the_rows_it_computed():
    table = nn.Embedding(50, 12, padding_idx=0)
    fake = FakeTernaryEmbedding.from_embedding(table)
    assert fake.weight is table.weight
    ids = torch.tensor([[3, 7, 0], [7, 49, 3]])
    out = fake(ids)
    codes, alpha = twn_ternarize(table.weight, per_row=True)
    assert torch.equal(out, (codes.float() * alpha)[ids])  # looked-up rows ternarized = the whole table's rows
    out.pow(2).sum().backward()  # straight-through: the gradient reaches the latent rows that were looked up
    grad_rows = table.weight.grad.abs().sum(dim=1)
    assert bool(grad_rows[[3, 7, 49]].gt(0).all()) and float(grad_rows[[1, 2, 0]].sum()) == 0.0
    exported = fake.export()
    assert exported.bits == 2 and exported.stored_bytes() == 50 * 3 + 50 * 4  # 12 codes in 3 bytes + α per row
    with torch.no_grad():
        assert torch.equal(exported(ids), out)


@pytest.mark.parametrize("bits", [8, 2])
def test_a_quantized_table_saves_its_codes_and_reloads_to_the_same_lookups(tmp_path, bits):
    model = tiny_bert()
    word = model.bert.embeddings.word_embeddings
    table = QuantizedEmbedding.from_embedding(word) if bits == 8 else FakeTernaryEmbedding.from_embedding(word).export()
    replace_module(model, "bert.embeddings.word_embeddings", table)
    ids = torch.randint(0, 200, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    folder = save_student(model, tmp_path / "q")
    from safetensors.torch import load_file

    codes = load_file(str(folder / WEIGHTS_NAME))["bert.embeddings.word_embeddings.codes"]
    assert codes.numel() * codes.element_size() * 32 == 4 * 200 * 32 * bits  # bits per weight exactly
    with torch.no_grad():
        assert torch.equal(load_student(folder)(input_ids=ids).logits, before)


def test_fake_quant_linear_trains_the_wrapped_parameters():
    linear = nn.Linear(16, 8)
    fq = FakeQuantLinear.from_linear(linear, bits=4, granularity="per_tensor", activation_bits=None)
    assert fq.weight is linear.weight
    out = fq(torch.randn(2, 16)).sum()
    out.backward()
    assert linear.weight.grad is not None and bool(linear.weight.grad.abs().sum() > 0)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, max_position_embeddings=32)
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize(
    ("kernel", "bits", "granularity"),
    [("fbgemm", 8, "per_channel"), ("torchao", 8, "per_channel"), ("dequant", 4, "group"), ("dequant", 2, "group")],
)
def test_a_quantized_bert_saves_small_and_reloads_to_the_same_logits(tmp_path, kernel, bits, granularity):
    model = tiny_bert()
    for path, linear in prunable_modules(model, ["encoder"]):
        replace_module(model, path, QuantizedLinear.from_linear(
            linear, bits=bits, granularity=granularity, group_size=16 if granularity == "group" else None,
            kernel=kernel, activation_bits=8 if kernel == "dequant" else None))
    ids = torch.randint(0, 200, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    folder = save_student(model, tmp_path / "q")
    reloaded = load_student(folder)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, before)
    from safetensors.torch import load_file

    state = load_file(str(folder / WEIGHTS_NAME))
    layers = [(p, m) for p, m in reloaded.named_modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 12
    codes = sum(state[f"{p}.codes"].numel() * state[f"{p}.codes"].element_size() for p, _ in layers)
    scales = sum(state[f"{p}.scale"].numel() * 4 for p, _ in layers)
    fp32 = sum(4 * m.num_weights for _, m in layers)
    assert codes * 32 == fp32 * bits  # bits per weight exactly: int8, or packed two / four to a byte
    assert fp32 / (codes + scales) >= (3.0 if bits == 8 else 1.0)
    if bits == 2:
        assert codes + scales <= fp32 / 14 + scales  # the bound: 1/14 of fp32 plus the scales


def test_gobo_keeps_gaussian_outliers_exact_and_codes_the_rest_to_eight_centroids(tmp_path):
    from slimnlp.modules.codebook import CodebookLinear, gaussian_outliers, pack_planes, unpack_planes

    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.normal_(0, 0.05)
        linear.weight[0, :3] = torch.tensor([0.6, -0.7, 0.8])  # far outside the Gaussian
    coded = CodebookLinear.from_linear(linear, bits=3, log_prob_threshold=-4.0)
    outliers = gaussian_outliers(linear.weight, -4.0)
    assert bool(outliers[0, :3].all()) and coded.outlier_positions.numel() == int(outliers.sum())
    decoded = coded.dense_weight()
    assert torch.equal(decoded[outliers], linear.weight.detach()[outliers])  # outliers kept in fp32
    assert decoded[~outliers].unique().numel() <= 8
    # each Gaussian weight went to its nearest centroid
    nearest = (linear.weight.detach()[~outliers][:, None] - coded.centroids[None]).abs().min(dim=1).values
    assert torch.allclose((decoded[~outliers] - linear.weight.detach()[~outliers]).abs(), nearest)
    index = torch.randint(0, 8, (1001,))
    assert torch.equal(unpack_planes(pack_planes(index, 3), 1001), index)
    assert coded.planes.numel() == 3 * 64 * 48 // 8  # three bits per weight
    model = tiny_bert()
    for path, lin in prunable_modules(model, ["encoder"]):
        replace_module(model, path, CodebookLinear.from_linear(lin))
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert torch.equal(load_student(save_student(model, tmp_path / "g"))(input_ids=ids).logits, before)

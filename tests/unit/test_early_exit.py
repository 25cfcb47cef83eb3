"""PABEE's early exit (Zhou et al. 2020): the full patience is the full model, a batch gives every example the
answer and exit layer it gets alone, exited examples really leave the batch, the training loss is the paper's
weighted average, the artifact reloads exactly, bad input fails in one line; all of it with the paper's [CLS]
pooling and with the mean pooling of the real tokens (SDPA's boolean mask and eager's additive one)."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from conftest import fit_steps, technique_kwargs, tiny_encoder
from slimnlp.artifacts import artifact_manifest, load_student, save_student
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.early_exit import (
    MaskedMeanPooler,
    add_internal_classifiers,
    exit_encoder,
    patience_weighted_loss,
)
from slimnlp.techniques.pabee import PABEE, EarlyExit

TEXTS = ["a great movie", "the worst day ever, really awful", "it is a table", "love it", "meh", "so so so bad",
         "what a wonderful and happy day it was", "the report is on the table", "broken phone", "best car ever",
         "sad", "it was a tuesday meeting and nothing else happened at all"]


@pytest.fixture()
def batch(tokenizer):
    encoded = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    encoded["labels"] = torch.arange(len(TEXTS)) % 3
    return encoded


def _run(model, batch):
    with torch.no_grad():
        logits = model.eval()(**model_inputs(batch)).logits
    return logits, exit_encoder(model).exit_layers.clone()


def _one_by_one(model, batch):
    logits, layers = [], []
    for i in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][i].sum())
        single = {k: batch[k][i : i + 1, :length] for k in model_inputs(batch)}
        got = _run(model, single)
        logits.append(got[0])
        layers.append(got[1])
    return torch.cat(logits), torch.cat(layers)


@pytest.mark.parametrize("patience", [3, 4])
def test_a_patience_of_depth_minus_one_or_more_is_the_full_model_with_its_last_classifier(tiny_bert, batch, patience):
    with torch.no_grad():
        full = tiny_bert(**model_inputs(batch), output_hidden_states=True)
    add_internal_classifiers(tiny_bert, patience)
    logits, layers = _run(tiny_bert, batch)
    assert torch.equal(layers, torch.full((len(TEXTS),), 4))
    torch.testing.assert_close(logits, full.logits)  # the last internal classifier is the model's own head
    encoder = exit_encoder(tiny_bert)
    with torch.no_grad():
        last = encoder.classifiers.linears[-1](encoder.pooler(full.hidden_states[-1]))
    torch.testing.assert_close(logits, last)


def _bert(vocab_size: int, attention: str = "sdpa", **config) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3, **config)
    config._attn_implementation = attention
    return BertForSequenceClassification(config)


POOLINGS = [("cls", "sdpa"), ("mean", "sdpa"), ("mean", "eager")]  # the mask a mean pooler reads: bool, additive


@pytest.fixture(params=POOLINGS, ids=["-".join(p) for p in POOLINGS])
def varied_exits(tokenizer, request):
    """A random tiny BERT with patience 1, initialised wide (a 0.02 init pools every text to almost the same
    vector, so every internal classifier answers alike): examples leave at every depth (checked), so batching
    has something to get wrong."""
    pooling, attention = request.param
    model = _bert(tokenizer.vocab_size, attention, initializer_range=0.5)
    add_internal_classifiers(model, 1, pooling)
    return model


def test_the_mean_pooler_reads_the_mean_of_the_real_tokens_through_the_models_dense_and_tanh(tokenizer, batch):
    model = _bert(tokenizer.vocab_size, initializer_range=0.5)
    dense = model.bert.pooler.dense.weight.detach().clone()
    encoder = add_internal_classifiers(model, 3, "mean")  # patience 3 of 4 layers: the full model
    assert isinstance(encoder.pooler, MaskedMeanPooler) and model.bert.pooler is encoder.pooler
    assert torch.equal(encoder.pooler.dense.weight, dense)  # the model's pooler weights kept
    with torch.no_grad():
        out = model.eval()(**model_inputs(batch), output_hidden_states=True)
    last, mask = out.hidden_states[-1], batch["attention_mask"]
    assert (mask == 0).any()  # the batch is padded
    means = torch.stack([last[i, : int(mask[i].sum())].mean(0) for i in range(len(TEXTS))])
    expected = model.classifier.linears[-1](torch.tanh(encoder.pooler.dense(means)))
    torch.testing.assert_close(out.logits, expected)
    cls = model.classifier.linears[-1](torch.tanh(encoder.pooler.dense(last[:, 0])))
    assert not torch.allclose(out.logits, cls, atol=1e-3)
    with pytest.raises(ValueError, match="follows the encoder's last pass"):
        encoder.pooler(last[:2])  # a stale token mask is never applied to another batch


def test_a_batch_gives_every_example_the_answer_and_exit_layer_it_gets_alone(varied_exits, batch):
    model = varied_exits
    logits, layers = _run(model, batch)
    assert set(layers.tolist()) == {2, 3, 4}  # patience 1: layer 2 is the earliest exit; examples leave at each
    alone_logits, alone_layers = _one_by_one(model, batch)
    assert torch.equal(layers, alone_layers)
    torch.testing.assert_close(logits, alone_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), alone_logits.argmax(-1))


def test_exited_examples_leave_the_batch_so_later_layers_compute_only_the_rest(varied_exits, batch):
    model = varied_exits
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args, j=j: seen.append((j, args[0].shape[0])))
             for j, layer in enumerate(structure.encoder_layers(model), start=1)]
    _, layers = _run(model, batch)
    for hook in hooks:
        hook.remove()
    assert seen == [(j, int((layers >= j).sum())) for j in range(1, 5)]  # layer j runs the examples not yet out
    assert seen[-1][1] < len(TEXTS) and layers.float().mean() < 4


def test_classifiers_that_always_agree_exit_every_example_at_patience_plus_one(tiny_bert, batch):
    encoder = add_internal_classifiers(tiny_bert, 1)
    with torch.no_grad():
        for linear in encoder.classifiers.linears[:-1]:  # every internal classifier answers class 2
            linear.weight.zero_()
            linear.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, j=j: ran.append(j))
             for j, layer in enumerate(structure.encoder_layers(tiny_bert), start=1)]
    logits, layers = _run(tiny_bert, batch)
    for hook in hooks:
        hook.remove()
    assert ran == [1, 2] and torch.equal(layers, torch.full((len(TEXTS),), 2))  # layers 3 and 4 never ran
    assert torch.equal(logits, torch.tensor([[0.0, 0.0, 1.0]]).expand(len(TEXTS), 3))  # layer 2's classifier
    encoder.patience = 2
    assert torch.equal(_run(tiny_bert, batch)[1], torch.full((len(TEXTS),), 3))


def test_the_loss_is_the_layer_weighted_average_of_the_internal_cross_entropies():
    labels = torch.tensor([0, 1])
    logits = [
        torch.zeros(2, 3),  # CE = ln 3 for both
        torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]])),  # p(0) = 1/4, p(1) = 1/2
        torch.log(torch.tensor([[3.0, 1.0, 1.0], [3.0, 1.0, 1.0]])),  # p(0) = 3/5, p(1) = 1/5
    ]
    ce = [math.log(3), (math.log(4) + math.log(2)) / 2, (math.log(5 / 3) + math.log(5)) / 2]
    expected = (1 * ce[0] + 2 * ce[1] + 3 * ce[2]) / (1 + 2 + 3)
    assert patience_weighted_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def _pooled(pooling, h, mask):
    if pooling == "cls":
        return h[:, 0]
    return torch.stack([h[i, : int(mask[i].sum())].mean(0) for i in range(h.shape[0])])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_training_trains_every_layers_classifier_on_the_weighted_loss(tokenizer, batch, pooling):
    technique = PABEE(patience=2, exit_pooling=pooling, **technique_kwargs(
        _bert(tokenizer.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    technique.prepare()
    encoder = exit_encoder(technique.student)
    assert encoder.pooling == pooling
    technique.train()
    losses = technique.training_loss(batch)
    with torch.no_grad():
        hidden = technique.student(**model_inputs(batch), output_hidden_states=True).hidden_states[1:]
        per_layer = [linear(torch.tanh(encoder.pooler.dense(_pooled(pooling, h, batch["attention_mask"]))))
                     for linear, h in zip(encoder.classifiers.linears, hidden)]
    ce = [F.cross_entropy(logits, batch["labels"]).item() for logits in per_layer]
    assert losses["loss"].item() == pytest.approx(sum(j * c for j, c in enumerate(ce, 1)) / 10, rel=1e-5)
    assert [losses[f"train/ce_layer{j}"].item() for j in range(1, 5)] == pytest.approx(ce, rel=1e-5)
    before = [linear.weight.detach().clone() for linear in encoder.classifiers.linears]
    fit_steps(technique, batch, steps=1)
    assert all(not torch.equal(b, linear.weight) for b, linear in zip(before, encoder.classifiers.linears))


def test_the_artifact_reloads_to_the_same_logits_and_exits_and_takes_a_new_patience(varied_exits, batch, tmp_path):
    model = varied_exits
    logits, layers = _run(model, batch)
    manifest = artifact_manifest(model)
    assert manifest["replacements"]["bert.encoder"]["kind"] == "patience_exit_encoder"
    assert manifest["shared"] == {"bert.pooler": "bert.encoder.pooler", "classifier": "bert.encoder.classifiers"}
    save_student(model, tmp_path / "student")
    reloaded = load_student(tmp_path / "student", attn_implementation=model.config._attn_implementation)
    assert exit_encoder(reloaded).patience == 1
    assert exit_encoder(reloaded).pooling == exit_encoder(model).pooling
    assert reloaded.bert.pooler is exit_encoder(reloaded).pooler
    again, again_layers = _run(reloaded, batch)
    assert torch.equal(again, logits) and torch.equal(again_layers, layers)
    pooling = exit_encoder(model).pooling
    technique = EarlyExit(patience=4, exit_pooling=pooling, **technique_kwargs(reloaded))
    technique.prepare()
    assert torch.equal(_run(technique.student, batch)[1], torch.full((len(TEXTS),), 4))
    other = {"cls": "mean", "mean": "cls"}[pooling]
    with pytest.raises(ConfigError, match=rf"technique\.exit_pooling='{other}' .*saved student's pooling '{pooling}'"):
        EarlyExit(patience=2, exit_pooling=other, **technique_kwargs(reloaded)).prepare()


@pytest.mark.parametrize("patience", [0, -1, 1.5, True, "2", None])
def test_a_bad_patience_fails_in_one_line_naming_it(patience):
    for cls in (PABEE, EarlyExit):
        with pytest.raises(ConfigError, match=r"technique\.patience") as err:
            cls.check_hparams(patience=patience)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("pooling", ["max", "CLS", None, 1])
def test_a_bad_exit_pooling_fails_in_one_line_naming_it_and_the_choices(pooling):
    for cls in (PABEE, EarlyExit):
        if pooling is None and cls is EarlyExit:
            continue  # null: the saved student's pooling
        with pytest.raises(ConfigError, match=r"technique\.exit_pooling=.*cls(, | or )mean") as err:
            cls.check_hparams(patience=2, exit_pooling=pooling)
        assert "\n" not in str(err.value)


def test_a_patience_beyond_the_depth_another_architecture_or_a_plain_student_fails_in_one_line(
    tiny_bert, tokenizer
):
    with pytest.raises(ConfigError, match=r"technique\.patience=5 .*4 layers"):
        PABEE(patience=5, **technique_kwargs(tiny_bert))
    with pytest.raises(ConfigError, match=r"student\.model_type='mpnet'.*bert"):
        PABEE(patience=2, **technique_kwargs(tiny_encoder("mpnet", tokenizer.vocab_size)))
    with pytest.raises(ConfigError, match=r"student\.path.*technique=pabee") as err:
        EarlyExit(patience=2, **technique_kwargs(tiny_bert)).prepare()
    assert "\n" not in str(err.value)


def test_modules_replaced_inside_the_wrapped_layers_stay_described_and_reload(varied_exits, batch, tmp_path):
    from slimnlp.modules.factorized import FactorizedLinear

    attention = structure.encoder_layers(varied_exits)[1].attention.self
    attention.query = FactorizedLinear.from_linear(attention.query, rank=4)
    logits, layers = _run(varied_exits, batch)
    replacements = artifact_manifest(varied_exits)["replacements"]
    assert replacements["bert.encoder.layer.1.attention.self.query"]["kind"] == "factorized_linear"
    save_student(varied_exits, tmp_path / "student")
    reloaded = load_student(tmp_path / "student", attn_implementation=varied_exits.config._attn_implementation)
    assert isinstance(structure.encoder_layers(reloaded)[1].attention.self.query, FactorizedLinear)
    again, again_layers = _run(reloaded, batch)
    assert torch.equal(again, logits) and torch.equal(again_layers, layers)

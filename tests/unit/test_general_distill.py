"""General distillation (TinyBERT's first stage, MiniLMv2's relations) and its unlabelled text corpus: the losses
are zero when the student is the teacher and positive otherwise, a training step lowers them, the corpus keeps
only the texts of a labelled source's training split (no labels, no validation or test texts), mixes and holds
out as configured and refuses an empty corpus in one line; the saved encoder reloads as a plain HF model."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from transformers import AutoModel, BertConfig, BertForSequenceClassification

from conftest import fit_steps, technique_kwargs
from slimnlp.artifacts import load_encoder, save_encoder
from slimnlp.data.sources import LocalFiles
from slimnlp.data.splits import make_splits
from slimnlp.data.text_corpus import TextCorpusDataModule, TextFiles
from slimnlp.errors import ConfigError
from slimnlp.techniques.general_distill import GeneralDistillation

TEXTS = ["a great movie", "the worst day ever, really awful", "it is a table", "love it", "so so so bad",
         "what a wonderful and happy day it was", "the report is on the table", "broken phone"]


@pytest.fixture()
def batch(tokenizer):
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))  # no labels: unlabelled text


def _student(vocab_size: int, width: int = 16, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(1)
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * width, max_position_embeddings=128, num_labels=2))


@pytest.mark.parametrize("objective", ["tinybert", "minilm_v2"])
def test_the_general_losses_are_zero_when_the_student_is_the_teacher(tiny_bert, batch, objective):
    technique = GeneralDistillation(objective=objective, relation_heads=4,
                                    **technique_kwargs(copy.deepcopy(tiny_bert).eval(), tiny_bert, num_labels=2))
    technique.eval()
    if objective == "tinybert":
        assert technique.proj is None  # equal widths: no projection
    with torch.no_grad():
        losses = technique.distillation_losses(batch)
    assert set(losses) == {"loss", *(f"loss/{p}" for p in (("emb", "hidden", "attn") if objective == "tinybert"
                                                             else ("qq", "kk", "vv")))}
    for name, value in losses.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


@pytest.mark.parametrize("objective", ["tinybert", "minilm_v2"])
def test_a_narrower_student_has_positive_losses_that_training_steps_lower(tiny_bert, tokenizer, batch, objective):
    technique = GeneralDistillation(objective=objective, relation_heads=4,
                                    **technique_kwargs(_student(tokenizer.vocab_size), tiny_bert, num_labels=2, lr=3e-3))
    if objective == "tinybert":
        assert tuple(technique.proj.weight.shape) == (32, 16)  # W: d_S -> d_T, trained with the student
    technique.eval()
    with torch.no_grad():
        before = technique.distillation_losses(batch)["loss"].item()
    assert before > 0
    fit_steps(technique, batch, steps=20)
    technique.eval()
    with torch.no_grad():
        after = technique.distillation_losses(batch)["loss"].item()
    assert after < 0.8 * before


@pytest.mark.parametrize("hparams, pattern", [
    ({"objective": "mlm"}, r"technique\.objective='mlm' .*tinybert or minilm_v2"),
    ({"objective": "minilm_v2", "layer_map": [0, 1]}, r"technique\.layer_map=\[0, 1\] .*null"),
    ({"objective": "minilm_v2", "relation_heads": 0}, r"technique\.relation_heads=0"),
    ({"lr": -1.0}, r"technique\.lr=-1\.0"),
])
def test_bad_hyperparameters_fail_in_one_line(hparams, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        GeneralDistillation.check_hparams(**hparams)
    assert "\n" not in str(err.value)


def _labelled_csv(path, n: int = 60) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            writer.writerow([f"text number {i}", ["neg", "pos", "neu"][i % 3]])
    return str(path)


def test_a_labelled_source_gives_only_its_training_texts_without_labels(tokenizer, tmp_path):
    source = LocalFiles(_labelled_csv(tmp_path / "labelled.csv"))
    dm = TextCorpusDataModule(tokenizer, corpora=[source], val_samples=6, max_length=16)
    dm.setup()
    splits, _ = make_splits(source.load(), 0.1, 0.1, 42)  # as data=local splits it
    decoded = {tokenizer.decode(ids, skip_special_tokens=True)
               for name in ("train", "validation") for ids in dm.datasets[name]["input_ids"]}
    assert decoded == set(splits["train"]["text"])  # the task's validation and test texts never enter
    assert len(dm.datasets["validation"]) == 6 and len(dm.datasets["train"]) == len(splits["train"]) - 6
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}  # labels ignored
    assert batch["input_ids"].shape[1] < 16  # padded per batch, not to max_length


def test_text_files_read_lines_tables_and_folders_and_are_deduplicated(tokenizer, tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\nsecond line\nfirst line\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a whole\narticle\n")
    (tmp_path / "docs" / "b.txt").write_text("  \n")  # blank: skipped
    assert TextFiles(tmp_path / "lines.txt").texts() == ["first line", "second line", "first line"]
    assert TextFiles(tmp_path / "docs").texts() == ["a whole\narticle"]
    table = _labelled_csv(tmp_path / "table.csv", n=6)
    assert TextFiles(table).texts() == [f"text number {i}" for i in range(6)]
    files = [str(tmp_path / "lines.txt"), str(tmp_path / "docs"), table]
    dm = TextCorpusDataModule(tokenizer, files=files, val_samples=2)
    dm.setup()
    assert dm.split_summary()["distinct_texts"] == 2 + 1 + 6  # "first line" once
    assert sum(dm.split_summary()["subset_sizes"].values()) == 9


def test_probabilities_mix_the_sources_and_the_held_out_slice_is_fixed_by_the_seed(tokenizer, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(f"big text {i}" for i in range(200)))
    small = tmp_path / "small.txt"
    small.write_text("\n".join(f"small text {i}" for i in range(20)))
    concat = TextCorpusDataModule(tokenizer, files=[str(big), str(small)], val_samples=10)
    concat.setup()
    mixed = TextCorpusDataModule(tokenizer, files=[str(big), str(small)], val_samples=10, probabilities=[1, 1])
    mixed.setup()

    def share_small(dm):
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in dm.datasets["train"]["input_ids"]]
        return sum(t.startswith("small") for t in texts) / len(texts)

    assert share_small(concat) == pytest.approx(20 / 220, abs=0.05)
    assert share_small(mixed) == pytest.approx(0.5, abs=0.1)  # the small source repeats
    assert torch.equal(concat.datasets["validation"]["input_ids"][0], mixed.datasets["validation"]["input_ids"][0])
    other = TextCorpusDataModule(tokenizer, files=[str(big), str(small)], val_samples=10, seed=7)
    other.setup()
    assert [r.tolist() for r in other.datasets["validation"]["input_ids"]] != [
        r.tolist() for r in concat.datasets["validation"]["input_ids"]]


@pytest.mark.parametrize("kwargs, pattern", [
    ({}, r"data\.corpora=\[\] .*data options .*or data\.files"),
    ({"files": ["EMPTY"]}, r"data\.corpora=.*at least one non-empty text"),
    ({"files": ["MISSING"]}, r"data\.files=.*no such file"),
    ({"files": ["SMALL"], "val_samples": 3}, r"data\.val_samples=3 .*3 distinct texts"),
    ({"files": ["SMALL"], "probabilities": [1, 2]}, r"data\.probabilities=\[1, 2\] .*1 positive weights"),
])
def test_an_empty_or_bad_corpus_fails_in_one_line(tokenizer, tmp_path, kwargs, pattern):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "small.txt").write_text("one\ntwo\nthree\n")
    paths = {"EMPTY": tmp_path / "empty.txt", "MISSING": tmp_path / "nope.txt", "SMALL": tmp_path / "small.txt"}
    if "files" in kwargs:
        kwargs = {**kwargs, "files": [str(paths[f]) for f in kwargs["files"]]}
    with pytest.raises(ConfigError, match=pattern) as err:
        TextCorpusDataModule(tokenizer, **kwargs).setup()
    assert "\n" not in str(err.value)


def test_the_saved_encoder_is_a_plain_hf_checkpoint_with_the_same_hidden_states(tiny_bert, tokenizer, batch, tmp_path):
    folder = save_encoder(tiny_bert, tmp_path / "student", tokenizer)
    assert not (folder / "slimnlp_artifact.json").exists()
    reloaded, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(reloaded).__name__ == "BertModel" and not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        expected = tiny_bert.eval().bert(**batch).last_hidden_state
        torch.testing.assert_close(reloaded.eval()(**batch).last_hidden_state, expected)
        torch.testing.assert_close(load_encoder(folder)(**batch).last_hidden_state, expected)

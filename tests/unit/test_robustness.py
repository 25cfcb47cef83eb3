"""Seeded perturbations, the embedding-neighbour table, attack success rate, OOD label remapping, and both
evaluations end to end on real tiny datamodules."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers.modeling_outputs import SequenceClassifierOutput

from slimnlp.data import LocalFiles, TextClassificationDataModule
from slimnlp.errors import ConfigError
from slimnlp.metrics.ood import ood_label_map, ood_metrics
from slimnlp.metrics.robustness import (
    QWERTY_NEIGHBOURS,
    WORD_RE,
    Typo,
    WordSubstitution,
    _encode,
    attack_scores,
    build_neighbour_table,
    example_rng,
    neighbour_table_from_model,
    perturb_texts,
    predict,
    robustness_metrics,
    robustness_subset,
    stable_seed,
    typo_word,
)

LABELS = ["negative", "neutral", "positive"]  # LocalFiles sorts string labels
CUES = {
    "negative": ["awful", "terrible", "hate", "broken", "worst", "sad"],
    "neutral": ["table", "tuesday", "report", "meeting", "paper", "train"],
    "positive": ["great", "love", "wonderful", "happy", "best", "nice"],
}
FILLER = ["the", "this", "phone", "really", "movie", "kitchen", "window", "garden", "morning", "street"]


def sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label): two cue words of the label among five filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(FILLER, 5) + rng.sample(CUES[label], 2)
        rng.shuffle(words)
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


def osa_distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions counted as one edit (optimal string alignment)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


TEXTS = [t for t, _ in sentences(40)] + ["123 456 !!", "a to be", "", "Don't, it's ok."]


# ---- determinism -----------------------------------------------------------------------------------
def test_stable_seed_is_fixed_across_processes():
    # a literal: a salted hash() would give another number in every process
    assert stable_seed("slimnlp.robustness", 0, "typo", 3, "text") == 2442671455077263409
    assert example_rng(0, "typo", 3).random() == example_rng(0, "typo", 3).random()
    assert example_rng(0, "typo", 3).random() != example_rng(0, "typo", 4).random()
    assert example_rng(np.int64(0), "typo", np.int64(3)).random() == example_rng(0, "typo", 3).random()
    assert robustness_subset(50, 5, seed=np.int64(1)) == robustness_subset(50, 5, seed=1)


def test_subset_is_a_seeded_permutation_prefix():
    a = robustness_subset(100, 10, seed=1)
    assert a == robustness_subset(100, 10, seed=1) == robustness_subset(100, 30, seed=1)[:10]
    assert len(set(a)) == 10 and all(0 <= i < 100 for i in a)
    assert a != robustness_subset(100, 10, seed=2) and a != list(range(10))
    assert sorted(robustness_subset(7, 50, seed=1)) == list(range(7))
    with pytest.raises(ConfigError, match="num_examples"):
        robustness_subset(7, 0, seed=1)


@pytest.mark.parametrize("attack", [Typo(rate=0.2), "word"])
def test_attack_is_a_function_of_seed_name_and_index(attack, word_attack):
    attack = word_attack if attack == "word" else attack
    indices = list(range(len(TEXTS)))
    full = perturb_texts(attack, TEXTS, indices, seed=0)
    assert full == perturb_texts(attack, TEXTS, indices, seed=0)
    # a subset, in another order, gets the same text per example
    picked = [7, 2, 30]
    assert perturb_texts(attack, [TEXTS[i] for i in picked], picked, seed=0) == [full[i] for i in picked]
    other_seed = perturb_texts(attack, TEXTS, indices, seed=1)
    other_name = perturb_texts(attack, TEXTS, indices, seed=0, name="other")
    assert sum(a != b for a, b in zip(full, other_seed)) >= 30
    assert sum(a != b for a, b in zip(full, other_name)) >= 30


# ---- typos -----------------------------------------------------------------------------------------
def test_keyboard_table_is_qwerty_adjacency():
    assert set(QWERTY_NEIGHBOURS) == set("abcdefghijklmnopqrstuvwxyz")
    assert set(QWERTY_NEIGHBOURS["g"]) == set("fhtyvb")
    assert set(QWERTY_NEIGHBOURS["q"]) == set("wa")
    assert set(QWERTY_NEIGHBOURS["m"]) == set("njk")
    assert all(a in QWERTY_NEIGHBOURS[b] for a, near in QWERTY_NEIGHBOURS.items() for b in near)


def test_each_typo_op_is_one_edit_of_its_kind():
    for seed in range(50):
        rng = random.Random(seed)
        word = rng.choice(["keyboard", "Typing", "WORDS", "aaa", "letter"])
        sub = typo_word(word, "keyboard", rng)
        (i,) = [j for j in range(len(word)) if sub[j] != word[j]]
        assert sub[i].lower() in QWERTY_NEIGHBOURS[word[i].lower()] and sub[i].isupper() == word[i].isupper()
        swapped = typo_word(word, "swap", rng)
        assert osa_distance(word, swapped) == 1 and len(swapped) == len(word)
        if word != "aaa":  # nothing to swap there: it falls back to a keyboard substitution
            assert sorted(swapped) == sorted(word)
        deleted, inserted = typo_word(word, "delete", rng), typo_word(word, "insert", rng)
        assert len(deleted) == len(word) - 1 and osa_distance(word, deleted) == 1
        assert len(inserted) == len(word) + 1 and osa_distance(word, inserted) == 1
        assert inserted.isalpha() and (inserted.isupper() or not word.isupper())


def test_typo_changes_the_chosen_words_only():
    rate = 0.2
    new = perturb_texts(Typo(rate=rate), TEXTS, list(range(len(TEXTS))), seed=0)
    for old, text in zip(TEXTS, new):
        candidates = [m for m in WORD_RE.finditer(old) if len(m.group()) >= 3]
        expected = min(len(candidates), max(1, round(rate * len(candidates)))) if candidates else 0
        if not expected:  # numbers, short words, contractions
            assert text == old
            continue
        assert text != old and 1 <= osa_distance(old, text) <= expected
        assert len(text.split()) == len(old.split())
        assert sum(a != b for a, b in zip(old.split(), text.split())) == expected
    assert new[-4:-1] == TEXTS[-4:-1]  # "123 456 !!", "a to be", ""
    one_word = perturb_texts(Typo(rate=0.1), ["keyboard"] * 20, list(range(20)), seed=3)
    assert all(osa_distance("keyboard", t) == 1 for t in one_word) and len(set(one_word)) > 5


def test_rate_is_checked():
    with pytest.raises(ConfigError, match="rate"):
        Typo(rate=0)
    with pytest.raises(ConfigError, match="rate"):
        Typo(rate=1.5)


# ---- embedding neighbours --------------------------------------------------------------------------
def hand_table(k: int = 1):
    vocab = {
        "[CLS]": 0, "good": 1, "goods": 2, "the": 3, "##ood": 4, "great": 5,
        "bad": 6, "awful": 7, "table": 8, "ok": 9, "Good": 10,
    }  # fmt: skip
    emb = torch.tensor(
        [
            [1.0, 0.0, 0.001],  # [CLS]: special (and not alphabetic)
            [1.0, 0.0, 0.0],  # good
            [1.0, 0.01, 0.0],  # goods: its plural, not a neighbour
            [1.0, 0.02, 0.0],  # the: a stopword
            [1.0, 0.03, 0.0],  # ##ood: a word piece
            [0.9, 0.3, 0.0],  # great: good's nearest real neighbour
            [0.0, 1.0, 0.0],  # bad
            [0.0, 0.95, 0.1],  # awful
            [0.0, 0.0, 1.0],  # table
            [1.0, 0.0, 0.0],  # ok: too short
            [1.0, 0.001, 0.0],  # Good: a case variant of good
        ]
    )
    return build_neighbour_table(emb, vocab, k=k, special_tokens=["[CLS]"], lowercase=True)


def test_neighbour_table_on_a_hand_made_matrix():
    table = hand_table(k=1)
    assert set(table.neighbours) == {"good", "goods", "great", "bad", "awful", "table"}
    assert table.lookup("good") == ("great",)
    assert table.lookup("GOOD") == ("great",)  # uncased: looked up lowercased
    assert table.lookup("goods") == ("great",)  # good is its singular, the a stopword
    assert table.lookup("bad") == ("awful",) and table.lookup("awful") == ("bad",)
    assert table.lookup("table") == ("awful",)
    assert table.lookup("the") == () and table.lookup("ood") == () and table.lookup("unknown") == ()
    assert hand_table(k=3).lookup("good")[0] == "great" and len(hand_table(k=3).lookup("good")) == 3


def test_neighbour_table_chunks_do_not_change_it():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 8, generator=g)
    letters = "bcdfghjklmnpqrstvwxz"
    vocab = {"".join(letters[(i // 20**p) % 20] for p in range(3)) + "ox": i for i in range(300)}
    whole = build_neighbour_table(emb, vocab, k=5, chunk_size=1000)
    assert whole == build_neighbour_table(emb, vocab, k=5, chunk_size=7)
    assert len(whole) == 300 and all(len(v) == 5 for v in whole.neighbours.values())
    # brute force for one word
    unit = torch.nn.functional.normalize(emb, dim=1)
    sims = unit @ unit[42]
    sims[42] = -2
    names = list(vocab)
    assert whole.lookup(names[42]) == tuple(names[j] for j in sims.topk(5).indices.tolist())


def test_word_substitution_replaces_content_words_with_neighbours():
    table = hand_table(k=1)
    attack = WordSubstitution(table, rate=1.0)
    rng = random.Random(0)
    assert attack.perturb("The good table, Good!", rng) == "The great awful, Great!"
    assert attack.perturb("THE BAD ok unknownword.", rng) == "THE AWFUL ok unknownword."
    assert attack.perturb("the ok nothing", rng) == "the ok nothing"  # no word in the table
    half = WordSubstitution(table, rate=0.5).perturb("good bad table awful", random.Random(1))
    assert sum(a != b for a, b in zip(half.split(), ["good", "bad", "table", "awful"])) == 2


@pytest.fixture(scope="module")
def tokenizer_table(tokenizer):
    """A neighbour table over a small slice of the real vocabulary, from a tiny model's embeddings."""
    torch.manual_seed(0)
    emb = nn.Embedding(tokenizer.vocab_size, 16)
    words = sorted({w for cues in CUES.values() for w in cues} | set(FILLER))
    vocab = {w: tokenizer.vocab[w] for w in words} | {
        "[CLS]": tokenizer.cls_token_id,
        "##s": tokenizer.vocab["##s"],
    }
    return build_neighbour_table(emb.weight, vocab, k=3, special_tokens=tokenizer.all_special_tokens)


@pytest.fixture(scope="module")
def word_attack(tokenizer_table):
    return WordSubstitution(tokenizer_table, rate=0.3)


def test_neighbour_table_from_a_model(tiny_bert, tokenizer):
    small = {w: tokenizer.vocab[w] for w in ["good", "great", "bad", "the", "##ing", "[CLS]", "movie"]}

    class Tok:  # the tokenizer interface, on a slice of the vocabulary (the full one takes seconds)
        do_lower_case = True
        all_special_tokens = tokenizer.all_special_tokens

        def get_vocab(self):
            return small

    table = neighbour_table_from_model(tiny_bert, Tok(), k=2)
    assert set(table.neighbours) == {"good", "great", "bad", "movie"} and table.lowercase
    assert all(len(v) == 2 and w not in v for w, v in table.neighbours.items())


# ---- attack success rate ---------------------------------------------------------------------------
def test_success_rate_is_the_hand_count():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    clean = torch.tensor([0, 1, 0, 0, 2, 2])  # right on 0, 1, 3, 5
    perturbed = torch.tensor([1, 1, 2, 2, 2, 2])  # flips 0 and 3; 2 turns right
    scores = attack_scores(labels, clean, perturbed)
    assert scores == {"acc": 3 / 6, "clean_acc": 4 / 6, "success_rate": 2 / 4}
    # nothing right when clean: nothing to attack, 0.0 as in TextAttack
    none_right = attack_scores(labels, (labels + 1) % 3, labels)
    assert none_right == {"acc": 1.0, "clean_acc": 0.0, "success_rate": 0.0}


# ---- OOD labels ------------------------------------------------------------------------------------
def test_ood_labels_are_matched_by_name():
    assert ood_label_map(LABELS, ["positive", "negative", "neutral"], "drugs") == [2, 0, 1]
    assert ood_label_map(LABELS, ["positive", "negative"], "drugs") == [2, 0]


def test_an_unknown_ood_label_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        ood_label_map(LABELS, ["positive", "mixed"], "drugs")
    message = str(err.value)
    assert err.value.key == "eval.ood" and err.value.value == "drugs"
    assert "['positive', 'mixed']" in message and str(LABELS) in message and "['mixed']" in message


# ---- end to end on real datamodules ----------------------------------------------------------------
class CueModel(nn.Module):
    """Predicts the class whose cue words' token ids occur most often (class 0 when none does): right on
    every clean text, wrong once a perturbation removes both cues."""

    def __init__(self, tokenizer, label_names: list[str]) -> None:
        super().__init__()
        ids = [[tokenizer.vocab[w] for w in CUES[name]] for name in label_names]
        self.register_buffer("cues", torch.tensor(ids))

    def counts(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids[:, None, None, :] == self.cues[None, :, :, None]).sum(dim=(2, 3)).float()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> SequenceClassifierOutput:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return SequenceClassifierOutput(logits=self.counts(input_ids * mask))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def dms(tmp_path_factory, tokenizer):
    """The run's datamodule and an OOD one whose labels are in another order."""
    root = tmp_path_factory.mktemp("robust")
    kw = {"max_length": 16, "eval_batch_size": 8, "val_fraction": 0.1, "test_fraction": 0.4}
    source = LocalFiles(str(write_csv(root / "run.csv", sentences(90, seed=1))))
    dm = TextClassificationDataModule(source, tokenizer, "robust", cache_dir=root / "cache", **kw)
    ood_rows = [(f"My doctor said: {t.lower()}", label) for t, label in sentences(60, seed=2)]
    order = ["positive", "negative", "neutral"]
    ood_source = LocalFiles(str(write_csv(root / "ood.csv", ood_rows)), label_names=order)
    ood = TextClassificationDataModule(ood_source, tokenizer, "robust_ood", cache_dir=root / "cache", **kw)
    for d in (dm, ood):
        d.prepare_data()
        d.setup()
    assert dm.label_names == LABELS and ood.label_names == order
    return dm, ood


def expected_acc(model: CueModel, tokenizer, texts: list[str], labels: list[int]) -> float:
    """The cue model's accuracy worked out per text, without batching, padding or the datamodule."""
    right = 0
    for text, label in zip(texts, labels):
        ids = torch.tensor([tokenizer(text, truncation=True, max_length=16)["input_ids"]])
        right += int(model.counts(ids).argmax(-1).item() == label)
    return right / len(texts)


def test_robustness_metrics_end_to_end(dms, tokenizer, tiny_bert, word_attack):
    dm, _ = dms
    student = CueModel(tokenizer, dm.label_names)
    attacks = {"typo": Typo(rate=0.5), "word": WordSubstitution(word_attack.table, rate=0.5)}
    models = {"student": student, "teacher": tiny_bert}
    before = dm.datasets["test"].with_format(None)[:]
    m = robustness_metrics(models, dm, attacks, num_examples=20, seed=7)
    assert m == robustness_metrics(models, dm, attacks, num_examples=20, seed=7)

    keys = {"acc", "clean_acc", "success_rate", "changed", "changed_inputs"}
    assert set(m) == {f"{p}robust/{a}/{k}" for p in ("", "teacher/") for a in attacks for k in keys} | {
        "robust/examples",
        "teacher/robust/examples",
    }
    assert m["robust/examples"] == m["teacher/robust/examples"] == 20.0

    raw = dm.datasets["test"].with_format(None)
    indices = robustness_subset(len(raw), 20, seed=7)
    texts = [raw[i]["text"] for i in indices]
    labels = [raw[i]["labels"] for i in indices]
    for name, attack in attacks.items():
        new = perturb_texts(attack, texts, indices, seed=7, name=name)
        assert m[f"robust/{name}/changed"] == sum(a != b for a, b in zip(texts, new)) / 20 >= 0.5
        assert m[f"robust/{name}/clean_acc"] == 1.0
        assert m[f"robust/{name}/acc"] == pytest.approx(expected_acc(student, tokenizer, new, labels))
        assert m[f"robust/{name}/success_rate"] == pytest.approx(1 - m[f"robust/{name}/acc"])
        assert m[f"teacher/robust/{name}/changed"] == m[f"robust/{name}/changed"]
    assert m["robust/typo/success_rate"] > 0  # rate 0.5 hits both cues of some texts

    # the clean pass tokenizes as the datamodule did, and predicts as on its cached inputs in the same batches
    cached = dm.datasets["test"].with_format(None).select(indices)["input_ids"]
    assert [f["input_ids"] for f in _encode(dm.tokenizer, dm.max_length, texts, None)] == cached
    loader = DataLoader(dm.datasets["test"].select(indices), batch_size=8, collate_fn=dm.collate)
    teacher_preds = predict(tiny_bert, loader)
    assert m["teacher/robust/typo/clean_acc"] == (teacher_preds == torch.tensor(labels)).sum().item() / 20
    # the split itself (texts, labels) is untouched
    assert dm.datasets["test"].with_format(None)[:] == before


def test_robustness_metrics_restores_train_mode_and_checks_names(dms, tokenizer, tiny_bert):
    dm, _ = dms
    tiny_bert.train()
    robustness_metrics({"teacher": tiny_bert}, dm, {"typo": Typo()}, num_examples=4, seed=0)
    assert tiny_bert.training
    with pytest.raises(ConfigError, match="attacks"):
        robustness_metrics({"teacher": tiny_bert}, dm, {"ty/po": Typo()}, num_examples=4, seed=0)
    with pytest.raises(ConfigError, match="split"):
        robustness_metrics({"teacher": tiny_bert}, dm, {"typo": Typo()}, num_examples=4, seed=0, split="x")


def test_ood_metrics_remap_labels_by_name(dms, tokenizer, tiny_bert):
    dm, ood = dms
    student = CueModel(tokenizer, dm.label_names)  # predicts the run's label ids
    m = ood_metrics({"student": student, "teacher": tiny_bert}, dm.label_names, "doctor", ood,
                    tokenizer=tokenizer, max_length=dm.max_length)  # fmt: skip
    n = float(len(ood.datasets["test"]))
    assert m["ood/doctor/acc"] == 1.0 and m["ood/doctor/f1"] == 1.0 and m["ood/doctor/examples"] == n
    assert set(m) == {f"{p}ood/doctor/{k}" for p in ("", "teacher/") for k in ("acc", "f1", "examples")}
    # without the remap the cue model would be right only where the two orders agree (nowhere here)
    raw_labels = torch.tensor(ood.datasets["test"].with_format(None)["labels"])
    preds = predict(student, DataLoader(ood.datasets["test"], batch_size=8, collate_fn=ood.collate))
    assert (preds == raw_labels).float().mean().item() == 0.0
    with pytest.raises(ConfigError, match="max_length"):
        ood_metrics({"student": student}, dm.label_names, "doctor", ood, max_length=32)
    with pytest.raises(ConfigError, match="missing"):
        ood_metrics({"student": student}, ["negative", "positive"], "doctor", ood)


def test_text_pairs_are_perturbed_with_their_own_stream(tmp_path, tokenizer):
    rows = [("123 456", t, label) for t, label in sentences(30, seed=3)]  # nothing to perturb in "a"
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("a", "b", "y"), *rows])
    source = LocalFiles(str(path), text_column="a", label_column="y", text_pair_column="b")
    dm = TextClassificationDataModule(source, tokenizer, "pairs", max_length=32, test_fraction=0.4,
                                      cache_dir=tmp_path / "cache")  # fmt: skip
    dm.prepare_data()
    dm.setup()
    model = CueModel(tokenizer, dm.label_names)
    m = robustness_metrics({"student": model}, dm, {"typo": Typo(rate=0.5)}, num_examples=8, seed=0)
    assert m["robust/typo/changed"] == m["robust/typo/changed_inputs"] == 1.0
    assert m["robust/typo/clean_acc"] == 1.0 and m["robust/examples"] == 8.0

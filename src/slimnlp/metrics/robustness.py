"""Robustness of compressed classifiers: accuracy under seeded text perturbations and out of distribution.

Compression can keep in-distribution accuracy while losing robustness: Du et al. (2021, "Robustness
Challenges in Model Distillation and Pruning for Natural Language Understanding") find that distilled and
pruned BERTs lose markedly more accuracy than their teachers on adversarial and out-of-distribution test
sets. So every run reports, for the student and for its teacher on the *same* inputs:

* ``robust/<attack>/...``: accuracy on perturbed copies of a fixed, seeded subset of the test split, and
  the attack success rate (TextAttack's definition, see :func:`attack_scores`);
* ``ood/<name>/...``: accuracy and macro-F1 on another corpus with the same label names
  (``slimnlp.metrics.ood``).

The perturbations are *non-adaptive*: they never query a model, so the student and the teacher (and every
technique compared) are evaluated on byte-identical perturbed texts. That is weaker than an adaptive attack
such as TextFooler (Jin et al., 2020) or BAE (Garg & Ramakrishnan, 2020), which search per model for the
words whose replacement flips its prediction, but it is offline (no downloads: the word neighbours come from
the model's own input embeddings), deterministic (an example's perturbation depends only on the seed, the
attack's name and the example's index) and comparable across models (a model's number never depends on
which perturbations another model happened to be weak against).

Everything here is plain PyTorch and ``datasets``: no Lightning, no Hydra.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimnlp.batch import MODEL_INPUTS, model_inputs
from slimnlp.errors import ConfigError

__all__ = [
    "QWERTY_NEIGHBOURS",
    "STOPWORDS",
    "NeighbourTable",
    "Perturbation",
    "Typo",
    "WordSubstitution",
    "attack_scores",
    "build_neighbour_table",
    "example_rng",
    "metric_prefix",
    "neighbour_table_from_model",
    "perturb_texts",
    "predict",
    "robustness_metrics",
    "robustness_subset",
    "stable_seed",
    "typo_word",
]

# A word: a run of ASCII letters not glued to other word characters or apostrophes ("don't", "cars_",
# "abc123" are left alone: perturbing a fragment of them is not a typo of a word).
WORD_RE = re.compile(r"(?<![\w'’])[A-Za-z]+(?![\w'’])")


# ---- determinism -----------------------------------------------------------------------------------
def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` via SHA-256 of their ``repr``: the same in every process and Python
    version (unlike ``hash()`` of a string, which is salted per process). Pass plain ``int``/``str``."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def example_rng(seed: int, attack: str, index: int, segment: str = "text") -> random.Random:
    """The random stream of one example's perturbation: a function of (seed, attack name, the example's
    index in its split, which text column) only, so a subset, another batch order or another model sees
    exactly the same perturbed text. ``random.Random(int)`` seeding and its integer methods are stable
    across Python versions."""
    return random.Random(stable_seed("slimnlp.robustness", int(seed), str(attack), int(index), str(segment)))


def robustness_subset(split_size: int, num_examples: int, seed: int) -> list[int]:
    """The first ``num_examples`` indices (all, if the split is smaller) of a seeded permutation of
    ``range(split_size)``: every run with the same seed (student, teacher, every technique) evaluates the
    same examples, and a smaller ``num_examples`` is a prefix of a larger one. The permutation sorts the
    indices by a SHA-256 key, so it does not depend on any library's RNG implementation."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        raise ConfigError("eval.robustness.num_examples", num_examples, "a positive int")
    seed = int(seed)  # repr(np.int64(1)) is not repr(1)
    order = sorted(range(split_size), key=lambda i: stable_seed("slimnlp.subset", seed, i))
    return order[:num_examples]


# ---- perturbations ---------------------------------------------------------------------------------
class Perturbation(ABC):
    """A seeded text perturbation: ``perturb(text, rng)`` must draw all its randomness from ``rng``."""

    name: str = "perturbation"

    @abstractmethod
    def perturb(self, text: str, rng: random.Random) -> str: ...


def perturb_texts(
    perturbation: Perturbation,
    texts: Sequence[str],
    indices: Sequence[int],
    seed: int,
    name: str | None = None,
    segment: str = "text",
) -> list[str]:
    """Perturb ``texts[j]`` with the stream of example ``indices[j]`` (its index in the split): the result
    for an example does not depend on which other examples are perturbed with it, nor in what order."""
    if len(texts) != len(indices):
        raise ValueError(f"{len(texts)} texts but {len(indices)} indices")
    name = perturbation.name if name is None else name
    return [
        perturbation.perturb(text, example_rng(seed, name, i, segment))
        for text, i in zip(texts, indices, strict=True)
    ]


def _check_rate(rate: float, key: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise ConfigError(key, rate, "a fraction in (0, 1]")
    return float(rate)


def _number_to_change(rate: float, candidates: int) -> int:
    """``round(rate * candidates)``, at least 1 when there is a candidate (nlpaug's ``aug_min=1``)."""
    return min(candidates, max(1, round(rate * candidates))) if candidates else 0


def _keyboard_neighbours() -> dict[str, tuple[str, ...]]:
    """Letters adjacent on a US QWERTY keyboard (same row left/right, and the two touching keys of the rows
    above and below; each row sits half a key right of the one above)."""
    rows = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
    table: dict[str, tuple[str, ...]] = {}
    for r, row in enumerate(rows):
        for c, key in enumerate(row):
            near = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
            table[key] = tuple(
                rows[rr][cc] for rr, cc in near if 0 <= rr < len(rows) and 0 <= cc < len(rows[rr])
            )
    return table


QWERTY_NEIGHBOURS: dict[str, tuple[str, ...]] = _keyboard_neighbours()
TYPO_OPS = ("keyboard", "swap", "delete", "insert")


def _like(new: str, old: str) -> str:
    """``new`` in the case of ``old`` (a character or a word: UPPER, Title or as it is)."""
    if old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def typo_word(word: str, op: str, rng: random.Random) -> str:
    """One typo in ``word`` (ASCII letters); the result always differs from ``word`` by exactly one edit
    (substitution, transposition of two different adjacent letters, deletion or insertion)."""
    if op == "swap":
        spots = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if not spots:  # "aaa": nothing to swap, fall back to a neighbour key
            op = "keyboard"
        else:
            i = rng.choice(spots)
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "keyboard":
        i = rng.randrange(len(word))
        return word[:i] + _like(rng.choice(QWERTY_NEIGHBOURS[word[i].lower()]), word[i]) + word[i + 1 :]
    if op == "delete":
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1 :]
    if op == "insert":
        i = rng.randrange(len(word) + 1)
        letter = rng.choice(string.ascii_lowercase)
        return word[:i] + (letter.upper() if word.isupper() else letter) + word[i:]
    raise ValueError(f"unknown typo op {op!r}; one of {TYPO_OPS}")


class Typo(Perturbation):
    """Character-level typos, one per chosen word.

    ``max(1, round(rate * n))`` of the ``n`` words of at least ``min_length`` ASCII letters are chosen at
    random; each gets one operation, drawn uniformly from: a QWERTY-neighbour substitution of one letter
    (as nlpaug's ``KeyboardAug``), a swap of two adjacent different letters, a deletion of one letter, or an
    insertion of a random letter (as nlpaug's ``RandomCharAug`` actions ``swap``/``delete``/``insert``). So a
    text with ``n`` candidate words is within ``max(1, round(rate * n))`` edits (counting a transposition as
    one edit) of the original, and every text with a candidate word changes. Texts without one (numbers,
    emoji, short words only) are left as they are. Case is kept. nlpaug itself is not used: a few lines
    here are dependency-free and pin the definition.
    """

    def __init__(self, rate: float = 0.1, min_length: int = 3, name: str = "typo") -> None:
        self.rate = _check_rate(rate, f"eval.robustness.{name}.rate")
        self.min_length, self.name = min_length, name

    def perturb(self, text: str, rng: random.Random) -> str:
        words = [m for m in WORD_RE.finditer(text) if len(m.group()) >= self.min_length]
        chosen = sorted(rng.sample(words, _number_to_change(self.rate, len(words))), key=lambda m: m.start())
        out, end = [], 0
        for m in chosen:
            out += [text[end : m.start()], typo_word(m.group(), rng.choice(TYPO_OPS), rng)]
            end = m.end()
        return "".join(out) + text[end:]


# A small English stopword list (NLTK's, without the contraction fragments): function words carry no
# content to substitute and their embedding neighbours are other function words.
_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves also may might must shall us"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())


def _trivially_equal(a: str, b: str) -> bool:
    """Same word up to case or a regular plural (s / es / y→ies): not a substitution worth the name."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long in (short + "s", short + "es") or (short.endswith("y") and long == short[:-1] + "ies")


@dataclass(frozen=True)
class NeighbourTable:
    """Word → its nearest whole-word neighbours, best first. ``lowercase``: the vocabulary is uncased, so
    words are looked up lowercased."""

    neighbours: Mapping[str, tuple[str, ...]]
    lowercase: bool
    k: int

    def lookup(self, word: str) -> tuple[str, ...]:
        """Neighbours of ``word`` (exact spelling first, then lowercased); ``()`` when it is no whole word
        of the vocabulary."""
        if not self.lowercase and word in self.neighbours:
            return self.neighbours[word]
        return self.neighbours.get(word.lower(), ())

    def __len__(self) -> int:
        return len(self.neighbours)


def _word_start_marker(vocab: Mapping[str, int]) -> str | None:
    """SentencePiece (``▁word``) and byte-level BPE (``Ġword``) mark whole words by a prefix; WordPiece
    marks continuations (``##ing``) instead."""
    for marker in ("▁", "Ġ"):
        if sum(1 for token in vocab if token.startswith(marker)) > len(vocab) // 10:
            return marker
    return None


def build_neighbour_table(
    embeddings: Tensor,
    vocab: Mapping[str, int],
    k: int = 8,
    special_tokens: Iterable[str] = (),
    stopwords: Iterable[str] = STOPWORDS,
    min_length: int = 3,
    lowercase: bool | None = None,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> NeighbourTable:
    """The ``k`` nearest neighbours by cosine similarity of every whole-word vocabulary entry.

    Entries kept (as words and as neighbours): whole words (WordPiece: no ``##`` continuation; SentencePiece
    / BPE: a word-start marker, stripped) made of ASCII letters only, at least ``min_length`` long, not a
    special token and not a stopword. A word's own case and plural variants (:func:`_trivially_equal`) are
    not its neighbours. ``embeddings`` is the model's input word-embedding matrix (rows indexed by the
    vocabulary ids); similarities are computed ``chunk_size`` rows at a time, so a 30k × 384 vocabulary
    needs ~100 MB, not 4 GB. ``lowercase=None`` infers it: an uncased vocabulary has no upper-case word.
    """
    if k <= 0:
        raise ConfigError("eval.robustness.word.k", k, "a positive int")
    specials, stop = set(special_tokens), {w.lower() for w in stopwords}
    marker = _word_start_marker(vocab)
    words: list[str] = []
    ids: list[int] = []
    seen: set[str] = set()
    for token, i in sorted(vocab.items(), key=lambda item: item[1]):
        if token in specials or i >= embeddings.shape[0]:
            continue
        if marker is not None:
            if not token.startswith(marker):
                continue
            token = token[len(marker) :]
        if not token.isascii() or not token.isalpha() or len(token) < min_length:
            continue
        if token.lower() in stop or token in seen:
            continue
        seen.add(token)
        words.append(token)
        ids.append(i)
    if lowercase is None:
        lowercase = not any(w != w.lower() for w in words)
    if lowercase:  # an uncased model sees "Good" as "good": keep one spelling, in lower case
        words = [w.lower() for w in words]
    if len(words) < 2:
        return NeighbourTable({}, lowercase, k)

    device = torch.device(device) if device is not None else embeddings.device
    unit = F.normalize(
        embeddings.detach()[torch.tensor(ids, device=embeddings.device)].to(device).float(), dim=1
    )
    n = len(words)
    take = min(n - 1, k + 8)  # spare candidates for the case/plural variants filtered out below
    table: dict[str, tuple[str, ...]] = {}
    with torch.inference_mode():
        for start in range(0, n, chunk_size):
            rows = unit[start : start + chunk_size]
            sims = rows @ unit.T
            own = torch.arange(rows.shape[0], device=device)
            sims[own, own + start] = float("-inf")
            top = sims.topk(take, dim=1).indices.cpu().tolist()
            for offset, candidates in enumerate(top):
                word = words[start + offset]
                picked: list[str] = []
                for j in candidates:
                    other = words[j]
                    if not _trivially_equal(word, other) and not any(
                        _trivially_equal(other, p) for p in picked
                    ):
                        picked.append(other)
                        if len(picked) == k:
                            break
                key = word.lower() if lowercase else word
                if key not in table:
                    table[key] = tuple(picked)
    return NeighbourTable(table, lowercase, k)


class _HasEmbeddings(Protocol):
    def get_input_embeddings(self) -> nn.Module: ...


def neighbour_table_from_model(
    model: _HasEmbeddings, tokenizer: Any, k: int = 8, **kwargs: Any
) -> NeighbourTable:
    """:func:`build_neighbour_table` on ``model.get_input_embeddings().weight`` and ``tokenizer``'s
    vocabulary and special tokens: the embedding table the run already has on disk (the *pretrained*
    model's, ideally — fine-tuning barely moves input embeddings)."""
    weight = model.get_input_embeddings().weight
    lowercase = kwargs.pop("lowercase", getattr(tokenizer, "do_lower_case", None))
    return build_neighbour_table(
        weight,
        tokenizer.get_vocab(),
        k=k,
        special_tokens=tokenizer.all_special_tokens,
        lowercase=lowercase,
        **kwargs,
    )


class WordSubstitution(Perturbation):
    """Embedding-neighbour word substitution, non-adaptive.

    Of the content words of a text (runs of ASCII letters, at least ``min_length`` long, not stopwords) that
    are whole words of the vocabulary with neighbours in ``table``, ``max(1, round(rate * n))`` are chosen
    at random and each replaced by one of its ``k`` nearest neighbours in the model's input-embedding space,
    picked at random, in the case of the original. In the spirit of TextFooler (Jin et al., 2020) and BAE
    (Garg & Ramakrishnan, 2020) — swap words for near neighbours — but the words are chosen at random, not by
    querying the model for the most important ones, and the neighbours are the model's own input
    embeddings instead of counter-fitted GloVe vectors or a masked language model: offline, deterministic,
    and the same perturbed texts for every model compared. Words outside the vocabulary are left alone.
    Input-embedding neighbours are near in *usage*, so some are antonyms or related words rather than
    synonyms ("good" → "bad"): this measures sensitivity to nearby-token substitutions, not label-preserving
    paraphrase.
    """

    def __init__(
        self, table: NeighbourTable, rate: float = 0.1, min_length: int = 3, name: str = "word"
    ) -> None:
        self.table, self.rate = table, _check_rate(rate, f"eval.robustness.{name}.rate")
        self.min_length, self.name = min_length, name

    def perturb(self, text: str, rng: random.Random) -> str:
        words = [
            (m, near)
            for m in WORD_RE.finditer(text)
            if len(m.group()) >= self.min_length
            and m.group().lower() not in STOPWORDS
            and (near := self.table.lookup(m.group()))
        ]
        picked = rng.sample(words, _number_to_change(self.rate, len(words)))
        out, end = [], 0
        for m, near in sorted(picked, key=lambda item: item[0].start()):
            out += [text[end : m.start()], _like(rng.choice(near), m.group())]
            end = m.end()
        return "".join(out) + text[end:]


# ---- prediction ------------------------------------------------------------------------------------
def metric_prefix(name: str) -> str:
    """Key prefix of a model's metrics: ``""`` for the student (``"student"`` or ``""``), ``"<name>/"``
    otherwise (``"teacher/"``)."""
    return "" if name in ("", "student") else f"{name.rstrip('/')}/"


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")  # e.g. a dynamically quantized model keeps its weights in packed params


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    return output[0]


def predict(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], device: torch.device | str | None = None
) -> Tensor:
    """Predicted classes (CPU, int64) over ``batches``, in eval mode under ``inference_mode``; the model's
    train/eval mode is restored afterwards. ``device=None``: the device of the model's weights."""
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    preds = []
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                preds.append(_logits(model(**inputs)).argmax(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _encode(
    tokenizer: Any, max_length: int, texts: Sequence[str], pairs: Sequence[str] | None
) -> list[dict[str, list[int]]]:
    """Features as the datamodule tokenizes them (``TextClassificationDataModule._tokenize``)."""
    encoded = tokenizer(
        list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length
    )
    keys = [k for k in MODEL_INPUTS if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]


def _batches(features: Sequence[dict], collate: Any, batch_size: int) -> Iterator[Mapping[str, Tensor]]:
    for start in range(0, len(features), batch_size):
        yield collate(list(features[start : start + batch_size]))


# ---- robustness ------------------------------------------------------------------------------------
def attack_scores(labels: Tensor, clean_preds: Tensor, perturbed_preds: Tensor) -> dict[str, float]:
    """``acc`` (on the perturbed texts), ``clean_acc`` and ``success_rate`` of one model on one attack.

    ``success_rate`` is TextAttack's attack success rate (``AttackSuccessRate``): examples the model gets
    wrong on the clean text are *skipped*; of the others, the fraction it gets wrong after the perturbation
    (successful / (successful + failed)). As in TextAttack it is 0.0 when the model gets no example right.
    ``acc`` counts every example, so an example wrong when clean and right when perturbed counts as right
    (TextAttack's "accuracy under attack" would count it wrong; it equals ``clean_acc * (1 -
    success_rate)``).
    """
    labels, clean_preds, perturbed_preds = (t.cpu().long() for t in (labels, clean_preds, perturbed_preds))
    if not labels.shape == clean_preds.shape == perturbed_preds.shape:
        raise ValueError(f"shapes differ: {labels.shape}, {clean_preds.shape}, {perturbed_preds.shape}")
    n = max(len(labels), 1)
    correct = clean_preds == labels
    flipped = correct & (perturbed_preds != labels)
    attacked = int(correct.sum())
    return {
        "acc": float((perturbed_preds == labels).sum()) / n,
        "clean_acc": attacked / n,
        "success_rate": float(flipped.sum()) / attacked if attacked else 0.0,
    }


def robustness_metrics(
    models: Mapping[str, nn.Module],
    dm: Any,
    attacks: Mapping[str, Perturbation],
    num_examples: int,
    seed: int,
    device: torch.device | str | None = None,
    split: str = "test",
) -> dict[str, float]:
    """Accuracy of each model on perturbed copies of a fixed subset of ``dm``'s ``split``.

    ``models``: name → model; the student's keys have no prefix, another model's are prefixed with its
    name (:func:`metric_prefix`: ``{"student": s, "teacher": t}`` gives ``robust/typo/acc`` and
    ``teacher/robust/typo/acc``). ``dm``: a set-up ``TextClassificationDataModule`` (read: ``datasets``,
    ``tokenizer``, ``max_length``, ``collate``, ``eval_batch_size``). ``attacks``: name → perturbation; the
    name goes into the keys and into each example's random stream. The subset is
    :func:`robustness_subset` of the split with ``seed``; texts (and ``text_pair``, perturbed with its own
    stream) are tokenized as the datamodule tokenizes (truncation at ``max_length``) and padded by its
    collate. ``device=None``: each model's own device.

    Keys per model and attack: ``robust/<attack>/acc``, ``clean_acc``, ``success_rate`` (see
    :func:`attack_scores`), ``changed`` (fraction of the subset's texts the perturbation changed) and
    ``changed_inputs`` (fraction whose token ids changed: a perturbation past the truncation point changes
    the text but not what the model sees); and ``robust/examples``.
    """
    if split not in dm.datasets:
        raise ConfigError("eval.robustness.split", split, f"one of {list(dm.datasets)}")
    for name in attacks:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError("eval.robustness.attacks", name, "names of letters, digits, '_', '.', '-'")
    ds = dm.datasets[split]
    indices = robustness_subset(len(ds), num_examples, seed)
    rows = ds.with_format(None).select(indices)
    texts = list(rows["text"])
    pairs = list(rows["text_pair"]) if "text_pair" in rows.column_names else None
    labels = torch.tensor(rows["labels"], dtype=torch.long)

    def run(features: list[dict]) -> dict[str, Tensor]:
        return {
            name: predict(model, _batches(features, dm.collate, dm.eval_batch_size), device)
            for name, model in models.items()
        }

    clean_features = _encode(dm.tokenizer, dm.max_length, texts, pairs)
    clean = run(clean_features)
    out: dict[str, float] = {}
    for name in models:
        out[f"{metric_prefix(name)}robust/examples"] = float(len(indices))
    for attack_name, attack in attacks.items():
        new_texts = perturb_texts(attack, texts, indices, seed, attack_name, "text")
        new_pairs = perturb_texts(attack, pairs, indices, seed, attack_name, "text_pair") if pairs else None
        changed = [
            a != b or (new_pairs is not None and pairs is not None and new_pairs[j] != pairs[j])
            for j, (a, b) in enumerate(zip(new_texts, texts, strict=True))
        ]
        features = _encode(dm.tokenizer, dm.max_length, new_texts, new_pairs)
        changed_inputs = [
            f["input_ids"] != g["input_ids"] for f, g in zip(features, clean_features, strict=True)
        ]
        perturbed = run(features)
        for name in models:
            prefix = f"{metric_prefix(name)}robust/{attack_name}/"
            scores = attack_scores(labels, clean[name], perturbed[name])
            scores["changed"] = sum(changed) / max(len(changed), 1)
            scores["changed_inputs"] = sum(changed_inputs) / max(len(changed_inputs), 1)
            out.update({prefix + key: value for key, value in scores.items()})
    return out

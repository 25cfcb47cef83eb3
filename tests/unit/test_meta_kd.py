"""meta_kd (MetaDistil) as the released code (JetRunner/MetaDistil) trains: its losses on hand cases, the
quiz loss over the whole quiz set, the second-order pilot gradient, both quiz sources in tiny real runs, and
one-line errors for bad hyperparameters."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.func import functional_call
from transformers import DataCollatorWithPadding

from conftest import fit_steps, technique_kwargs
from slimnlp.batch import model_inputs
from slimnlp.data import TextClassificationDataModule
from slimnlp.data.sources import LocalFiles
from slimnlp.errors import ConfigError
from slimnlp.losses.metadistil import normalized_cls_mse, softmax_mse
from slimnlp.models.students import resized
from slimnlp.techniques.meta_kd import MetaDistil, QuizSet, is_quiz, pkd_layer_order

CONF = Path(__file__).resolve().parents[2] / "conf" / "technique"
TEXTS = {
    0: ["awful", "terrible", "hate", "broken", "worst", "sad"],
    1: ["table", "tuesday", "report", "meeting", "paper", "train"],
    2: ["great", "love", "wonderful", "happy", "best", "nice"],
}


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


def _yaml_hparams() -> dict:
    node = OmegaConf.load(CONF / "meta_kd.yaml")
    return {k: v for k, v in node.items() if not str(k).startswith("_")}


@pytest.fixture()
def tiny_dm(tmp_path, tokenizer) -> TextClassificationDataModule:
    """A real datamodule over 60 distinct short texts (48 train, 6 validation, 6 test), batches of 8."""
    lines = ["text,label"]
    for i in range(60):
        label = i % 3
        lines.append(f"{TEXTS[label][i % 6]} item {i} {TEXTS[label][(i // 6) % 6]},{label}")
    path = tmp_path / "tiny.csv"
    path.write_text("\n".join(lines) + "\n")
    dm = TextClassificationDataModule(
        LocalFiles(str(path)), tokenizer, "tiny", max_length=16, batch_size=8, cache_dir=tmp_path / "cache"
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


# --- losses, on hand cases -----------------------------------------------------------------------------


def test_soft_loss_is_mse_of_softened_probabilities_times_t_squared(tiny_pair):
    T = 2.0
    z_T = torch.tensor([[2 * math.log(3.0), 0.0], [0.0, 0.0]])  # softmax(z_T / 2) = [.75, .25] and [.5, .5]
    z_S = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # [.5, .5] twice
    # squared differences .0625, .0625, 0, 0: mean over batch AND classes (F.mse_loss) = .03125; x T^2 = .125
    assert softmax_mse(z_S, z_T, T).item() == pytest.approx(0.125)
    technique = MetaDistil(temperature=T, **technique_kwargs(*tiny_pair))
    assert technique.soft(z_S, z_T).item() == pytest.approx(0.125)
    # the named alternatives: raw-logit MSE (released --logits_mse) and technique=kd's tau^2 KL
    logit_mse = MetaDistil(soft_loss="logits_mse", **technique_kwargs(*tiny_pair)).soft(z_S, z_T)
    assert logit_mse.item() == pytest.approx((2 * math.log(3.0)) ** 2 / 4)
    kl = MetaDistil(soft_loss="kl", temperature=T, **technique_kwargs(*tiny_pair)).soft(z_S, z_T)
    assert kl.item() == pytest.approx(4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2)


def test_pkd_term_is_mse_of_normalized_cls_states():
    # [3, 4] -> [.6, .8] against [0, 5] -> [0, 1]: squares .36 and .04; second layer pair identical
    cls_S = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])]
    cls_T = [torch.tensor([[0.0, 5.0]]), torch.tensor([[2.0, 0.0]])]
    assert normalized_cls_mse(cls_S, cls_T).item() == pytest.approx((0.36 + 0.04 + 0 + 0) / 4)


def test_pkd_layers_are_the_released_selection():
    assert pkd_layer_order(6, 12, "skip") == [1, 3, 5, 7, 9]  # teacher layers 2, 4, 6, 8, 10 (1-based)
    assert pkd_layer_order(4, 6, "skip") == [0, 1, 2]  # every = 6 // 4 = 1
    assert pkd_layer_order(2, 4, "skip") == [1]
    assert pkd_layer_order(6, 12, "last") == [6, 7, 8, 9, 10]


def test_objective_is_ce_plus_soft_plus_beta_pkd(tiny_pair, tiny_dm, tiny_batch):
    student, teacher = tiny_pair
    technique = MetaDistil(
        alpha=0.3, temperature=2.0, beta=2.0, teacher_lr=1e-3, **technique_kwargs(student, teacher)
    )
    technique.attach_quiz(tiny_dm)
    logged = fit_steps(technique, tiny_batch, steps=2).callback_metrics
    for name in ("train/loss", "loss/ce", "loss/soft", "loss/pkd", "loss/quiz"):
        assert torch.isfinite(logged[name]), name
    expected = 0.3 * logged["loss/ce"] + 0.7 * logged["loss/soft"] + 2.0 * logged["loss/pkd"]
    assert logged["train/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "loss/pkd" not in MetaDistil(beta=0.0, **technique_kwargs(student, teacher)).training_loss(
        tiny_batch
    )


# --- the quiz and the teacher's gradient ---------------------------------------------------------------


def _double_setup(tiny_pair, tiny_batch, **hparams):
    student, teacher = (m.double().eval() for m in tiny_pair)
    technique = MetaDistil(alpha=0.3, temperature=2.0, **hparams, **technique_kwargs(student, teacher))
    technique.student.eval()  # no dropout: the pilot is a deterministic function of the teacher's weights
    train = {k: v[1:] for k, v in tiny_batch.items()}
    return technique, train


def _quiz_rows(tokenizer, n=5):
    texts = ["so sad", "a table on tuesday", "the best day", "i hate this broken phone", "nice"][:n]
    return [{**tokenizer(t), "labels": i % 3} for i, t in enumerate(texts)]


def test_quiz_loss_is_the_mean_over_the_whole_quiz_set(tiny_pair, tiny_batch, tokenizer):
    """Five quiz examples in batches of 2, 2, 1: loss and teacher gradient equal those of one CE averaged
    over all five examples at once (a mean per example, not of the three batch means)."""
    technique, train = _double_setup(tiny_pair, tiny_batch, beta=1.0)
    collate = DataCollatorWithPadding(tokenizer)
    quiz = QuizSet(_quiz_rows(tokenizer), collate, batch_size=2)
    batches = quiz.batches(None, torch.device("cpu"))
    assert [len(b["labels"]) for b in batches] == [2, 2, 1] and quiz.batches_per_step(None) == 3
    assert quiz.batches(None, torch.device("cpu")) is batches  # collated once, reused every step
    loss, grads = technique.teacher_gradient(train, batches, step_size=1.0)

    whole = dict(collate(_quiz_rows(tokenizer)))
    params = list(technique.meta_teacher.parameters())
    fast = technique.pilot_weights(train, 1.0)
    logits = functional_call(technique.student, fast, args=(), kwargs=model_inputs(whole)).logits
    direct = F.cross_entropy(logits, whole["labels"])
    direct_grads = torch.autograd.grad(direct, params, allow_unused=True)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-10)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    for g, d in zip(grads, direct_grads):
        if d is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, d, rtol=1e-8, atol=1e-12)
    per_batch = [F.cross_entropy(logits[i : i + 2], whole["labels"][i : i + 2]) for i in (0, 2, 4)]
    assert loss.item() != pytest.approx((sum(per_batch) / 3).item(), rel=1e-6)


def test_quiz_batches_k_draws_k_batches_with_replacement_seeded_per_step(tiny_pair, tokenizer):
    technique = MetaDistil(quiz_batches=3, **technique_kwargs(*tiny_pair))
    technique.quiz = QuizSet(_quiz_rows(tokenizer), DataCollatorWithPadding(tokenizer), batch_size=2)
    step0 = technique.quiz_for_step(0)
    assert [len(b["labels"]) for b in step0] == [2, 2, 2]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(step0, technique.quiz_for_step(0)))
    draws = [torch.cat([b["labels"] for b in technique.quiz_for_step(i)]).tolist() for i in range(1, 6)]
    assert len({tuple(d) for d in draws}) > 1, "each step draws anew"
    assert technique.quiz.batches_per_step(3) == 3


def test_teacher_gradient_flows_through_the_pilot_update(tiny_pair, tiny_batch):
    """The analytic second-order gradient matches central finite differences; cutting the pilot (λ = 0,
    θ' = θ) leaves the quiz loss independent of the teacher, so its gradient vanishes."""
    technique, train = _double_setup(tiny_pair, tiny_batch, beta=1.0)
    quiz = [{k: v[:2] for k, v in tiny_batch.items()}]
    params = list(technique.meta_teacher.parameters())
    _, grads = technique.teacher_gradient(train, quiz, 1.0)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    assert sum(g.abs().sum() for g in grads) > 0

    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    eps = 1e-5

    def quiz_loss_at(sign: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        fast = {n: w.detach() for n, w in technique.pilot_weights(train, 1.0).items()}
        value = technique.quiz_gradient(fast, quiz)[0].item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return value

    numeric = (quiz_loss_at(1.0) - quiz_loss_at(-1.0)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)

    _, cut = technique.teacher_gradient(train, quiz, 0.0)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in cut)


# --- tiny real runs, both quiz sources -----------------------------------------------------------------


@pytest.mark.parametrize("source", ["train", "validation"])
def test_tiny_run_with_each_quiz_source(tiny_pair, tiny_dm, source):
    """quiz_source=train: the student never trains on the held-out quiz ids; quiz_source=validation: it
    trains on every training example and the quiz is the validation split. Both recorded for results.json."""
    student, teacher = tiny_pair
    technique = MetaDistil(
        quiz_source=source, teacher_lr=1e-3, beta=1.0, **technique_kwargs(student, teacher)
    )
    trained: list[int] = []
    loss_of = technique.training_loss

    def recording(batch):
        trained.extend(batch["idx"].tolist())
        return loss_of(batch)

    technique.training_loss = recording
    before_S, before_T, before_meta = (
        _snapshot(student),
        _snapshot(teacher),
        _snapshot(technique.meta_teacher),
    )
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(technique, datamodule=tiny_dm)

    n_train, n_val = len(tiny_dm.datasets["train"]), len(tiny_dm.datasets["validation"])
    held = set(is_quiz(torch.arange(n_train), technique.quiz_fraction).nonzero().flatten().tolist())
    metrics = technique.compression_metrics()
    if source == "validation":
        assert sorted(trained) == list(range(n_train)), "every training example, once"
        assert metrics["train/student_examples"] == n_train and metrics["train/quiz_examples"] == n_val
    else:
        assert 0 < len(held) < n_train
        assert sorted(trained) == sorted(set(range(n_train)) - held), "no quiz example is ever trained on"
        assert metrics["train/student_examples"] == n_train - len(held)
        assert metrics["train/quiz_examples"] == len(held)
    assert metrics["train/quiz_batches_per_step"] == math.ceil(metrics["train/quiz_examples"] / 8)
    assert torch.isfinite(trainer.callback_metrics["loss/quiz"])
    assert _changed(before_S, student), "the student did not train"
    assert _changed(before_meta, technique.meta_teacher), "the technique's teacher copy did not learn"
    assert not _changed(before_T, teacher), "the runner's teacher must never be written to"
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student_opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not student_opt_params & {id(p) for p in technique.meta_teacher.parameters()}
    assert any(k.startswith("meta_teacher.") for k in technique.state_dict())
    checkpoint: dict = {}
    technique.on_save_checkpoint(checkpoint)
    assert checkpoint["meta_kd_teacher_optimizer"]["optimizer"]["state"], (
        "teacher optimizer state is checkpointed"
    )


def test_quiz_source_train_needs_example_ids(tiny_pair, tiny_batch):
    batch = {k: v for k, v in tiny_batch.items() if k != "idx"}
    with pytest.raises(KeyError, match="idx"):
        MetaDistil(**technique_kwargs(*tiny_pair)).training_step(batch, 0)
    assert MetaDistil(quiz_source="validation", **technique_kwargs(*tiny_pair)).student_rows(batch) is None


def test_quiz_split_is_deterministic_and_sized():
    ids = torch.arange(20_000)
    held = is_quiz(ids, 0.1)
    assert torch.equal(held, is_quiz(ids, 0.1))
    assert held.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert torch.equal(is_quiz(torch.arange(4), 0.1), torch.tensor([True, False, False, False]))


# --- configuration -------------------------------------------------------------------------------------


def test_yaml_states_the_released_defaults():
    yaml = _yaml_hparams()
    MetaDistil.check_hparams(**yaml)
    assert yaml == {k: v for k, v in MetaDistil.hparam_signature().items()}
    assert (yaml["temperature"], yaml["alpha"], yaml["beta"], yaml["teacher_lr"], yaml["pilot_lr"]) == (
        5.0,
        0.5,
        100.0,
        1e-5,
        5e-5,
    )
    assert yaml["quiz_batches"] is None and yaml["soft_loss"] == "prob_mse"


def test_requirements():
    assert MetaDistil.requirements().hidden_states and not MetaDistil.requirements(beta=0.0).hidden_states
    needs = MetaDistil.requirements()
    assert (
        needs.teacher and needs.attention == "eager" and not needs.ddp and not needs.cacheable_teacher_logits
    )


@pytest.mark.parametrize(
    "hparams, key, allowed",
    [
        ({"quiz_source": "dev"}, "quiz_source", "one of train, validation"),
        ({"soft_loss": "kl_div"}, "soft_loss", "one of prob_mse, logits_mse, kl"),
        ({"pkd_layers": "first"}, "pkd_layers", "one of skip, last"),
        ({"quiz_batches": 0}, "quiz_batches", "null (the whole quiz set every step) or an integer >= 1"),
        ({"quiz_batches": 2.5}, "quiz_batches", "an integer >= 1"),
        ({"quiz_batch_size": 0}, "quiz_batch_size", "null (data.batch_size) or an integer >= 1"),
        ({"beta": -1.0}, "beta", ">= 0"),
        ({"alpha": 1.0, "beta": 0.0}, "alpha", "< 1"),
        ({"teacher_lr": 0.0}, "teacher_lr", "> 0"),
        ({"pilot_lr": -1.0}, "pilot_lr", "null"),
        ({"quiz_fraction": 0.0}, "quiz_fraction", "in (0, 1)"),
        ({"quiz_fraction": 1.0}, "quiz_fraction", "in (0, 1)"),
        ({"teacher_max_grad_norm": 0.0}, "teacher_max_grad_norm", "> 0"),
        ({"temperature": -2.0}, "temperature", "> 0"),
    ],
)
def test_bad_hparams_are_one_line_naming_key_value_and_allowed(hparams, key, allowed):
    with pytest.raises(ConfigError) as err:
        MetaDistil.check_hparams(**hparams)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"technique.{key}={hparams[key]!r} is invalid: ")
    assert allowed in message


def test_pkd_term_needs_matching_widths(tiny_bert):
    narrow = resized(tiny_bert, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    with pytest.raises(ConfigError, match="student.hidden_size"):
        MetaDistil(**technique_kwargs(narrow, tiny_bert))
    MetaDistil(beta=0.0, **technique_kwargs(narrow, tiny_bert))  # logits only: fine

"""Every YAML in every config group composes, and every `_target_` instantiates (a broken one fails CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from conftest import technique_kwargs
from slimnlp.build import STUDENT_RUNNER_KEYS, corpus_sources, technique_hparams
from slimnlp.config import compose_config, config_dir, group_options

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name not in ("hydra", "local"))
REQUIRED = {  # options with mandatory values (??? or checked: one of two keys) need one to compose
    ("data", "local"): ["data.source.path=/tmp/x.csv"],
    ("technique", "drop_layers"): ["technique.depth=2"],
    ("technique", "early_exit"): ["technique.patience=2"],
    ("teacher", "path"): ["teacher.name_or_path=/tmp/teacher"],
    ("student", "path"): ["student.path=/tmp/student"],
    # defaults sized for the 384-wide, 6-layer default that the tiny models below cannot take
    ("technique", "embedding_factorization"): ["technique.rank=16"],  # E below the tiny width (48)
    ("technique", "layer_sharing"): ["technique.unique_layers=1"],  # a divisor of the tiny student's 2 layers
}
CASES = [(group, option) for group in GROUPS for option in group_options(group)]


def compose(group: str, option: str, tmp_path: Path):
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), []),
                 f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run"]
    return compose_config(overrides)


def test_every_group_has_options():
    assert {"data", "teacher", "student", "technique", "schedule", "optim", "trainer", "callbacks", "logger",
            "paths", "debug", "experiment"} <= set(GROUPS)
    assert {"finetune", "kd"} <= set(group_options("technique"))


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(group, option, tmp_path, tokenizer, tiny_bert):
    cfg = compose(group, option, tmp_path)
    assert OmegaConf.select(cfg, "seed") is not None
    if group == "data":
        # text_corpus names data options in ``corpora``: the runner's corpus_sources turns them into sources
        corpora = {"corpora": corpus_sources(cfg)} if "corpora" in cfg.data else {}
        dm = instantiate(cfg.data, tokenizer=tokenizer, **corpora)
        assert dm.task_name == cfg.data.task_name
    elif group == "student":
        builder = instantiate(OmegaConf.masked_copy(cfg.student, [k for k in cfg.student if k not in STUDENT_RUNNER_KEYS]))
        assert callable(builder)
        if option != "path" and cfg.student.get("num_layers", 0) <= 4:
            student = builder(teacher=tiny_bert, num_labels=3)
            assert student.config.num_hidden_layers == cfg.student.num_layers
    elif group == "teacher":
        assert {"name", "name_or_path", "checkpoint", "finetune"} <= set(cfg.teacher)
    elif group == "technique":
        _instantiate_technique(cfg, tiny_bert)
    elif group == "schedule":
        value = instantiate(cfg.schedule)(5, 10)
        assert isinstance(value, float)
        assert "schedule" in technique_hparams(cfg)  # passed to the techniques that ramp a value
    elif group == "optim":
        optimizer = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(optimizer, torch.optim.Optimizer)
    elif group == "trainer":
        if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            pytest.skip("GPU trainer configs instantiate only where a GPU is present")
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
        assert trainer.max_epochs == cfg.trainer.max_epochs
    elif group == "callbacks":
        for node in (cfg.callbacks or {}).values():
            instantiate(node)
    elif group == "logger":
        for node in (cfg.logger or {}).values():
            instantiate(node, **({"tags": ["t"]} if "tags" in node else {}))
    elif group == "pipeline":  # every stage composes and plans, and the chain can work
        from slimnlp.train import plan_pipeline

        _, stages, _, _, _ = plan_pipeline([f"pipeline={option}", f"paths.root_dir={tmp_path}"])
        assert len(stages) >= 2
    elif group == "hparams_search":  # every branch of the search composes and plans; the study opens
        import optuna

        from slimnlp.train import check_search

        assert cfg.hydra.sweeper._target_.endswith("SlimnlpOptunaSweeper")
        check_search(cfg, [f"hparams_search={option}", f"paths.root_dir={tmp_path}"])
        study = optuna.load_study(study_name=cfg.hparams_search.study_name,
                                  storage=f"sqlite:///{tmp_path}/sweeps/{cfg.hparams_search.study_name}.db")
        assert len(study.directions) == len(cfg.hparams_search.objectives)


def _instantiate_technique(cfg, tiny_teacher):
    """Builds every stage with its YAML defaults on a 48-wide teacher: wide enough for the defaults that
    constrain widths (MiniLMv2's 24 relation heads)."""
    from transformers import BertConfig, BertForSequenceClassification

    from slimnlp.models.students import layer_subset

    config = BertConfig(vocab_size=tiny_teacher.config.vocab_size, hidden_size=48, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128, num_labels=3)
    teacher = BertForSequenceClassification(config).eval()
    cls = get_class(cfg.technique._target_)
    hparams = technique_hparams(cfg)
    cls.check_hparams(**hparams)
    # quantization-aware training distills layer by layer from the fp32 model: the student is the teacher's depth
    depth = 4 if cfg.technique._target_.split(".")[-2] in ("qat", "ternary", "binary") else 2
    student = layer_subset(teacher, num_labels=3, num_layers=depth)
    extra = {"teachers": [teacher, teacher]} if cls.requirements(**cls.defaults_filled(**hparams)).extra_teachers else {}
    given = {k: v for k, v in hparams.items() if k != "teachers"}
    for stage in cls.stages(**cls.defaults_filled(**hparams)):
        technique = cls(**{**given, **stage.hparams}, **technique_kwargs(student, teacher), **extra)
        assert technique.student is not None
        student = technique.export_student()

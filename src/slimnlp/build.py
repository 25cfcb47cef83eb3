"""The runner's first steps: check the whole configuration, then build data, teacher, student and ensemble.

Every check that can fail without weights runs first (``plan``): typed config values, the technique's
hyperparameters, its requirements, DDP support. Then ``build_models`` loads data and the pretrained models
and checks the technique against the model configs *before* the teacher is fine-tuned, so an incompatible
student/technique pair ends in one line within seconds rather than after minutes of teacher training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from slimnlp.checks import check_run_config
from slimnlp.config import (
    CONFIG_NAME,
    compose_config,
    config_dir,
    data_option_config,
    find_error,
    group_options,
    to_plain,
)
from slimnlp.distributed import is_distributed, is_rank_zero
from slimnlp.errors import ConfigError
from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier, load_tokenizer
from slimnlp.results import write_json_atomic
from slimnlp.teachers import load_teacher
from slimnlp.techniques.base import ModelConfigs, Requirements, Stage, TaskInfo, Technique

log = logging.getLogger("slimnlp")
STUDENT_RUNNER_KEYS = ("name", "init_from")  # read by the runner, not passed to the student builder
INIT_SOURCES = ("pretrained", "finetuned")


# ------------------------------------------------------------------------------------------ the plan
def choice(group: str, fallback: str) -> str:
    """The option the user picked for a config group (``technique=kd`` → ``kd``)."""
    try:
        return str(HydraConfig.get().runtime.choices.get(group) or fallback)
    except ValueError:  # not inside a Hydra app (a notebook, a test composing by hand)
        return fallback


def technique_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The technique's hyperparameters as plain values (``_target_`` nodes instantiated); the run's
    ``schedule`` group, when one is chosen, as the ``schedule`` hyperparameter."""
    container = OmegaConf.to_container(cfg.technique, resolve=True)
    assert isinstance(container, dict)
    hparams = {
        k: instantiate(v) if isinstance(v, dict) and "_target_" in v else v
        for k, v in container.items()
        if not str(k).startswith("_")
    }
    if cfg.get("schedule") is not None:
        hparams["schedule"] = instantiate(cfg.schedule)
    return hparams


def technique_class(cfg: DictConfig) -> type[Technique]:
    cls = get_class(cfg.technique._target_)
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise ConfigError("technique._target_", cfg.technique._target_, "a subclass of slimnlp Technique")
    return cls


@dataclass(frozen=True)
class RunPlan:
    """What will run, decided from the config alone."""

    name: str  # the technique's option name (``kd``)
    cls: type[Technique]
    hparams: dict[str, Any]  # as configured (constructor defaults not filled in)
    stages: list[Stage]
    stage_needs: list[Requirements]  # one per stage
    needs: Requirements  # their union

    def stage_hparams(self, stage: Stage) -> dict[str, Any]:
        """Complete hyperparameters of one stage (defaults filled in)."""
        return self.cls.defaults_filled(**{**self.hparams, **stage.hparams})


def apply_technique_student(cfg: DictConfig) -> None:
    """The student a technique's YAML asks for (``technique._student_``, e.g. Theseus's ``{init: first,
    init_from: finetuned}``) replaces the student option's values, in place (so the run records and hashes what
    it builds), where that option has every key named (layer-subset students; a saved or resized student is built
    as configured); a key set on the command line (``student.init=skip``) keeps the user's value."""
    wanted = cfg.technique.get("_student_")
    if not wanted or not all(key in cfg.student for key in wanted):
        return
    try:
        given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    except ValueError:  # not inside a Hydra app: nothing was given on a command line
        given = set()
    with open_dict(cfg.student):
        for key, value in wanted.items():
            if f"student.{key}" not in given:
                cfg.student[key] = value


def plan(cfg: DictConfig) -> RunPlan:
    """Check everything that needs no model; raises ConfigError with one line."""
    apply_technique_student(cfg)
    check_run_config(to_plain(cfg))
    cls = technique_class(cfg)
    name = choice("technique", cfg.technique._target_.rsplit(".", 1)[-1])
    known = cls.hparam_signature()
    if cfg.get("schedule") is not None and "schedule" not in known:
        ramping = ", ".join(n for n in group_options("technique") if _reads_schedule(n)) or "none yet"
        raise ConfigError(
            "schedule", choice("schedule", "?"), f"no schedule for technique {name}, which ramps nothing; "
            f"techniques that read the schedule group: {ramping}"
        )
    hparams = technique_hparams(cfg)
    unknown = sorted(set(hparams) - set(known))
    if unknown:  # fail now, not after the teacher has been fine-tuned
        raise ConfigError(
            f"technique.{unknown[0]}", hparams[unknown[0]], f"{cls.__name__} takes: {', '.join(sorted(known))}"
        )
    cls.check_hparams(**hparams)
    stages = cls.stages(**cls.defaults_filled(**hparams))
    stage_needs = [cls.requirements(**cls.defaults_filled(**{**hparams, **s.hparams})) for s in stages]
    needs = Requirements.union(stage_needs)
    check_data_fits(cfg, name, stage_needs)
    if not needs.ddp and is_distributed(cfg.trainer.get("strategy"), cfg.trainer.get("devices")):
        raise ConfigError(
            "trainer.strategy", cfg.trainer.get("strategy"),
            f"one process: technique {name} cannot run under DDP; use trainer=cpu or trainer=gpu (devices=1)",
        )
    return RunPlan(name, cls, hparams, stages, stage_needs, needs)


def check_data_fits(cfg: DictConfig, technique: str, stage_needs: list[Requirements]) -> None:
    """Unlabelled text (``data=text_corpus``) serves task-agnostic techniques only, and they need it; a
    task-agnostic run starts from the pretrained teacher."""
    from slimnlp.data.text_corpus import TextCorpusDataModule

    task = [needs.task for needs in stage_needs]
    if len(set(task)) > 1:
        raise ConfigError("technique", technique, "stages that are all task-specific or all task-agnostic")
    data_cls = get_class(cfg.data._target_)
    unlabelled = isinstance(data_cls, type) and issubclass(data_cls, TextCorpusDataModule)
    if all(task) and unlabelled:
        raise ConfigError("data", choice("data", "text_corpus"), f"labelled data: technique {technique} trains on a "
                          "task (data=text_corpus serves technique=general_distill)")
    if not any(task) and not unlabelled:
        raise ConfigError("data", choice("data", cfg.data.get("task_name")), f"data=text_corpus: technique "
                          f"{technique} distils on unlabelled text (data.corpora=[{choice('data', 'tweet_sentiment')}] "
                          "uses a data option's texts)")
    if not any(task) and cfg.student.get("init_from", "pretrained") != "pretrained":
        raise ConfigError("student.init_from", cfg.student.init_from,
                          "pretrained: general distillation starts from the pretrained teacher (none is fine-tuned)")


def _reads_schedule(option: str) -> bool:
    target = OmegaConf.load(config_dir() / "technique" / f"{option}.yaml").get("_target_")
    try:
        return "schedule" in get_class(target).hparam_signature()
    except (ImportError, AttributeError, ValueError):  # a broken option is reported when it is chosen
        return False


# ---------------------------------------------------------------------------------------- the models
@dataclass
class Models:
    tokenizer: PreTrainedTokenizerBase
    datamodule: Any
    task: TaskInfo
    student: PreTrainedModel
    teacher: PreTrainedModel
    teacher_dir: Path
    teachers: list[tuple[PreTrainedModel, Path]]  # extra teachers (ensembles), with their folders


def build_student(cfg: DictConfig, init_model: PreTrainedModel, num_labels: int) -> PreTrainedModel:
    builder_cfg = OmegaConf.masked_copy(cfg.student, [k for k in cfg.student if k not in STUDENT_RUNNER_KEYS])
    builder = instantiate(builder_cfg, _partial_=True)
    return builder(teacher=init_model, num_labels=num_labels)


def init_source(cfg: DictConfig) -> str:
    source = cfg.student.get("init_from", "pretrained")
    if source not in INIT_SOURCES:
        raise ConfigError("student.init_from", source, f"allowed: {', '.join(INIT_SOURCES)}")
    return source


def ensemble_members(cfg: DictConfig) -> list[DictConfig]:
    """One run config per ``technique.teachers`` entry (a ``conf/teacher`` option plus an optional recipe seed
    and checkpoint), each fine-tuned and cached like the main teacher."""
    members = []
    for i, spec in enumerate(cfg.technique.get("teachers") or []):
        name = spec.get("teacher")
        options = group_options("teacher")
        if name not in options:
            raise ConfigError(f"technique.teachers[{i}].teacher", name, f"available: {', '.join(options)}")
        member = cfg.copy()
        with open_dict(member):
            if name != choice("teacher", cfg.teacher.name):  # the run's own teacher keeps its CLI overrides
                member.teacher = _compose_teacher(name)
            if spec.get("seed") is not None:
                member.teacher.finetune.seed = spec.seed
            if spec.get("checkpoint"):
                member.teacher.checkpoint = spec.checkpoint
        members.append(member)
    return members


def _compose_teacher(name: str) -> DictConfig:
    """A ``conf/teacher`` option as Hydra composes it (its defaults list, the fine-tune recipe, included)."""
    if GlobalHydra.instance().is_initialized():  # inside the Hydra app
        return compose(config_name=CONFIG_NAME, overrides=[f"teacher={name}"]).teacher
    return compose_config([f"teacher={name}"]).teacher


def corpus_sources(cfg: DictConfig) -> list[Any]:
    """The ``source`` of each data option named in ``data.corpora``, instantiated: what ``data=text_corpus``
    reads the texts of."""
    names = cfg.data.corpora
    names = list(names) if OmegaConf.is_list(names) else names
    options = [o for o in group_options("data") if "source" in OmegaConf.load(config_dir() / "data" / f"{o}.yaml")]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("data.corpora", names, f"a list of data options: {', '.join(options)}")
    for name in names:
        if name not in options:
            raise ConfigError("data.corpora", name, f"data options with labelled texts: {', '.join(options)}")
    return [instantiate(data_option_config(cfg, name).source) for name in names]


def teacher_config(cfg: DictConfig) -> PretrainedConfig:
    """The teacher's architecture, without loading weights (fine-tuning does not change it)."""
    cache = Path(cfg.paths.cache_dir) / "models"
    if cfg.teacher.get("checkpoint"):
        return AutoConfig.from_pretrained(resolve_pretrained(cfg.teacher.checkpoint, cache, key="teacher.checkpoint"))
    return AutoConfig.from_pretrained(resolve_pretrained(cfg.teacher.name_or_path, cache, key="teacher.name_or_path"))


def build_data(cfg: DictConfig, source: str) -> tuple[PreTrainedTokenizerBase, Any]:
    """Tokenizer (the teacher's, from its resolved ``source``: students share it) and the task's datamodule,
    set up for fitting."""
    tokenizer = load_tokenizer(source)
    corpora = {"corpora": corpus_sources(cfg)} if "corpora" in cfg.data else {}
    try:
        dm = instantiate(cfg.data, tokenizer=tokenizer, **corpora)
    except InstantiationException as err:  # a bad data value: its one-line ConfigError, not Hydra's wrapper
        config_error = find_error(err)
        if config_error is None:
            raise
        raise config_error from None
    dm.prepare_data()
    dm.setup("fit")
    if is_rank_zero():
        write_json_atomic(Path(cfg.paths.output_dir) / "split.json", dm.split_summary())
    return tokenizer, dm


def build_models(cfg: DictConfig, run: RunPlan) -> Models:
    """Data, student, teacher (fine-tuned once and cached) and any extra teachers, checked against the
    technique on their configs before the teacher is fine-tuned."""
    source_init = init_source(cfg)
    source = resolve_pretrained(cfg.teacher.name_or_path, Path(cfg.paths.cache_dir) / "models")
    tokenizer, dm = build_data(cfg, source)
    label_names = list(dm.label_names) or None  # None: unlabelled text (data=text_corpus)
    # Built from the pretrained teacher now, so a bad student config fails before teacher fine-tuning; with
    # init_from=finetuned it only serves the shape check and is rebuilt from the fine-tuned teacher below.
    pretrained = load_classifier(source, num_labels=dm.num_labels, label_names=label_names)
    student = build_student(cfg, pretrained, dm.num_labels)
    del pretrained
    members = ensemble_members(cfg) if run.needs.extra_teachers else []
    configs = ModelConfigs(student.config, teacher_config(cfg), tuple(teacher_config(m) for m in members))
    for stage in run.stages:
        run.cls.check_models(configs, **run.stage_hparams(stage))
    if run.needs.task:
        teacher, teacher_dir = load_teacher(cfg, tokenizer, dm)
    else:  # general distillation: the pretrained teacher as it is (its throwaway head is never read)
        teacher, teacher_dir = load_classifier(source, num_labels=dm.num_labels), Path(source)
    if source_init == "finetuned":
        student = build_student(cfg, teacher, dm.num_labels)
    teachers = [load_teacher(member, tokenizer, dm) for member in members]
    return Models(tokenizer, dm, TaskInfo.from_datamodule(dm), student, teacher, teacher_dir, teachers)

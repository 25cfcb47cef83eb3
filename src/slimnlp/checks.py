"""Pre-flight checks of a run config, and the jobs of a ``-m`` command line.

``check_run_config`` checks every value the config tree types (trainer, optimizer, LR schedule, teacher
recipe, callbacks, measurement …) before anything is built, so a mistyped value ends in one line
(``ConfigError``: key, value, what is allowed) instead of a traceback from torch or Lightning. It takes the
resolved config as a plain nested dict (``slimnlp.config.to_plain(cfg)``); nothing here touches OmegaConf.
The data group and technique hyperparameters have their own checks (``TextClassificationDataModule.__init__``,
``Technique.check_hparams``).

The checks are a table of ``(dotted key, rule)`` pairs; a key may appear twice (type first, then a rule
that reads other keys). Absent keys, and keys under an absent or null group, are skipped, so the table
covers optional keys and configs in transition. Values are checked as Hydra delivers them: YAML ``1e-4``
and the override ``lr=1e-4`` both arrive as floats (OmegaConf's YAML loader and Hydra's override grammar
read exponents without a dot), so numeric strings are refused, not converted; ``yes``/``on`` are bools in a
YAML file but strings on the command line, and are refused there. Booleans never pass as numbers.

Two choices mirror Lightning rather than its lenient fallbacks:

* ``precision=16-mixed`` (or ``16``) with ``accelerator=cpu`` fails: Lightning 2.6 warns and runs
  ``bf16-mixed`` instead, so results.json, the config hash and the teacher cache key would record a
  precision that did not run. ``bf16-mixed`` / ``bf16-true`` on CPU pass (Lightning supports them).
* ``devices`` on CPU is a process count (``auto`` or 1..cores), as Lightning's CPU accelerator requires;
  on ``gpu``/``cuda`` it may be a count, ``-1``, ``auto`` or a list of indices, none beyond the devices that
  exist. ``gpu`` with no CUDA device but MPS available is left to Lightning (it means MPS there).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, get_args

from transformers import SchedulerType

from slimnlp.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["NUMERICS_RULES", "OPTIMIZER_RULES", "RULES", "check_run_config", "expand_sweep", "require"]

_MISSING = "???"  # OmegaConf's mandatory value, as to_container(throw_on_missing=False) leaves it
MAX_SEED = 2**32 - 1  # numpy's (and Lightning's seed_everything's) bound


# --- rules ----------------------------------------------------------------------------------------------

@dataclass
class Context:
    """What a rule may read besides its value: the whole config and the machine's device counts."""

    cfg: Mapping[str, Any]
    cuda_devices_given: int | None = None
    cpu_count_given: int | None = None

    def get(self, key: str) -> Any:
        return _lookup(self.cfg, key)

    @cached_property
    def cuda_devices(self) -> int:
        if self.cuda_devices_given is not None:
            return self.cuda_devices_given
        import torch  # only when a gpu/cuda trainer asks

        return torch.cuda.device_count()

    @cached_property
    def mps_instead(self) -> bool:
        """Lightning's ``accelerator=gpu`` means MPS on a machine without CUDA (only when counts are not given)."""
        if self.cuda_devices_given is not None:
            return False
        import torch

        return self.cuda_devices == 0 and torch.backends.mps.is_available()

    @cached_property
    def cpu_count(self) -> int:
        return self.cpu_count_given if self.cpu_count_given is not None else (os.cpu_count() or 1)


# A rule: rule(value, context) is None when the value is fine, else what is allowed, as a short phrase.
Rule = Callable[[Any, Context], "str | None"]


@dataclass(frozen=True)
class Check:
    """A rule on the value alone, with its allowed-phrase parts (so ``any_of`` can join them)."""

    parts: tuple[str, ...]
    test: Callable[[Any], bool]

    @property
    def allowed(self) -> str:
        *head, last = self.parts
        return f"{', '.join(head)} or {last}" if head else last

    def __call__(self, value: Any, ctx: Context) -> str | None:
        return None if self.test(value) else self.allowed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _within(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    return hi is None or (value < hi if hi_open else value <= hi)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An int (not a bool) in [lo, hi]."""
    return Check((f"an int{_interval(lo, hi, False, False)}",), lambda v: _is_int(v) and _within(v, lo, hi, False, False))


def number(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
    floats_only: bool = False,
) -> Check:
    """A finite int or float (not a bool) within the bounds; ``floats_only`` where an int means something else."""
    noun = "a float" if floats_only else "a number"
    return Check(
        (f"{noun}{_interval(lo, hi, lo_open, hi_open)}",),
        lambda v: _is_number(v) and (isinstance(v, float) or not floats_only) and _within(v, lo, hi, lo_open, hi_open),
    )


def require(key: str, value: Any, check: Check, meaning: str = "") -> None:
    """Raise the one-line ConfigError for ``key`` unless ``value`` passes ``check`` (a value check, no
    context): what a technique's ``validate_hparams`` uses for its own keys. ``meaning`` is appended."""
    if not check.test(value):
        raise ConfigError(key, value, f"{check.allowed} ({meaning})" if meaning else check.allowed)


def _show(value: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(value, str(value)) if not _is_number(value) else str(value)


def choice(*values: Any, allowed: str | None = None) -> Check:
    """One of ``values``, type included (``16`` and ``'16'`` are different choices; ``True`` is not ``1``)."""
    parts = (allowed,) if allowed else tuple(map(_show, values))
    return Check(parts, lambda v: any(type(v) is type(c) and v == c for c in values))


def boolean() -> Check:
    return Check(("true or false",), lambda v: isinstance(v, bool))


def string(pattern: str | None = None, allowed: str = "a non-empty string") -> Check:
    return Check((allowed,), lambda v: isinstance(v, str) and bool(v) and (pattern is None or bool(re.fullmatch(pattern, v))))


def any_of(*checks: Check) -> Check:
    return Check(tuple(p for c in checks for p in c.parts), lambda v: any(c.test(v) for c in checks))


NULL = Check(("null",), lambda v: v is None)


def optional(check: Check) -> Check:
    return any_of(check, NULL)


def list_of(item: Check, of: str, *, length: int | None = None, nonempty: bool = False) -> Check:
    """A list (or tuple) whose items pass ``item``; ``of`` names the items in the phrase (``"strings"``)."""
    phrase = f"a list of {length} {of}" if length is not None else f"a {'non-empty ' if nonempty else ''}list of {of}"
    return Check(
        (phrase,),
        lambda v: isinstance(v, (list, tuple))
        and (length is None or len(v) == length)
        and (not nonempty or len(v) > 0)
        and all(item.test(x) for x in v),
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_SCHEMES = ("pkg://", "zipparts://")


def _is_source(value: Any) -> bool:
    """A model source as ``slimnlp.models.assets.resolve_pretrained`` takes it. Only filesystem-looking
    strings must exist here: absolute, ``.``/``~``-relative, or with more than one '/' (a hub id is ``name``
    or ``org/name``; an existing folder of that shape is used as a folder, a missing one is looked up as a
    hub id, exactly as resolve_pretrained does). pkg:// and zipparts:// are resolved (and checked) later."""
    if not isinstance(value, str) or not value:
        return False
    if "://" in value:
        return value.startswith(_SCHEMES)
    if _HUB_ID.fullmatch(value):
        return True
    return Path(value).expanduser().is_dir()


def model_source(what: str = "folder") -> Check:
    return Check((f"an existing {what}", "a pkg:// or zipparts:// source", "a hub id (org/name)"), _is_source)


# --- rules that read other keys ---------------------------------------------------------------------------

def devices_exist(value: Any, ctx: Context) -> str | None:
    """``trainer.devices`` against what the accelerator has (after the type check)."""
    accelerator = ctx.get("trainer.accelerator")
    if accelerator == "cpu":
        n = ctx.cpu_count
        if value == "auto" or (_is_int(value) and 1 <= value <= n):
            return None
        return f"'auto' or a process count in [1, {n}] on accelerator=cpu ({n} CPU cores exist)"
    if accelerator in ("gpu", "cuda") and not ctx.mps_instead:
        n = ctx.cuda_devices
        if n == 0:
            return f"no CUDA device exists for accelerator={accelerator}; use trainer=cpu"
        if value in ("auto", -1) and not isinstance(value, bool):
            return None
        if _is_int(value) and value <= n:
            return None
        if isinstance(value, (list, tuple)) and len(set(value)) == len(value) and all(0 <= i < n for i in value):
            return None
        plural = "device exists" if n == 1 else "devices exist"
        return f"at most {n} ({n} CUDA {plural}: indices 0..{n - 1})"
    return None  # auto, mps, tpu: left to Lightning


def cuda_exists(value: Any, ctx: Context) -> str | None:
    """``measure.device=cuda`` on a machine without CUDA."""
    if value == "cuda" and ctx.cuda_devices == 0:
        return "cpu (no CUDA device exists here)"
    return None


def data_options_exist(value: Any, ctx: Context) -> str | None:
    """``eval.ood``: each entry a ``data`` option's name or ``{option: name, <data key>: value ...}``, never the
    run's own task (its test split is evaluated already)."""
    from slimnlp.config import group_options

    options = group_options("data")
    allowed = f"a list of data options ({', '.join(options)}) or {{option: <name>, <data key>: <value>}} mappings"
    names = [v.get("option") if isinstance(v, Mapping) else v for v in value] if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) and n in options for n in names):
        return allowed
    tasks = [v.get("task_name", v["option"]) if isinstance(v, Mapping) else v for v in value]
    if ctx.get("data.task_name") in tasks:
        return "data options other than the run's own task (its test split is evaluated already)"
    return None


# --- the table --------------------------------------------------------------------------------------------

try:  # Lightning's own list (private names; written out below should they move)
    from lightning.fabric.connector import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    _PRECISIONS: tuple[Any, ...] = (
        get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_INT) + get_args(_PRECISION_INPUT_STR_ALIAS)
    )
    _MODERN_PRECISIONS = get_args(_PRECISION_INPUT_STR)
except ImportError:  # pragma: no cover - Lightning 2.6's values
    _MODERN_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                          "bf16-mixed", "32-true", "64-true")
    _PRECISIONS = (*_MODERN_PRECISIONS, 64, 32, 16, "64", "32", "16", "bf16")

PRECISION = choice(
    *_PRECISIONS, allowed=f"one of {', '.join(_MODERN_PRECISIONS)} (or the legacy 64, 32, 16, bf16)"
)
_FP16_AMP = ("16-mixed", 16, "16")  # what Lightning turns into 16-mixed


def no_fp16_amp_on_cpu(value: Any, ctx: Context) -> str | None:
    """Lightning silently swaps 16-mixed for bf16-mixed on CPU; refuse it so the config says what runs.
    Applies to the run's and the teacher's precision (both train on ``trainer.accelerator``)."""
    if ctx.get("trainer.accelerator") == "cpu" and any(type(value) is type(p) and value == p for p in _FP16_AMP):
        return "bf16-mixed, bf16-true or 32-true on accelerator=cpu (fp16 AMP does not exist on CPU)"
    return None


SEED = integer(0, MAX_SEED)
POSITIVE_INT = integer(1)
POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
SCHEDULER = choice(*(s.value for s in SchedulerType))
BATCH_LIMIT = optional(any_of(number(0, 1, floats_only=True), integer(0)))
ACCELERATOR = choice("cpu", "gpu", "cuda", "mps", "tpu", "auto")
DEVICES = any_of(integer(1), choice("auto", -1), list_of(integer(0), "device indices (ints >= 0)", nonempty=True))

# The optimizer and LR schedule: applied under optim. and under teacher.finetune.
OPTIMIZER_RULES: tuple[tuple[str, Rule], ...] = (
    ("optimizer.lr", POSITIVE),
    ("optimizer.weight_decay", NON_NEGATIVE),
    ("optimizer.betas", list_of(number(0, 1, hi_open=True), "numbers in [0, 1)", length=2)),
    ("optimizer.eps", POSITIVE),
    ("lr_scheduler.name", SCHEDULER),
    ("lr_scheduler.warmup_ratio", number(0, 1, hi_open=True)),
)
# The numerics a teacher's recipe sets for itself (teachers.RECIPE_TRAINER_KEYS): under trainer. and teacher.finetune.
NUMERICS_RULES: tuple[tuple[str, Rule], ...] = (
    ("precision", PRECISION),
    ("precision", no_fp16_amp_on_cpu),
    ("gradient_clip_val", optional(NON_NEGATIVE)),
    ("accumulate_grad_batches", POSITIVE_INT),
)
TRAINER_RULES: tuple[tuple[str, Rule], ...] = (
    ("accelerator", ACCELERATOR),
    ("devices", DEVICES),
    ("devices", devices_exist),
    ("strategy", string()),
    *NUMERICS_RULES,
    ("max_epochs", optional(any_of(integer(1), choice(-1)))),
    ("max_steps", any_of(integer(1), choice(-1))),
    ("val_check_interval", any_of(number(0, 1, lo_open=True, floats_only=True), integer(1))),
    ("check_val_every_n_epoch", optional(POSITIVE_INT)),
    ("num_sanity_val_steps", integer(-1)),
    ("log_every_n_steps", POSITIVE_INT),
    ("limit_train_batches", BATCH_LIMIT),
    ("limit_val_batches", BATCH_LIMIT),
    ("limit_test_batches", BATCH_LIMIT),
    ("deterministic", any_of(boolean(), choice("warn"))),
    ("enable_progress_bar", boolean()),
    ("enable_model_summary", boolean()),
    ("default_root_dir", string()),
)
FINETUNE_RULES: tuple[tuple[str, Rule], ...] = (
    ("seed", SEED),
    ("epochs", POSITIVE_INT),
    ("lr", POSITIVE),
    ("batch_size", optional(POSITIVE_INT)),
    ("max_train_samples", optional(POSITIVE_INT)),
    ("min_steps", integer(0)),
    ("min_gain", optional(NON_NEGATIVE)),
    *NUMERICS_RULES,
    *OPTIMIZER_RULES,
)
CHECKPOINT_RULES: tuple[tuple[str, Rule], ...] = (
    ("every_n_train_steps", optional(POSITIVE_INT)),  # null: only at epoch ends
    ("save_top_k", integer(-1)),
    ("mode", choice("min", "max")),
)


def under(prefix: str, rules: Iterable[tuple[str, Rule]]) -> tuple[tuple[str, Rule], ...]:
    return tuple((f"{prefix}.{key}", rule) for key, rule in rules)


RULES: tuple[tuple[str, Rule], ...] = (
    ("seed", SEED),
    ("resume", optional(any_of(boolean(), string(allowed="a run folder or .ckpt path")))),
    ("trial", optional(integer(0))),  # set by the Optuna sweeper: the run's trial number
    ("tags", list_of(string(), "strings")),
    ("cache_teacher_logits", boolean()),
    ("min_steps", integer(0)),
    ("warnings.min_gain", optional(NON_NEGATIVE)),
    ("warnings.confidence", optional(number(0.5, 1, hi_open=True))),
    ("calibration.num_samples", POSITIVE_INT),
    ("calibration.batch_size", optional(POSITIVE_INT)),
    ("measure.device", choice("cpu", "cuda")),
    ("measure.device", cuda_exists),
    ("measure.threads", optional(POSITIVE_INT)),
    ("measure.batch_sizes", list_of(POSITIVE_INT, "positive integers", nonempty=True)),
    ("measure.repeats", POSITIVE_INT),
    ("measure.warmup", integer(0)),
    ("measure.flops", boolean()),
    ("measure.memory", boolean()),
    ("measure.runtimes", list_of(choice("torch", "onnxruntime", "onnxruntime_int8"),
                                       "runtimes (torch, onnxruntime, onnxruntime_int8)", nonempty=True)),
    ("measure.onnx_repeats", POSITIVE_INT),
    ("measure.energy_passes", POSITIVE_INT),
    ("energy.enabled", boolean()),
    ("energy.country_iso_code", string(r"[A-Z]{3}", "a three-letter ISO 3166-1 code such as USA or FRA")),
    ("eval.ood", data_options_exist),
    ("eval.robustness.attacks", list_of(choice("typo", "word"), "attacks (typo, word)")),
    ("eval.robustness.num_examples", POSITIVE_INT),
    ("eval.robustness.rate", number(0, 1, lo_open=True)),
    ("eval.robustness.seed", SEED),
    ("eval.robustness.neighbours", POSITIVE_INT),
    *under("trainer", TRAINER_RULES),
    *under("optim", OPTIMIZER_RULES),
    ("teacher.name", string(r"[A-Za-z0-9_.-]+", "letters, digits, '_', '.' or '-' (a folder name)")),
    ("teacher.name_or_path", model_source()),
    ("teacher.checkpoint", optional(model_source("folder of a fine-tuned teacher"))),
    *under("teacher.finetune", FINETUNE_RULES),
    ("student.path", model_source()),
    *under("callbacks.best_checkpoint", CHECKPOINT_RULES),
    *under("callbacks.last_checkpoint", CHECKPOINT_RULES),
)


# --- checking -------------------------------------------------------------------------------------------

_ABSENT = object()


def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def check_run_config(
    cfg: Mapping[str, Any],
    *,
    cuda_devices: int | None = None,
    cpu_count: int | None = None,
    rules: Sequence[tuple[str, Rule]] = RULES,
) -> None:
    """Raise ``ConfigError`` for the first bad value of a resolved config (a plain nested dict, without the
    ``hydra`` node). Absent keys are skipped. ``cuda_devices`` / ``cpu_count`` default to
    ``torch.cuda.device_count()`` / ``os.cpu_count()`` (asked only when a trainer needs them)."""
    ctx = Context(cfg, cuda_devices, cpu_count)
    for key, rule in rules:
        value = _lookup(cfg, key)
        if value is _ABSENT:
            continue
        if value == _MISSING:
            raise ConfigError(key, value, f"a value: this key is mandatory (set {key}=... on the command line)")
        allowed = rule(value, ctx)
        if allowed is not None:
            raise ConfigError(key, value, allowed)


# --- multirun jobs ------------------------------------------------------------------------------------------

def _config_loader() -> Any:
    """Hydra's config loader over slimnlp's config tree, for glob() sweeps over config groups."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from slimnlp.config import config_dir

    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))


def expand_sweep(overrides: list[str], limit: int = 64) -> list[list[str]]:
    """The per-job override lists of a ``-m`` command line, as Hydra's BasicSweeper makes them: the product
    of every choice (``a=1,2``, ``choice()``), ``range()`` and ``glob()`` sweep, in Hydra's job order. Each
    list holds one ``key=value`` per key in command-line order (a repeated key keeps its first position and
    its last value, as the BasicSweeper does), values written as Hydra writes them.

    At most ``limit`` jobs are returned: the first ones, with a warning naming how many the sweep has, so
    pre-flight checks a bounded number of compositions. Raises ConfigError for a command line Hydra cannot
    parse, or a sweep the BasicSweeper cannot enumerate (``interval()``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException, OverrideParseException

    if limit < 1:
        raise ConfigError("limit", limit, "an int >= 1")
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        if any(o.value_type == ValueType.GLOB_CHOICE_SWEEP for o in parsed):
            parsed = OverridesParser.create(config_loader=_config_loader()).parse_overrides(list(overrides))
    except OverrideParseException as err:
        raise ConfigError("command line", " ".join(overrides), str(err).splitlines()[0]) from None

    factors: dict[str, list[str]] = {}  # key -> its values, in first-seen order
    truncated = False
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            factors[key] = [f"{key}={override.get_value_element_as_str()}"]
            continue
        if not override.is_discrete_sweep():
            raise ConfigError(
                "command line", override.input_line,
                f"a sweep the basic sweeper can enumerate: a,b,c, choice(), range() or glob(), not "
                f"{override.value_type.name.lower() if override.value_type else 'this'}",
            )
        try:  # the first `limit` jobs use at most the first `limit` values of each factor
            values = list(itertools.islice(override.sweep_string_iterator(), limit + 1))
        except HydraException as err:
            raise ConfigError("command line", override.input_line, str(err).splitlines()[0]) from None
        if not values:
            raise ConfigError("command line", override.input_line, "a sweep with at least one value")
        truncated |= len(values) > limit
        factors[key] = [f"{key}={v}" for v in values[:limit]]

    jobs = [list(job) for job in itertools.islice(itertools.product(*factors.values()), limit + 1)]
    if len(jobs) > limit:
        total = f"more than {limit}" if truncated else str(math.prod(len(v) for v in factors.values()))
        log.warning("the sweep has %s jobs; pre-flight checks the first %d", total, limit)
    return jobs[:limit]

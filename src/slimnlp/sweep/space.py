"""A search space written in Hydra's override grammar, sampled by Optuna define-by-run.

Each entry is ``<override key>: <sweep>``, the key being what a plain command line would override (a config
group such as ``technique``, or a value such as ``optim.optimizer.lr``), the sweep one of Hydra's:

* ``choice(a, b, c)`` or ``a,b,c`` -> a categorical;
* ``range(start, stop[, step])`` -> integers (floats if any bound is a float) on that grid, ``stop`` excluded;
* ``interval(low, high)`` -> a float, ``tag(log, interval(...))`` on a log scale, ``tag(int, interval(...))``
  an integer;
* a plain value -> fixed for every trial.

``conditional`` adds parameters only when a categorical took a given value: ``{technique: {kd:
{technique.temperature: interval(1, 8)}, magnitude_pruning: {technique.sparsity: interval(0.5, 0.97)}}}``
searches a temperature in the trials that chose ``kd`` and a sparsity in those that chose magnitude pruning —
a search over recipes, not only over one recipe's numbers. Conditions nest (a conditional parameter may
itself be a condition). Optuna's parameter name is the override key, and ``<parent>=<choice>/<key>`` for a
conditional one (``technique=kd/student``): Optuna refuses one name with two sets of choices, and two
branches may search the same key differently.

Hydra's own ``hydra-optuna-sweeper`` uses the same grammar; it is not used here because it pins optuna<3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial

from slimnlp.errors import ConfigError

Value = Any  # None, bool, int, float or str: what an override and an Optuna categorical can both carry (a fixed
#               value may also be a tuple of them: a list override, never sampled)
KEY = "hparams_search.params"


@dataclass(frozen=True)
class Param:
    """One searched key: its Optuna distribution, or a fixed value when ``distribution`` is None."""

    key: str
    distribution: BaseDistribution | None
    fixed: Value = None
    name: str = ""  # Optuna's parameter name: the key, or "<parent>=<choice>/<key>" for a conditional one

    @property
    def optuna_name(self) -> str:
        return self.name or self.key

    def sample(self, trial: BaseTrial) -> Value:
        d = self.distribution
        if d is None:
            return self.fixed
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.optuna_name, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.optuna_name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.optuna_name, d.low, d.high, step=d.step, log=d.log)

    def bounds(self) -> list[Value]:
        """The values pre-flight composes: every choice, or both ends of a numeric range."""
        d = self.distribution
        if d is None:
            return [self.fixed]
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        return [d.low, d.high]


def parse_param(key: str, spec: Any, where: str = KEY) -> Param:
    """``key: spec`` as a Param; one-line ConfigError for a sweep Optuna cannot sample."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException, OverrideParseException

    text = f"{key}={_as_override_value(spec)}"
    try:
        override = OverridesParser.create().parse_override(text)
    except (OverrideParseException, HydraException) as err:
        raise ConfigError(f"{where}.{key}", spec, f"Hydra's override grammar ({str(err).splitlines()[0]})") from None
    if override.is_add() or override.is_delete() or override.is_force_add():
        raise ConfigError(f"{where}.{key}", spec, "a plain key (no +, ++ or ~ prefix)")
    value = override.value()
    allowed = "choice(a,b), a,b, range(start,stop[,step]), interval(low,high), tag(log|int, interval(...)) or a value"
    if not override.is_sweep_override():  # a fixed value: a scalar, or a list of scalars (set, never searched)
        if isinstance(value, list):
            return Param(key, None, tuple(_scalar(key, v, where, allowed) for v in value))
        return Param(key, None, _scalar(key, value, where, allowed))
    tags = set(getattr(value, "tags", set()))
    unknown = tags - {"log", "int"}
    if unknown:
        raise ConfigError(f"{where}.{key}", spec, f"tags log and int only, not {', '.join(sorted(unknown))}")
    if isinstance(value, ChoiceSweep):
        if tags:
            raise ConfigError(f"{where}.{key}", spec, "no tags on a choice")
        choices = tuple(_scalar(key, v, where, allowed) for v in value.list)
        if not choices or len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}.{key}", spec, "at least one choice, none repeated")
        return Param(key, CategoricalDistribution(choices))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0 or stop is None or start is None or stop <= start:
            raise ConfigError(f"{where}.{key}", spec, "range(start, stop, step) with start < stop and step > 0")
        count = math.ceil((stop - start) / step)
        last = start + (count - 1) * step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return Param(key, IntDistribution(int(start), int(last), step=int(step)))
        return Param(key, FloatDistribution(float(start), float(round(last, 12)), step=float(step)))
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise ConfigError(f"{where}.{key}", spec, "interval(low, high) with low < high")
        log = "log" in tags
        if log and low <= 0:
            raise ConfigError(f"{where}.{key}", spec, "a log interval with low > 0")
        if "int" in tags:
            if low != int(low) or high != int(high):
                raise ConfigError(f"{where}.{key}", spec, "integer bounds for tag(int, interval(...))")
            return Param(key, IntDistribution(int(low), int(high), log=log))
        return Param(key, FloatDistribution(float(low), float(high), log=log))
    raise ConfigError(f"{where}.{key}", spec, allowed)


def _as_override_value(spec: Any) -> str:
    """A YAML value as override text: strings are already in the grammar; numbers and bools print as Hydra reads
    them; a YAML list is a choice."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, bool):
        return str(spec).lower()
    if spec is None:
        return "null"
    if isinstance(spec, (list, tuple)):
        return "choice(" + ",".join(_as_override_value(v) for v in spec) + ")"
    return repr(spec)


def _scalar(key: str, value: Any, where: str, allowed: str) -> Value:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"{where}.{key}", value, f"scalars only ({allowed}); lists and dicts cannot be searched")


def override(key: str, value: Value) -> str:
    """``key=value`` as Hydra parses it back to ``value``: a string is quoted only when the grammar would read it
    as something else (``'1e-3'``, ``'true'``, spaces, commas ...)."""
    if isinstance(value, (list, tuple)):  # a fixed list: each element quoted as a scalar would be
        return f"{key}=[" + ",".join(override(key, v).split("=", 1)[1] for v in value) + "]"
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    text = str(value)
    try:
        parsed = OverridesParser.create().parse_override(f"{key}={text}")
    except HydraException:  # not valid unquoted (OverrideParseException is one): quote it
        parsed = None
    if parsed is not None and not parsed.is_sweep_override() and parsed.value() == text:
        return f"{key}={text}"
    return f"{key}='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class SearchSpace:
    """``params`` (always sampled, in order) and ``conditional`` (sampled when a condition holds)."""

    def __init__(self, params: Mapping[str, Any], conditional: Mapping[str, Mapping[Any, Mapping[str, Any]]] | None = None):
        self.params = [parse_param(k, v) for k, v in params.items()]
        self.conditional: dict[str, dict[Value, list[Param]]] = {}
        known = {p.key: p for p in self.params}
        for parent, branches in (conditional or {}).items():
            where = f"hparams_search.conditional.{parent}"
            if not isinstance(branches, Mapping):
                raise ConfigError(where, branches, "a mapping from each value of the parent to its parameters")
            self.conditional[parent] = {}
            for choice, children in branches.items():
                if not isinstance(children, Mapping):
                    raise ConfigError(f"{where}.{choice}", children, "a mapping of override keys to sweeps")
                params = [replace(parse_param(k, v, f"{where}.{choice}"), name=f"{parent}={choice}/{k}")
                          for k, v in children.items()]
                self.conditional[parent][choice] = params
                known.update({p.key: p for p in params})
        for parent, branches in self.conditional.items():
            param = known.get(parent)
            if param is None or not isinstance(param.distribution, CategoricalDistribution):
                raise ConfigError(f"hparams_search.conditional.{parent}", parent,
                                  "a key searched with choice(...) in hparams_search.params or another condition")
            for choice in branches:
                if not any(str(choice) == str(c) for c in param.distribution.choices):
                    raise ConfigError(f"hparams_search.conditional.{parent}.{choice}", choice,
                                      f"one of {parent}'s choices: {', '.join(map(str, param.distribution.choices))}")
        if not self.params:
            raise ConfigError("hparams_search.params", "{}", "at least one key to search")

    def sample(self, trial: BaseTrial) -> dict[str, Value]:
        """The trial's overrides as ``{key: value}``: every param, and the conditional ones whose condition holds."""
        values: dict[str, Value] = {}
        self._sample(self.params, trial, values)
        return values

    def _sample(self, params: list[Param], trial: BaseTrial, values: dict[str, Value]) -> None:
        for param in params:
            values[param.key] = param.sample(trial)
            branch = self._branch(param.key, values[param.key])
            if branch:
                self._sample(branch, trial, values)

    def _branch(self, key: str, value: Value) -> list[Param]:
        for choice, params in self.conditional.get(key, {}).items():
            if str(choice) == str(value):
                return params
        return []

    def configurations(self) -> Iterator[dict[str, Value]]:
        """Every combination of categorical choices, with the reachable conditional parameters, each numeric
        parameter at its lower bound, then the same with every numeric parameter at its upper bound: what
        pre-flight composes and plans so a bad branch fails before the first trial."""
        for end in (0, -1):
            yield from self._combinations(self.params, end)

    def _combinations(self, params: list[Param], end: int) -> Iterator[dict[str, Value]]:
        if not params:
            yield {}
            return
        first, rest = params[0], params[1:]
        values = first.bounds() if isinstance(first.distribution, CategoricalDistribution) else [first.bounds()[end]]
        for value in values:
            for head, tail in itertools.product(self._combinations(self._branch(first.key, value), end),
                                                self._combinations(rest, end)):
                yield {first.key: value, **head, **tail}

    def overrides(self, values: Mapping[str, Value]) -> list[str]:
        return [override(k, v) for k, v in values.items()]

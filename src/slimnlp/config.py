"""Hydra at the edge: locating the config tree, one-line errors for bad command lines, config hashing.

Hydra's own messages for a misspelt option or key are several lines plus a hint about HYDRA_FULL_ERROR;
users of a research tool deserve one line that names the bad value and lists what is allowed. So the
command line is composed once here, before Hydra's app starts, and failures are rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from slimnlp.errors import ConfigError
from slimnlp.results import BOOKKEEPING_KEYS

CONFIG_NAME = "train"
# Keys excluded from the config hash used to match resumes: the bookkeeping keys, and the callbacks and the groups
# that only compose others (a resume may change them).
VOLATILE_KEYS = (*BOOKKEEPING_KEYS, "callbacks", "hparams_search", "pipeline", "paper")


def config_dir() -> Path:
    """The config tree, shipped inside the package (``slimnlp/conf``; the checkout's ``conf/`` links to it),
    or ``$SLIMNLP_CONFIG_DIR``."""
    path = Path(os.environ.get("SLIMNLP_CONFIG_DIR", Path(__file__).resolve().parent / "conf"))
    if not (path / f"{CONFIG_NAME}.yaml").is_file():
        raise ConfigError("SLIMNLP_CONFIG_DIR", str(path), f"a folder holding {CONFIG_NAME}.yaml")
    return path


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _missing_option_error(err: MissingConfigException) -> ConfigError:
    missing = (err.missing_cfg_file or "").strip("/")
    group, _, option = missing.rpartition("/")
    if not group:
        return ConfigError("config", missing, "", message=str(err).splitlines()[0])
    options = ", ".join(list(err.options or []) or group_options(group))
    return ConfigError(group, option, options, message=f"{group} '{option}' is not available; available: {options}")


def _unknown_key_error(err: Exception, overrides: list[str]) -> ConfigError:
    text = str(err).splitlines()[0]
    bad = next((o for o in overrides if f"'{o.split('=', 1)[0].lstrip('+~')}'" in text), None)
    if bad is None:
        cause = err.__cause__
        return ConfigError("config", None, "", message=f"{text} {str(cause).splitlines()[0] if cause else ''}".strip())
    key = bad.split("=", 1)[0].lstrip("+~")
    parent = key.rpartition(".")[0]
    rest = [o for o in overrides if o != bad]
    try:
        cfg = compose_config(rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        allowed = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else "none"
    except Exception:  # noqa: BLE001 - the rest is broken too: report the first problem only
        allowed = "see the config group's YAML"
    where = parent or "the root config"
    return ConfigError(key, bad, allowed, message=f"unknown key '{key}'; keys of {where}: {allowed}")


def data_option_config(cfg: DictConfig, option: str, overrides: dict | None = None) -> DictConfig:
    """A ``data`` option's node (``conf/data/<option>.yaml`` with ``overrides``), its ``${paths...}``
    interpolations resolved against this run's ``paths``."""
    node = OmegaConf.merge(OmegaConf.load(config_dir() / "data" / f"{option}.yaml"), overrides or {})
    root = OmegaConf.create({"paths": OmegaConf.to_container(cfg.paths, resolve=True), "data": node})
    OmegaConf.resolve(root)
    return root.data


def ood_data_configs(cfg: DictConfig) -> list[DictConfig]:
    """``eval.ood`` as ``data`` nodes: an entry is a data option's name (``drug_reviews``) or a mapping naming
    the option and overriding its keys (``{option: local, task_name: mine, source: {path: ...}}``); the
    option's ``${paths...}`` interpolations resolve against this run's ``paths``."""
    nodes = []
    for entry in cfg.eval.ood:
        spec = {"option": entry} if isinstance(entry, str) else OmegaConf.to_container(entry, resolve=True)
        option = spec.pop("option")
        nodes.append(data_option_config(cfg, option, spec))
    return nodes


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=overrides, return_hydra_config=True)


def check_command_line(overrides: list[str]) -> None:
    """Raise ConfigError with a one-line message if these overrides cannot compose."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError("command line", " ".join(overrides), str(err).splitlines()[0]) from None
    if any(o.is_sweep_override() for o in parsed):
        return  # multirun: Hydra's sweeper composes each job; its errors are per job
    try:
        compose_config(overrides)
    except MissingConfigException as err:
        raise _missing_option_error(err) from None
    except ConfigCompositionException as err:
        if isinstance(err.__cause__, MissingConfigException):
            raise _missing_option_error(err.__cause__) from None
        raise _unknown_key_error(err, overrides) from None


def config_hash(cfg: DictConfig) -> str:
    """Hash of what the run computes (everything but paths, loggers, resume …)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    stable = {k: v for k, v in container.items() if k not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node, for results.json and loggers."""
    without_hydra = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(without_hydra, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    return container


def find_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind an exception chain (Hydra's instantiate wraps constructor errors)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None

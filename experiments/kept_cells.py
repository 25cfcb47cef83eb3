"""What the cell-by-cell experiment scripts share: run a cell unless its results are kept, keep them, report.

A cell is one ``train.py`` run. Its ``results.json`` is copied into ``<kept>/cells/<cell>/`` (committed: run
folders under ``outputs/`` do not outlive a machine), and a cell found there is never re-run, so a table can fill
over several sessions. A cell killed mid-run continues from its last checkpoint when run again (``resume=<its run
folder>``) if it ran the same config; one whose config has changed since (a default changed in the code) is set
aside, never deleted, and the cell starts afresh. A finished run's checkpoints are deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from slimnlp.config import compose_config, config_hash
from slimnlp.results import checkout_state
from slimnlp.resume import has_progress, recorded_config_hash

REPO = Path(__file__).resolve().parents[1]


def run_cell(name: str, overrides: list[str], run_dir: Path, kept: Path) -> None:
    """Run ``train.py <overrides>`` into ``run_dir`` (resuming what a killed run left there) unless the cell is kept
    or finished; keep what finished and delete a finished run's checkpoints."""
    cell = kept / "cells" / name / "results.json"
    if not cell.exists() and not (run_dir / "results.json").exists():
        wait_for_committed_code()
        command = [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
        if resumable(run_dir, overrides):
            command.append(f"resume={run_dir}")  # a killed cell continues where it stopped
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=REPO, check=False)  # a failed cell must not stop the others
    if not cell.exists() and (run_dir / "results.json").exists():
        cell.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "results.json", cell)
    if (run_dir / "results.json").exists():
        # A finished run resumes from nothing: its checkpoints (best, last and step, 0.1-0.5 GB each) only fill the
        # disk, which they did on 2026-12-07 (61 GB of them after 80 finished runs; the cells then running failed on a write).
        # The saved student and results.json stay in the run folder.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def wait_for_committed_code(poll_s: float = 60.0) -> None:
    """Hold the next cell while ``src/`` or ``train.py`` differ from the checkout's commit. A cell runs the code
    as it is when it starts, so one started during an edit mixes uncommitted code into a table that reads as
    committed code's (a cell was lost so on 2026-12-07); a cell that waits costs minutes, not a re-run."""
    announced = False
    while (state := checkout_state(REPO / "src" / "slimnlp")) and state["modified"]:
        if not announced:
            print(f"next cell waits: {', '.join(state['modified'])} differ from commit {state['commit'][:10]}; "
                  "it starts once they are committed or reverted", flush=True)
            announced = True
        time.sleep(poll_s)


def resumable(run_dir: Path, overrides: list[str]) -> bool:
    """Whether ``run_dir`` holds a killed run of the config ``overrides`` compose to, to continue in place.
    ``resume=<folder>`` refuses a folder that ran another config, so a killed run whose config hash differs (the
    code's defaults changed between sessions) is renamed ``<name>.stale-<UTC time>`` and the cell starts afresh."""
    if not has_progress(run_dir):
        return False
    ran = recorded_config_hash(run_dir)
    if ran == config_hash(compose_config(overrides)):
        return True
    stale = run_dir.with_name(f"{run_dir.name}.stale-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
    print(f"{run_dir} ran another config ({ran}); set aside as {stale}, starting the cell afresh", flush=True)
    run_dir.rename(stale)
    return False


def repo_relative(path: Path) -> str:
    """``path`` as the report commands name it (they run in the repository): relative, so that a committed report
    rebuilt on another machine is the same file."""
    return os.path.relpath(path, REPO)


def report(kept: Path, group_by: str, columns: str, baseline: str | None = None, out: Path | None = None) -> None:
    """``python -m slimnlp.report`` over the kept cells, written beside them (or to ``out``); ``baseline``
    (``KEY=VALUE``): the row every row is compared with, default each row's teacher."""
    command = [sys.executable, "-m", "slimnlp.report", repo_relative(kept / "cells"), "--group-by", group_by,
               "--columns", columns, "--out", repo_relative(out or kept), *(["--baseline", baseline] if baseline else [])]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=False)


def main(description: str, table: dict[str, list[str]], common: list[str], name: str, group_by: str,
         columns: str, baselines: dict[str, str] | None = None) -> None:
    """The command line of a cell-by-cell experiment: ``[--cells NAME ...] [--list] [--out DIR] [--report-only]``;
    cells kept in ``experiments/<name>/cells``, run folders in ``outputs/experiments/<name>``; ``baselines``
    (subfolder -> ``KEY=VALUE``) adds one report per baseline row in ``experiments/<name>/<subfolder>``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cells", nargs="+", choices=list(table), metavar="CELL", help="cell names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the cell names and exit")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "experiments" / name)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(table))
        return
    kept = REPO / "experiments" / name
    if not args.report_only:
        for cell in args.cells or table:
            run_cell(cell, [*table[cell], *common], args.out / cell, kept)
    report(kept, group_by, columns)
    for folder, baseline in (baselines or {}).items():
        report(kept, group_by, columns, baseline, kept / folder)

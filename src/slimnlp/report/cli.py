"""``python -m slimnlp.report``: argparse at the edge, plain objects inside.

    python -m slimnlp.report outputs/multirun/2025-01-01/12-00-00 'outputs/runs/*kd*' \
        [--group-by technique,student] [--columns test/acc,eff/latency_ms_b32] [--metric test/f1] \
        [--baseline technique=finetune] [--elue-baseline technique=finetune] \
        [--reference experiments/paper.yaml] [--out DIR] [--wandb] [--wandb-project slimnlp]

A sweep folder of the Optuna sweeper also gets its study plotted (``study_pareto.png``: the Pareto front of its
objectives; ``study_history.png`` for one objective). Writes ``report.md``, ``report.csv`` and the PNGs into ``--out`` (default ``outputs/report``) and prints the
table. Bad input ends in one ``error: ...`` line and exit status 2; skipped files are ``warning: ...`` lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from slimnlp.report.build import DEFAULT_GROUP_BY, Options, Report, build_report, parse_selector
from slimnlp.report.errors import ReportError

DEFAULT_OUT = Path("outputs/report")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + traceback-like noise
        raise ReportError(f"{message} (see python -m slimnlp.report --help)")


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m slimnlp.report",
        description="Tables and plots from results.json files: mean ± std over seeds, wins with 95% "
        "intervals, accuracy-vs-cost Pareto plots, optional ELUE score and paper numbers.",
    )
    p.add_argument("paths", nargs="+", help="run / multirun / sweep folders, results.json files or globs")
    p.add_argument(
        "--group-by",
        type=_csv_list,
        default=list(DEFAULT_GROUP_BY),
        help="row-label fields: results fields (task, technique, student, teacher, seed) or dotted "
        "config keys (technique.temperature); default technique,student",
    )
    p.add_argument("--columns", type=_csv_list, default=None, help="metrics to show, comma-separated")
    p.add_argument("--metric", default=None, help="primary metric (default test/<data.primary_metric>)")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="row every row is compared with (default: each row's own teacher)",
    )
    p.add_argument(
        "--elue-baseline",
        action="append",
        default=None,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="rows forming the ELUE baseline curve (repeat to add rows, e.g. kind=teacher)",
    )
    p.add_argument("--reference", type=Path, default=None, help="YAML of paper numbers to show beside")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--wandb", action="store_true", help="also log table and plots to one W&B run")
    p.add_argument("--wandb-project", default="slimnlp", help="W&B project (default slimnlp)")
    return p


def _write(report: Report, out: Path, args: argparse.Namespace) -> list[Path]:
    from slimnlp.report.plots import plot_all
    from slimnlp.report.tables import csv_frame, display_frame, markdown_table, report_markdown

    out.mkdir(parents=True, exist_ok=True)
    plots, skipped = plot_all(report.rows, report.primary, out, report.machine)
    plots += study_plots(args.paths, out)
    (out / "report.md").write_text(report_markdown(report, plots, skipped))
    numbers = csv_frame(report)
    numbers.to_csv(out / "report.csv", index=False)
    print(markdown_table(display_frame(report)))
    if args.wandb:
        from slimnlp.report.wandb_log import log_report

        folder = log_report(
            display_frame(report),
            numbers,
            plots,
            args.wandb_project,
            out,
            {"paths": report.paths, "group_by": report.group_by, "columns": report.columns},
        )
        print(f"W&B run: {folder}", file=sys.stderr)
    return [out / "report.md", out / "report.csv", *plots]


def study_plots(paths: Sequence[str], out: Path) -> list[Path]:
    """The study plot of every sweep folder given (one holding the sweeper's ``optuna_trials.csv``)."""
    from slimnlp.report.study import plot_study
    from slimnlp.sweep.tables import TRIALS_CSV

    folders = [Path(p) for p in paths if (Path(p) / TRIALS_CSV).is_file()]
    return [plot_study(folder / TRIALS_CSV, out if len(folders) == 1 else out / folder.name) for folder in folders]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    try:
        args = parser().parse_args(argv)
        options = Options(
            paths=args.paths,
            group_by=args.group_by,
            columns=args.columns,
            metric=args.metric,
            baseline=parse_selector(args.baseline) if args.baseline else None,
            elue_baseline=[parse_selector(s, "--elue-baseline") for s in args.elue_baseline]
            if args.elue_baseline
            else None,
            reference=args.reference,
        )
        report = build_report(options)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        try:
            written = _write(report, args.out, args)
        except OSError as err:
            raise ReportError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0

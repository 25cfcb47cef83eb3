"""Compare compression runs: tables, intervals and plots from the ``results.json`` files runs leave.

``python -m slimnlp.report <folders or globs>`` collects every run below the paths (``collect``), pools
the seeds of each configuration into one row and adds one row per teacher (``rows``), computes mean ± std,
Welch intervals and Pareto fronts (``stats``), the optional ELUE score (``elue``), and writes ``report.md``,
``report.csv`` (``tables``) and accuracy-vs-cost PNGs (``plots``), optionally to W&B (``wandb_log``).
Paper numbers come from a small YAML (``reference``). The same steps without the CLI::

    from slimnlp.report import Options, build_report
    report = build_report(Options(paths=["outputs/multirun"]))
"""

from __future__ import annotations

from slimnlp.report.build import Options, Report, build_report
from slimnlp.report.errors import ReportError

__all__ = ["Options", "Report", "ReportError", "build_report"]

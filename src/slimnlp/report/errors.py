"""The one error type of the report: bad input the user can fix."""

from __future__ import annotations


class ReportError(Exception):
    """Bad input (no runs, an unknown column, a selector that matches nothing …). The CLI prints
    ``error: <message>`` as one line and exits with status 2, never a traceback, because the person who
    typed the command needs the fix, not the stack."""

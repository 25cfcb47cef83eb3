"""``python -m slimnlp.report``: see ``slimnlp.report.cli``."""

from __future__ import annotations

import sys

from slimnlp.report.cli import main

if __name__ == "__main__":
    sys.exit(main())

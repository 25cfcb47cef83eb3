"""slimnlp: compress NLP transformers and compare the methods fairly."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_student"]


def __getattr__(name: str) -> Any:
    """``slimnlp.load_student`` without importing torch/transformers on ``import slimnlp`` (kept cheap)."""
    if name == "load_student":
        from slimnlp.artifacts import load_student

        return load_student
    raise AttributeError(f"module 'slimnlp' has no attribute {name!r}")

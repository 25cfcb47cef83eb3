"""Compression techniques: one module per method, each a LightningModule extending ``Technique``."""

from slimnlp.techniques.base import TaskInfo, Technique

__all__ = ["TaskInfo", "Technique"]

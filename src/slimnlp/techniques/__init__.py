"""Compression techniques: one module per method, each a LightningModule extending ``Technique``."""

from slimnlp.techniques.base import Technique, TaskInfo

__all__ = ["Technique", "TaskInfo"]

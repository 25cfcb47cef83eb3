"""Teacher logits cached per training example, so logit-only distillation pays for one teacher pass.

A frozen teacher in eval mode maps each tokenized example to the same logits in every epoch and every
run, so for a (teacher checkpoint, tokenized training split) pair they are computed once. Rows are
filled as batches go by (keyed by the batch's ``idx``); once every row is filled the table is written
atomically next to a ``meta.json`` whose key hashes the teacher's weights and the data fingerprint. A
table whose key does not match is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from slimnlp.results import write_json_atomic

log = logging.getLogger(__name__)


def teacher_identity(teacher_dir: str | Path) -> str:
    """Hash of the teacher's weight files (name, size, mtime): a re-fine-tuned teacher is a new key."""
    parts = sorted(
        f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
        for f in Path(teacher_dir).iterdir()
        if f.suffix in (".safetensors", ".bin")
    )
    return hashlib.sha256("|".join([str(Path(teacher_dir).resolve()), *parts]).encode()).hexdigest()[:16]


class TeacherLogitCache:
    def __init__(self, folder: str | Path, key: str, num_examples: int, num_labels: int) -> None:
        self.folder, self.key = Path(folder), key
        self.table = np.zeros((num_examples, num_labels), dtype=np.float32)
        self.filled = np.zeros(num_examples, dtype=bool)
        self.complete = self._load()

    @classmethod
    def for_run(
        cls, root: str | Path, teacher_dir: str | Path, data_fingerprint: str, num_examples: int, num_labels: int
    ) -> TeacherLogitCache:
        key = hashlib.sha256(f"{teacher_identity(teacher_dir)}|{data_fingerprint}".encode()).hexdigest()[:16]
        return cls(Path(root) / key, key, num_examples, num_labels)

    def _load(self) -> bool:
        meta_file = self.folder / "meta.json"
        if not meta_file.is_file():
            return False
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != self.key or meta.get("shape") != list(self.table.shape):
            log.warning("teacher logit cache %s does not match this teacher/data: rebuilding", self.folder)
            return False
        self.table[:] = np.load(self.folder / "logits.npy")
        self.filled[:] = True
        log.info("teacher logits: reusing %d cached rows from %s", len(self.table), self.folder)
        return True

    def get(self, idx: Tensor) -> Tensor | None:
        """The cached logits of these examples, or None if any of them is missing."""
        rows = idx.cpu().numpy()
        if not self.filled[rows].all():
            return None
        return torch.from_numpy(self.table[rows])

    def put(self, idx: Tensor, logits: Tensor) -> None:
        rows = idx.cpu().numpy()
        self.table[rows] = logits.detach().float().cpu().numpy()
        self.filled[rows] = True

    def save_if_complete(self) -> bool:
        """Write the table once every row is known (typically at the end of the first epoch)."""
        if self.complete or not self.filled.all():
            return self.complete
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".logits.{os.getpid()}.npy"
        np.save(tmp, self.table)
        os.replace(tmp, self.folder / "logits.npy")
        write_json_atomic(self.folder / "meta.json", {"key": self.key, "shape": list(self.table.shape)})
        self.complete = True
        log.info("teacher logits cached for %d examples at %s", len(self.table), self.folder)
        return True

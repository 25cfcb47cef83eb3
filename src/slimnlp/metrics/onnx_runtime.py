"""The student in the runtime it would be deployed with: exported to ONNX and run by ONNX Runtime.

Users of compression toolkits ask how fast the model is where it will serve, not in eager PyTorch. The
export is torch's current exporter (``torch.onnx.export(dynamo=True)``, via ``torch.export``) with dynamic
batch and sequence axes, so one file serves every batch size timed. ``check_logits`` compares the runtime's
logits with torch's on the same batch: a mismatch means the number timed is not the model measured.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from slimnlp.batch import model_inputs

log = logging.getLogger("slimnlp")


class _LogitsOnly(nn.Module):
    """Encoder inputs in, logits out: the signature an ONNX graph has."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, **{k: v for k, v in given.items() if v is not None}).logits


def export_onnx(model: nn.Module, batch: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write ``model`` (on the CPU, eval mode) as an ONNX graph taking the batch's model inputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = model_inputs(batch)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # one INFO line per graph pass otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model.eval()),
            (),
            str(path),
            kwargs=inputs,
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_shapes={name: dims for name in inputs},
            dynamo=True,
            verbose=False,
        )
    return path


class OrtClassifier:
    """An ONNX Runtime session over an exported classifier, with a fixed intra-op thread count."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def feeds(self, batch: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
        return {name: batch[name].cpu().numpy() for name in self.input_names}

    def logits(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, dict(feeds))[0]


def max_logit_difference(model: nn.Module, runtime: OrtClassifier, batch: Mapping[str, Tensor]) -> float:
    """Largest absolute difference between torch's and the runtime's logits on ``batch``."""
    with torch.inference_mode():
        reference = model.eval()(**model_inputs(batch)).logits.float().cpu().numpy()
    return float(np.abs(runtime.logits(runtime.feeds(batch)) - reference).max())
